"""Hostile inputs of a fourth audit: a pipeline run folder with a cut stage output (the stage, and the ones
after it, run again, measuring nothing twice), unknown pipeline settings and export formats, target=plan
under a dataset preset, and hwnas-export with NaN / negative metadata, another space than its file's, a
broken export folder to resume and an empty output folder left by a failure. Each refusal is one line
naming the field or file and the fix, before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.search.pipeline import PipelineError, run_pipeline
from hwnas.spaces import create_space
from hwnas.spaces.io import space_spec
from hwnas.supernet.export import ExportError, ExportItem, export_many
from hwnas.supernet.export_cli import main as export_main

from _pipeline_helpers import cli_env, comparable, compose_pipeline

TINY = ["target.device=titan_rtx_1", "samples.pool=200", "samples.k=8", "reduce.n_samples=8", "search.n_gen=3", "search.pop_size=12",
        "search.refine.passes=0", "search.verbose=false", "search.plot=false", "report=false"]
R = 128  # the smallest resolution of the registered space: inline archs of the fixture are valid there too


def _cfg(data_dir, *extra, name="pipeline_nasbench201"):
    return compose_pipeline(TINY + [f"assets.mirror={data_dir}", *extra], name=name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """One finished tiny run: (run folder, summary)."""
    d = tmp_path_factory.mktemp("inputs_d") / "run"
    return d, run_pipeline(_cfg(data_dir), d)


def _copy(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    return run


# ============================================================================ 1 a cut stage output
@pytest.mark.parametrize("output, cut", [
    ("01_proxy/proxy.json", 50),
    ("02_samples/samples.csv", 100),
    ("02_samples/samples.csv", "lines"),   # cut at a line boundary: still a CSV, fewer rows
    ("03_adapt/adapt.json", 100),
    ("05_search/pareto.json", 100),
    ("06_remeasure/front.csv", 100),
    ("06_remeasure/front.csv", "lines"),
    ("07_export/archs.json", 50),
])
def test_a_cut_output_runs_its_stage_and_the_later_ones_again_measuring_nothing_twice(finished, tmp_path, data_dir, output, cut):
    run = _copy(finished, tmp_path)
    f = run / output
    whole = f.read_text()
    f.write_text("\n".join(whole.splitlines()[:3]) + "\n" if cut == "lines" else whole[:cut])
    lines: list[str] = []
    s = run_pipeline(_cfg(data_dir), run, log=lines.append)
    stage = output.split("/")[0]
    said = [ln for ln in lines if ln.startswith(f"[{stage}]") and "again" in ln]
    assert len(said) == 1 and str(f) in said[0], lines  # one line naming the file
    later = [n for n in s["stages_ran"] + s["stages_skipped"] if n >= stage]
    assert s["stages_ran"] == sorted(later)  # the stage and every one after it ran again
    if f.name == "pareto.json":  # written again, the same (the search's wall time aside)
        assert comparable(f) == comparable(finished[0] / output)
    else:
        assert f.read_text() == whole
    assert s["new_measurements_this_run"] == 0 and s["target_measurements"] == finished[1]["target_measurements"]
    assert s["best_at_budgets"] == finished[1]["best_at_budgets"]


@pytest.mark.parametrize("output", ["03_adapt/adapt.json", "06_remeasure/front.csv", "07_export/archs.json"])
def test_a_cut_output_of_an_older_run_folder_is_caught_when_read_back(finished, tmp_path, data_dir, output):
    """stage.json of an older hwnas records no sizes or checksums: the failed read back is what tells."""
    run = _copy(finished, tmp_path)
    for st in run.glob("0*/stage.json"):
        meta = json.loads(st.read_text())
        meta.pop("output_files")
        st.write_text(json.dumps(meta))
    (run / output).write_text((run / output).read_text()[:50])
    lines: list[str] = []
    s = run_pipeline(_cfg(data_dir), run, log=lines.append)
    assert any("cannot be read back" in ln and str(run / output) in ln for ln in lines), lines
    assert output.split("/")[0] in s["stages_ran"] and s["new_measurements_this_run"] == 0


def test_a_missing_network_file_makes_the_export_stage_unfinished(tmp_path):
    from hwnas.search.pipeline.runner import Context
    from hwnas.search.pipeline.stages import ExportStage

    d = tmp_path / "07_export"
    (d / "models" / "n0").mkdir(parents=True)
    (d / "archs.json").write_text(json.dumps({"archs": [{}]}))
    (d / "models" / "n0" / "metadata.json").write_text(json.dumps({"files": {"torch": "model_state_dict.pth"}}))
    (d / "models" / "n0" / "arch.json").write_text("{}")
    (d / "models" / "n0" / "README.md").write_text("# n0\n")
    ctx = Context(None, tmp_path, {})
    meta = {"n": 1, "models": ["models/n0"]}
    why = ExportStage().read_back(ctx, meta)
    assert why is not None and "model_state_dict.pth" in why and "\n" not in why
    (d / "models" / "n0" / "model_state_dict.pth").write_bytes(b"x")
    assert ExportStage().read_back(ctx, meta) is None


# ============================================================================ 2 unknown settings, formats
@pytest.mark.parametrize("override, named", [
    ("+samples.kk=3", ["samples", "'kk'", "'k'", "'pool'", "'selection'"]),
    ("+remeasure.maxarchs=3", ["remeasure", "'maxarchs'", "'max_archs'"]),
    ("+seeed=1", ["'seeed'", "'seed'"]),
    ("export.formats=[foo]", ["export.formats", "'foo'", "'onnx'", "'timm'"]),
    ("export.formats=[onnx]", ["export.formats", "MBConv spaces only", "nasbench201", "export.formats=[]"]),
])
def test_unknown_settings_and_formats_are_refused_before_any_stage(tmp_path, data_dir, override, named):
    with pytest.raises(PipelineError) as e:
        run_pipeline(_cfg(data_dir, override), tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in named), msg
    assert not (tmp_path / "run").exists()


def test_pipeline_cli_unknown_key_is_one_line_exit_2(tmp_path, data_dir):
    p = subprocess.run([sys.executable, "-m", "hwnas.search.pipeline.cli", "--config-name", "pipeline_nasbench201", *TINY,
                        f"assets.mirror={data_dir}", "+samples.kk=3", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("hwnas-pipeline: error:")]
    assert len(err) == 1 and "samples has unknown key(s) ['kk']" in err[0], p.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # the folder hydra made for the refused run is removed again
    # a setting out of range: the example is the default; a folder that existed before is kept
    (tmp_path / "mine").mkdir()
    p = subprocess.run([sys.executable, "-m", "hwnas.search.pipeline.cli", "--config-name", "pipeline_nasbench201", *TINY,
                        f"assets.mirror={data_dir}", "samples.k=1", f"hydra.run.dir={tmp_path / 'mine'}"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "samples.k=1 must be an integer >= 3" in p.stderr and "e.g. samples.k=10" in p.stderr
    assert (tmp_path / "mine" / ".hydra").is_dir()


# ============================================================================ 3 target=plan under a dataset preset
def test_plan_target_under_a_dataset_preset_is_one_line(tmp_path, data_dir):
    with pytest.raises(PipelineError) as e:
        run_pipeline(_cfg(data_dir, "target=plan"), tmp_path / "run")
    msg = str(e.value)
    assert "target=plan" in msg and "MBConv" in msg and "nasbench201" in msg and "--config-name pipeline" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_options_the_target_does_not_take_are_named_with_the_fix(tmp_path, data_dir):
    cfg = compose_pipeline(["target=plan", "+target.dataset=nasbench201", f"assets.mirror={data_dir}", "report=false"], name="pipeline")
    with pytest.raises(PipelineError) as e:
        run_pipeline(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "target.dataset" in msg and "~target.dataset" in msg and "target.plan" in msg and "target.device" in msg
    assert not (tmp_path / "run").exists()


# ============================================================================ 4-7 hwnas-export
@pytest.fixture(scope="module")
def space():
    return create_space("ofa_mbv3_w12", resolutions=[R])


def _arch(space, seed=0):
    return space.sample(1, seed)[0]


def _export(argv, capsys) -> tuple[int, str]:
    """(exit status, the one error line or '') of hwnas-export run in this process."""
    try:
        rc = export_main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("hwnas-export: error:")]
    assert len(lines) == (1 if rc == 2 else 0), err
    return rc, lines[0] if lines else ""


@pytest.mark.parametrize("flags, named", [
    (["--accuracy", "nan"], "--accuracy"),
    (["--accuracy", "150"], "--accuracy"),
    (["--accuracy", "-0.1"], "--accuracy"),
    (["--latency", "-5"], "--latency"),
    (["--latency", "0"], "--latency"),
    (["--latency", "inf"], "--latency"),
])
def test_export_refuses_values_that_are_no_accuracy_or_latency(tmp_path, capsys, space, flags, named):
    rc, line = _export([_arch(space).to_str(), "--space", "ofa_mbv3_w12", "--formats", "torch", "--out", str(tmp_path / "e"),
                        "--no-progress", *flags], capsys)
    assert rc == 2 and named in line
    assert not (tmp_path / "e").exists()


def test_export_metadata_is_strict_json(tmp_path, capsys, space):
    rc, _ = _export([_arch(space).to_str(), "--space", "ofa_mbv3_w12", "--formats", "torch", "--out", str(tmp_path / "e"),
                     "--no-progress", "--accuracy", "76.5", "--latency", "12"], capsys)
    assert rc == 0

    def no_constants(c):
        raise AssertionError(f"{c} in an exported JSON file")

    for f in tmp_path.glob("e/**/*.json"):
        json.loads(f.read_text(), parse_constant=no_constants)
    meta = json.loads(next(tmp_path.glob("e/*/metadata.json")).read_text())
    assert meta["accuracy"]["value"] == pytest.approx(0.765) and meta["latency"]["value"] == 12.0


def test_export_many_refuses_a_nan_item_before_writing(tmp_path, space):
    with pytest.raises(ExportError, match="accuracy nan"):
        export_many(space, [ExportItem(_arch(space), accuracy=float("nan"))], tmp_path / "e", formats=["torch"])
    assert not (tmp_path / "e").exists()


def _run_folder(tmp: Path, space, n=2) -> Path:
    archs = [_arch(space, s) for s in range(n)]
    rows = [{"arch": a.to_dict(), "arch_str": a.to_str(), "accuracy": 0.7 + 0.01 * i, "latency": 10.0 + i} for i, a in enumerate(archs)]
    run = tmp / "run"
    run.mkdir(parents=True)
    (run / "pareto.json").write_text(json.dumps({"space": space_spec(space), "budgets": [10.0, 11.0],
                                                 "best": {"10": rows[0], "11": rows[1]}, "front": rows}))
    return run


def test_export_refuses_another_space_than_the_files(tmp_path, capsys, space):
    run = _run_folder(tmp_path, space)
    for other in ("ofa_mbv3_w10", "nasbench201"):
        rc, line = _export([str(run), "--space", other, "--formats", "torch", "--no-progress"], capsys)
        assert rc == 2 and "ofa_mbv3_w12" in line and other in line and "--space" in line
    assert not (run / "export").exists()
    rc, _ = _export([str(run), "--space", "ofa_mbv3_w12", "--formats", "torch", "--no-progress"], capsys)  # the same space: fine
    assert rc == 0


def test_export_rerun_exports_a_folder_with_a_missing_file_again(tmp_path, capsys, space):
    run = _run_folder(tmp_path, space)
    argv = [str(run), "--formats", "torch", "--out", str(tmp_path / "e"), "--no-progress"]
    assert _export(argv, capsys)[0] == 0
    broken = sorted((tmp_path / "e").glob("budget10*"))[0]
    (broken / "model_state_dict.pth").unlink()
    kept = sorted((tmp_path / "e").glob("budget11*"))[0] / "model_state_dict.pth"
    before = kept.stat().st_mtime_ns
    rc = export_main(argv)
    out = capsys.readouterr().out
    assert rc == 0 and "exported 1 arch(s), skipped 1 already exported" in out, out
    assert (broken / "model_state_dict.pth").is_file() and kept.stat().st_mtime_ns == before
    # a cut file (other size than metadata.json records) too
    (broken / "model_state_dict.pth").write_bytes(b"cut")
    assert export_main(argv) == 0 and "exported 1 arch(s), skipped 1" in capsys.readouterr().out
    assert (broken / "model_state_dict.pth").stat().st_size > 100


def test_failed_export_leaves_no_empty_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    rc, line = _export([arch, "--space", "nasbench201", "--no-progress"], capsys)
    assert rc == 2 and "nasbench201" in line and "MBConv" in line
    assert not (tmp_path / "export").exists()
    with pytest.raises(ExportError):
        export_many(create_space("nasbench201"), [arch], tmp_path / "e2", formats=["torch"])
    assert not (tmp_path / "e2").exists()


def test_space_reduction_benchmark_refuses_an_unknown_search_device_before_profiling():
    """``--search nope`` was dropped by --quick without a word (and found only after minutes of profiling
    without it): now argparse's one line, exit 2, before any work."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "space_reduction.py"
    for args in (["--search", "note10,nope", "--quick"], ["--search", ","]):
        r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stdout == ""
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("space_reduction.py: error: --search") and "note10, gpu (= --gpu) and 2080ti_1" in last
        assert ("unknown device 'nope'" if "nope" in args[1] else "no device") in last
