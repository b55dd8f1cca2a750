"""Hostile inputs, part C: target-sample CSVs checked like filled plans, explicit nulls, lookup tables in
mixed units or with repeated keys, local table paths that do not exist, space names in run-folder paths,
run folders holding files hwnas did not write, edited pareto.json files, run folders left by refused
runs, spaces given options by a config group, and pickles where weights are expected. Every refusal is
one line naming the field or file and the fix."""

from __future__ import annotations

import csv
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import cli_env

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = ["search.pop_size=16", "search.n_gen=3", "search.refine.passes=0", "search.plot=false"]
ADAPTED = ["latency=adapted", "latency.target_device=mydev", "search.budgets=[]"]


@pytest.fixture(scope="module")
def rows():
    """The first 30 rows of the reference OFA-MobileNetV3 dataset: (arch, Titan RTX batch-1 ms)."""
    path = DATA / "latency" / "ofa_mbv3.csv"
    if not path.is_file():
        pytest.skip(f"reference data not found at {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        ai, ti = header.index("arch"), header.index("titan_rtx_1")
        return [(r[ai], float(r[ti])) for _, r in zip(range(30), reader)]


def write_samples(path: Path, rows, bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f)
        w.writerow(["arch", "mydev"])
        w.writerows([a, repr(v) if isinstance(v, float) else v] for a, v in rows)
    return path


def search(args, cwd):
    return subprocess.run([sys.executable, "-m", "hwnas.search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=cli_env({"HWNAS_CONFIG_DIR": str(Path(cwd) / "uc")}))


def one_error(r) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hwnas-search: error: "), r.stderr[-2000:]
    return lines[0]


def adapted(space, path, **kw):
    from hwnas.predictors.adapt import AdaptedLatency

    return AdaptedLatency(space, proxy="ofa_mbv3", proxy_device="2080ti_1", target_samples=str(path), target_device="mydev",
                          library="none", **kw)


@pytest.fixture(scope="module")
def space():
    from hwnas.spaces import create_space

    return create_space("ofa_mbv3_w12")


# ============================================================================ 1. latency.k=null
def test_explicit_null_reaches_the_constructor(rows, space, tmp_path):
    from omegaconf import OmegaConf

    from hwnas.predictors.build import instantiate_node

    path = write_samples(tmp_path / "t.csv", rows)
    node = OmegaConf.create({"_target_": "hwnas.predictors.adapt.AdaptedLatency", "proxy": "ofa_mbv3", "proxy_device": "2080ti_1",
                             "target_samples": str(path), "target_device": "mydev", "k": None, "library": "none", "mirror": None})
    lat = instantiate_node(node, "latency", space=space)
    assert len(lat.sample_archs) == 30  # every row, not the constructor's default K=10
    node.k = 12
    assert len(instantiate_node(node, "latency", space=space).sample_archs) == 12
    # a null meaning "the default" still gives the default: space options through **kwargs
    sp = instantiate_node(OmegaConf.create({"_target_": "hwnas.spaces.create_space", "name": "ofa_mbv3_w12",
                                            "resolutions": None, "depth_choices": None}), "space")
    assert list(sp.resolutions) == list(space.resolutions)


@pytest.mark.parametrize("k", ["abc", 0, 2.5, True])
def test_k_that_is_no_sample_count_names_latency_k(rows, space, tmp_path, k):
    from hwnas.predictors.adapt import AdaptationError

    path = write_samples(tmp_path / "t.csv", rows)
    with pytest.raises(AdaptationError, match=r"latency\.k") as e:
        adapted(space, path, k=k)
    assert "invalid literal" not in str(e.value)


# ============================================================================ 2. target-sample CSVs
def _variants(rows):
    last = len(rows) + 1  # the line of the last row (header on line 1)
    a0, v0 = rows[0]
    return {
        "dupconflict": (rows + [(a0, 99.0)], rf"line {len(rows) + 2}: the same arch as line 2 with another value"),
        "onesec": (rows[:-1] + [(rows[-1][0], rows[-1][1] * 1000)], rf"line {last}: .*x the other rows' time per MAC"),
        "seconds": ([(a, v / 1000) for a, v in rows], r"GMAC/s.*seconds\? write milliseconds \(x1000\)"),
        "inf": (rows[:-1] + [(rows[-1][0], "inf")], rf"target_samples: .* line {last}: column 'mydev' value 'inf' is not a latency; give a finite positive"),
        "neg": (rows[:-1] + [(rows[-1][0], "-3")], rf"target_samples: .* line {last}: column 'mydev' value '-3' is not a latency; give a finite positive"),
    }


@pytest.mark.parametrize("name", ["dupconflict", "onesec", "seconds", "inf", "neg"])
def test_target_samples_are_checked_like_a_filled_plan(rows, space, tmp_path, name):
    from hwnas.predictors.data import DatasetError

    data, msg = _variants(rows)[name]
    path = write_samples(tmp_path / f"{name}.csv", data)
    with pytest.raises(DatasetError) as e:
        adapted(space, path, k=None)
    text = str(e.value)
    assert "\n" not in text and str(path) in text and "target_samples" in text
    assert re.search(msg, text), text


def test_unit_check_can_be_turned_off_and_good_files_pass(rows, space, tmp_path):
    lat = adapted(space, write_samples(tmp_path / "seconds.csv", [(a, v / 1000) for a, v in rows]), k=None, check_units=False)
    assert len(lat.sample_archs) == 30
    lat = adapted(space, write_samples(tmp_path / "bom.csv", rows, bom=True), k=None)  # a byte-order mark is accepted
    assert (tmp_path / "bom.csv").read_bytes().startswith(b"\xef\xbb\xbf") and len(lat.sample_archs) == 30


def test_binary_target_samples_name_the_file(space, tmp_path):
    from hwnas.predictors.data import DatasetError

    path = tmp_path / "bin.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match=r"bin\.csv is not a text CSV file") as e:
        adapted(space, path, k=None)
    assert "UnicodeDecodeError" not in str(e.value)


def test_cli_target_samples_and_library_errors(rows, tmp_path):
    data, _ = _variants(rows)["dupconflict"]
    write_samples(tmp_path / "dup.csv", data)
    line = one_error(search([*ADAPTED, *SMALL, "latency.target_samples=dup.csv", "latency.k=null"], tmp_path))
    assert "dup.csv line 32" in line and "keep one row per arch" in line
    write_samples(tmp_path / "t.csv", rows)
    line = one_error(search([*ADAPTED, *SMALL, "latency.target_samples=t.csv", "latency.library=/nonexistent.csv"], tmp_path))
    assert "library='/nonexistent.csv'" in line and "dataset=" not in line and "does not exist" in line
    assert not (tmp_path / "outputs").exists()  # 7: the refused runs' folders are gone


# ============================================================================ 3. lookup tables
def _note10(tmp_path: Path, name: str) -> Path:
    src = DATA / "ofa" / "note10"
    if not src.is_dir():
        pytest.skip(f"reference tables not found at {src}")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_a_table_in_another_unit_is_refused(tmp_path):
    from hwnas.predictors.lut import LatencyTableError, LookupTableLatency
    from hwnas.spaces import create_space

    sp = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    good = LookupTableLatency(sp, tables=str(_note10(tmp_path, "ok")))  # the reference tables pass
    assert good.predict(sp.sample(4, np.random.default_rng(0))).min() > 1
    lut = _note10(tmp_path, "lut_sec")
    f = lut / "160_lookup_table.yaml"
    f.write_text(re.sub(r"mean: (\S+)", lambda m: f"mean: {float(m.group(1)) / 1000!r}", f.read_text()))
    with pytest.raises(LatencyTableError, match=re.escape(str(f))):
        LookupTableLatency(sp, tables=str(lut))
    two = create_space("ofa_mbv3_w12", resolutions=[160, 224])  # two tables: the pair is compared
    with pytest.raises(LatencyTableError, match="another unit"):
        LookupTableLatency(two, tables=str(lut))


def test_a_repeated_table_entry_is_refused(tmp_path):
    from hwnas.predictors.lut import LatencyTableError, read_lut

    lut = _note10(tmp_path, "dup")
    f = lut / "176_lookup_table.yaml"
    first = f.read_text().split("\n", 1)[0]  # the first key
    f.write_text(f.read_text() + f"{first}\n  count: 1\n  mean: 9.5\n  std: 0.0\n")
    with pytest.raises(LatencyTableError) as e:
        read_lut(f)
    assert str(f) in str(e.value) and repr(first.rstrip(":")) in str(e.value) and "first on line 1" in str(e.value)


@pytest.mark.parametrize("given", ["/nonexistent/x.yaml", "{tmp}", "./missing_lut"])
def test_a_local_table_path_that_does_not_exist_is_no_download(tmp_path, given):
    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.spaces import create_space
    from hwnas.spaces.errors import UserError

    sp = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        LookupTableLatency(sp, tables=given.format(tmp=empty))
    text = str(e.value)
    assert "download" not in text and ("does not exist" in text or "a folder without" in text)
    from hwnas.predictors.assets import cache_dir

    assert not (cache_dir() / "nonexistent").exists() and not (cache_dir() / "missing_lut").exists()


def test_a_failed_download_leaves_no_cache_folder(tmp_path, monkeypatch):
    from hwnas.predictors import assets

    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(assets.AssetError, match="could not download"):
        assets.download("file:///nonexistent/x.yaml", assets.cache_dir() / "a" / "b" / "x.yaml")
    assert not (tmp_path / "cache").exists()


# ============================================================================ 4-8. the run folder
def test_space_name_cannot_leave_the_outputs_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    line = one_error(search([*SMALL, "space.name=../../escaped"], work))
    assert "space.name='../../escaped'" in line and "_ . -" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and not (work / "outputs").exists()


def test_files_hwnas_did_not_write_are_not_overwritten(tmp_path):
    run = tmp_path / "r2"
    run.mkdir()
    (run / "pareto.csv").write_text("data\n")
    (run / "history.csv").write_text("mine\n")
    line = one_error(search([*SMALL, "hydra.run.dir=r2"], tmp_path))
    assert "pareto.csv, history.csv" in line and "search.overwrite=true" in line
    assert (run / "pareto.csv").read_text() == "data\n" and (run / "history.csv").read_text() == "mine\n"
    assert run.is_dir() and not (run / "pareto.json").exists()  # a folder that existed is kept
    r = search([*SMALL, "hydra.run.dir=r2", "search.overwrite=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "pareto.json").is_file() and (run / "pareto.csv").read_text() != "data\n"


@pytest.mark.parametrize("edit", ["no best", "best x", "accuracy abc", "plausible"])
def test_an_edited_finished_pareto_json_is_one_line(tmp_path, edit):
    r = search([*SMALL, "hydra.run.dir=r3"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    pj = tmp_path / "r3" / "pareto.json"
    data = json.loads(pj.read_text())
    assert isinstance(data.pop("digest"), str)  # (the malformed edits below: without the digest they are found by shape)
    if edit == "no best":
        del data["best"]
    elif edit == "best x":
        data["best"] = "x"
    elif edit == "plausible":  # a believable value, the digest kept: it was reported (and exported) as the result
        data = json.loads(pj.read_text())
        first = next(b for b, r in data["best"].items() if r is not None)
        data["best"][first]["accuracy"] = 0.99
    else:
        data["best"] = {"15": {"accuracy": "abc", "latency": 3}}
    pj.write_text(json.dumps(data))
    line = one_error(search([*SMALL, "hydra.run.dir=r3"], tmp_path))
    assert str(pj) in line and "search.overwrite=true" in line
    if edit == "plausible":
        assert "edited after the search wrote it" in line
        from hwnas.supernet.export import ExportError, read_items

        with pytest.raises((ExportError, ValueError), match="was edited after hwnas wrote it"):
            read_items(tmp_path / "r3")
    assert json.loads(pj.read_text()) == data  # untouched


def test_a_space_given_options_by_the_latency_config(tmp_path):
    line = one_error(search([*SMALL, "space=nasbench201"], tmp_path))
    assert "latency=note10_lut (the default latency)" in line and "space.resolutions" in line
    assert "latency=dataset_linear" in line
    assert not (tmp_path / "outputs").exists()  # 7: nothing left of the refused run
    r = search([*SMALL, "space=nasbench201", "latency=dataset_linear", "accuracy=capacity", "search.budgets=[20]"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_remove_bare_run_dir_keeps_folders_it_did_not_make(tmp_path):
    from omegaconf import OmegaConf

    from hwnas.search import cli

    old = tmp_path / "old"
    (old / ".hydra").mkdir(parents=True)
    (old / "hwnas-search.log").write_text("")
    cli.note_run_dir(OmegaConf.create({"hydra": {"run": {"dir": str(old)}}}))
    assert not cli.remove_bare_run_dir(old) and old.is_dir()  # it existed before
    def make(d):
        cli.note_run_dir(OmegaConf.create({"hydra": {"run": {"dir": str(d)}}}))
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "config.yaml").write_text("x: 1\n")
        (d / "hwnas-search.log").write_text("")

    new = tmp_path / "a" / "new"
    make(new)
    assert cli.remove_bare_run_dir(new) and not (tmp_path / "a").exists()  # with the parent made for it
    kept = tmp_path / "b" / "kept"
    make(kept)
    (kept / "latency_report.json").write_text("{}")  # something else than hydra's files: kept
    assert not cli.remove_bare_run_dir(kept) and (kept / "latency_report.json").is_file()


# ============================================================================ 9. pickles where weights are expected
class _Code:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_and_json_are_refused_with_our_own_message(tmp_path):
    from hwnas.predictors.acc_mlp import MLPAccuracyPredictor
    from hwnas.spaces.errors import UserError
    from hwnas.supernet.checkpoint import CheckpointError, read_state_dict

    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"x": _Code()}, protocol=4))
    js = tmp_path / "ck.json"
    js.write_text('{"a": 1}')
    for f in (pkl, js):
        with _no_warnings(), pytest.raises(CheckpointError) as e:
            read_state_dict(f)
        text = str(e.value)
        assert str(f) in text and "not a weights-only torch file" in text and "torch.save" in text
        assert "weights_only` set to `False" not in text and "Re-running" not in text and "\n" not in text
        with _no_warnings(), pytest.raises(UserError) as e:
            MLPAccuracyPredictor.load(f)
        assert str(f) in str(e.value) and "not a weights-only torch file" in str(e.value) and "Re-running" not in str(e.value)


def test_cli_pickle_as_accuracy_predictor(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": _Code()}, protocol=4))
    line = one_error(search([*SMALL, "accuracy=mlp", "accuracy.path=evil.pkl"], tmp_path))
    assert "evil.pkl is not a readable predictor file: not a weights-only torch file" in line and "Re-running" not in line


def _no_warnings():
    import warnings
    from contextlib import contextmanager

    @contextmanager
    def cm():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            yield
        assert not w, [str(x.message) for x in w]

    return cm()
