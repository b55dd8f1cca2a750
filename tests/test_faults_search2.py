"""Faults around ``hwnas-search``, continued: run folders keyed by the contents of the files the settings
name, the initial population checkpointed, ``search.overwrite=true`` and an unreadable ``pareto.json``
resuming this search's own checkpoint, durable atomic writes, one line for a bad ``search.hv_ref``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import cli_env
from test_cli import ToyAccuracy, ToyLatency
from test_faults_search import TOY, front

KILL = "HWNAS_KILL_AFTER_GEN"


class FileAccuracy(ToyAccuracy):
    """A predictor "trained" into a local file: its scale is the file's contents (retrain = rewrite it)."""

    def __init__(self, space=None, path: str = "scale.txt"):
        super().__init__(space, scale=float(Path(path).read_text()))


def hwnas_search(args, cwd, kill=None):
    env = cli_env({"HWNAS_TEST_SLOW_S": "0"})
    env.pop(KILL, None)
    if kill is not None:
        env[KILL] = str(kill)
    return subprocess.run([sys.executable, "-m", "hwnas.search", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def compose(overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="hwnas.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


def key_of(overrides):
    from hwnas.search.cli import settings_key

    return settings_key(compose(overrides))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted TOY run (as in test_faults_search): what every resumed run must end with."""
    d = tmp_path_factory.mktemp("ref2")
    p = hwnas_search([*TOY, f"hydra.run.dir={d / 'run'}"], cwd=d)
    assert p.returncode == 0, p.stderr[-2000:]
    return front(d / "run")


# ------------------------------------------------------------------ 1. the key covers the files' contents
# the keys of today's run folders: settings naming no local file must keep them (else every existing
# run folder is orphaned and its unfinished search never resumed)
TOY_KEY = "8a869330b44c9b7d"
DEFAULT_KEY = "55b56ceb150bed9a"
MLP = ["accuracy=mlp", "accuracy.path=acc_mlp.pt"]
MLP_KEY = "02cbadab320e2811"  # accuracy.path names no local file (an asset name then): the string alone


def test_settings_key_of_settings_without_local_files_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert key_of([]) == DEFAULT_KEY
    assert key_of(["assets.mirror=/somewhere/else"]) == DEFAULT_KEY  # the mirror is no setting
    assert key_of(MLP) == MLP_KEY
    # plug-ins (classes outside hwnas) add their source files, and only them
    import hwnas.search.cli as search_cli
    from hwnas.search.cli import plugin_files

    files = plugin_files({"accuracy": {"_target_": "test_cli.ToyAccuracy"}, "latency": {"_target_": "test_faults_search.SlowLatency"},
                          "space": {"_target_": "hwnas.spaces.create_space"}})
    assert set(files) == {"accuracy._target_", "latency._target_"} and all(v.startswith("sha256:") for v in files.values())
    assert key_of(TOY) != TOY_KEY
    monkeypatch.setattr(search_cli, "plugin_files", lambda *a, **k: {})
    assert key_of(TOY) == TOY_KEY
    # a measurement store / evaluation cache grows while the search runs: never part of the key
    (tmp_path / "measurements.sqlite").write_bytes(b"rows")
    base = key_of(["latency=measured"])
    (tmp_path / "measurements.sqlite").write_bytes(b"more rows, measured during the search")
    assert key_of(["latency=measured"]) == base


def test_settings_key_follows_the_contents_of_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "acc_mlp.pt"
    model.write_bytes(b"weights v1")
    k1 = key_of(MLP)
    assert k1 != MLP_KEY
    model.write_bytes(b"weights v1")  # rewritten, same contents: the same search
    assert key_of(MLP) == k1
    assert key_of(["accuracy=mlp", f"accuracy.path={model}"]) != MLP_KEY  # absolute path: a local file too
    model.write_bytes(b"weights v2")  # retrained into the same path: another search
    k2 = key_of(MLP)
    assert k2 not in (k1, MLP_KEY)
    # a folder of lookup tables, and a {r} template of them: any table changed -> another key
    luts = tmp_path / "luts"
    luts.mkdir()
    for r in (160, 224):
        (luts / f"{r}_lookup_table.yaml").write_text(f"table {r}\n")
    for tables in ("latency.tables=luts", "latency.tables='luts/{r}_lookup_table.yaml'"):
        before = key_of([tables])
        (luts / "224_lookup_table.yaml").write_text("table 224, re-measured\n")
        after = key_of([tables])
        assert after != before and key_of([tables]) == after
        (luts / "224_lookup_table.yaml").write_text("table 224\n")
        assert key_of([tables]) == before


def test_retrained_predictor_file_is_another_search(tmp_path):
    """The same command after the file it names was rewritten: not "nothing to do", a new folder with
    the new predictor's results."""
    args = ["accuracy=custom", "accuracy._target_=test_faults_search2.FileAccuracy", "+accuracy.path=scale.txt",
            "latency=custom", "latency._target_=test_cli.ToyLatency", "search.budgets=[10,14]", "search.pop_size=16",
            "search.n_gen=2", "search.refine.passes=1", "search.refine.members=8", "search.plot=false"]
    (tmp_path / "scale.txt").write_text("1.0")
    p = hwnas_search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = lambda: sorted((tmp_path / "outputs" / "search").iterdir())  # noqa: E731
    (first,) = runs()
    (tmp_path / "scale.txt").write_text("1.0")  # same contents: the same search, nothing redone
    p = hwnas_search(args, cwd=tmp_path)
    assert "nothing to do" in p.stdout + p.stderr and runs() == [first]
    (tmp_path / "scale.txt").write_text("0.5")  # retrained
    p = hwnas_search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nothing to do" not in p.stdout + p.stderr
    (second,) = [r for r in runs() if r != first]
    old, new = front(first)[0], front(second)[0]
    assert [lat for _, _, lat in new] == [lat for _, _, lat in old]  # same latency, same search otherwise
    np.testing.assert_allclose([a for _, a, _ in new], [0.5 * a for _, a, _ in old])


# ------------------------------------------------------------------ 2. the initial population is saved
class Crash(Exception):
    """A kill -9 as the search sees it: no except clause of it runs, nothing is saved."""


class Counting:
    """Wraps a predictor: records every arch it is asked about; raises Crash at call ``crash_at``."""

    def __init__(self, inner, crash_at=None):
        self.inner, self.crash_at, self.seen, self.calls = inner, crash_at, [], 0

    def predict(self, archs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash
        self.seen += [str(a) for a in archs]
        return self.inner.predict(archs)


SMALL = dict(pop_size=16, n_gen=3, refine=1, refine_members=8, refine_starts=2, refine_pairs=10, budgets=[10, 14],
             seed=4, verbose=False)


@pytest.mark.parametrize("engine, restarts, crash_after", [("numpy", 1, 1), ("pymoo", 1, 1), ("numpy", 2, 2)])
def test_a_kill_after_an_initial_population_loses_none_of_it(tmp_path, engine, restarts, crash_after):
    """Killed during the first generation after the ``crash_after``-th initial population (that of
    restart ``crash_after - 1``), with a checkpoint interval far longer than the run (an expensive
    objective, saved rarely): the rerun asks the predictors about none of the archs evaluated before the
    kill and ends with the uninterrupted front."""
    from hwnas.search.checkpoint import SearchCheckpoint, read_state
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")
    args = dict(SMALL, engine=engine, restarts=restarts)
    full_acc, full_lat = Counting(ToyAccuracy(space)), Counting(ToyLatency(space))
    full = run_search(space, full_acc, full_lat, **args)

    interval = 3600.0 if crash_after == 1 else 0.0  # restart 1's population is saved under the interval
    ck = SearchCheckpoint(tmp_path / "ck.npz", interval_s=interval)
    # latency calls: one per initial population and per generation (the space is large: every generation
    # has new archs); the crash is the first call of the generation after the crash_after-th population
    crash_at = 2 if crash_after == 1 else 1 + SMALL["n_gen"] + 2
    acc, lat = Counting(ToyAccuracy(space)), Counting(ToyLatency(space), crash_at=crash_at)
    from hwnas.spaces.errors import PluginFailed

    with pytest.raises(PluginFailed) as crashed:  # the plug-in's exception, named (its traceback kept as the cause)
        run_search(space, acc, lat, checkpoint=ck, **args)
    assert isinstance(crashed.value.__cause__, Crash)
    arrays, meta = read_state(tmp_path / "ck.npz")
    state = meta["state"]
    assert state["phase"] == "nsga" and state["gen"] == 0 and state["restart"] == crash_after - 1
    assert state["step"] == (crash_after - 1) * SMALL["n_gen"]
    before = set(lat.seen)  # every arch evaluated before the kill is in the checkpoint
    assert len(before) == len(lat.seen) == len(arrays["archive_X"]) >= SMALL["pop_size"] * crash_after // 2

    ck2 = SearchCheckpoint(tmp_path / "ck.npz", interval_s=interval)
    acc2, lat2 = Counting(ToyAccuracy(space)), Counting(ToyLatency(space))
    resumed = run_search(space, acc2, lat2, checkpoint=ck2, **args)
    assert ck2.resumed_from == state["step"]
    assert not before & set(lat2.seen) and not set(acc.seen) & set(acc2.seen)  # nothing evaluated again
    assert sorted(lat.seen + lat2.seen) == sorted(full_lat.seen)
    assert sorted(acc.seen + acc2.seen) == sorted(full_acc.seen)
    assert resumed.n_evals == full.n_evals
    np.testing.assert_array_equal(resumed.genomes, full.genomes)
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    assert resumed.history == [{**h, "time_s": r["time_s"]} for h, r in zip(full.history, resumed.history)]


def test_checkpoint_s_spaces_out_later_initial_populations(tmp_path):
    """A fresh run saves its first initial population at once; a cheap restart's population, within
    search.checkpoint_s of the last save, waits like a generation does."""
    from hwnas.search.checkpoint import SearchCheckpoint
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")
    ck = SearchCheckpoint(tmp_path / "ck.npz", interval_s=3600)
    run_search(space, ToyAccuracy(space), ToyLatency(space), checkpoint=ck, **dict(SMALL, restarts=2))
    assert ck.saved_populations == [0] and ck.saved == []
    ck = SearchCheckpoint(tmp_path / "ck0.npz", interval_s=0)
    res = run_search(space, ToyAccuracy(space), ToyLatency(space), checkpoint=ck, **dict(SMALL, restarts=2))
    assert ck.saved_populations == [0, SMALL["n_gen"]] and ck.saved == list(range(1, len(res.history) + 1))


def test_kill9_after_the_initial_population_then_the_same_command_resumes(tmp_path, reference):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    p = hwnas_search(args, cwd=tmp_path, kill=0)  # os._exit(137) right after the initial population's checkpoint
    assert p.returncode == 137, p.stderr[-2000:]
    from hwnas.search.checkpoint import read_state

    arrays, meta = read_state(run / "checkpoint.npz")
    state, n = meta["state"], len(arrays["archive_X"])
    assert state["phase"] == "nsga" and state["gen"] == 0 and state["step"] == 0 and state["history"] == []
    partial, data = front(run)
    assert data["partial"] is True and data["n_evals"] == n and n >= 8 and len(partial) > 0
    p = hwnas_search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    assert f"resuming the search from step 0 (after the initial population of restart 0) ({n} evaluations)" in log
    final, data = front(run)
    assert data["partial"] is False and (final, data["n_evals"]) == (reference[0], reference[1]["n_evals"])


# ------------------------------------------------------------------ 3. overwrite resumes its own checkpoint
def test_overwrite_resumes_this_searchs_own_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}", "search.overwrite=true"]
    p = hwnas_search(args, cwd=tmp_path, kill=3)
    assert p.returncode == 137 and (run / "checkpoint.npz").is_file()
    p = hwnas_search(args, cwd=tmp_path)  # the same command, after the kill
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    assert "holds the checkpoint of this unfinished search: resuming it (search.overwrite=true" in log
    assert "resuming the search from step 3" in log
    final, data = front(run)
    assert data["partial"] is False and final == reference[0] and data["n_evals"] == reference[1]["n_evals"]
    assert not (run / "checkpoint.npz").exists()
    # finished: overwrite searches again, from scratch
    stamp = (run / "pareto.json").stat().st_mtime_ns
    p = hwnas_search(args, cwd=tmp_path)
    assert p.returncode == 0 and "resuming" not in p.stdout + p.stderr and "nothing to do" not in p.stdout + p.stderr
    assert (run / "pareto.json").stat().st_mtime_ns != stamp and front(run)[0] == reference[0]


def _checkpoint(path, settings):
    from hwnas.search.checkpoint import FORMAT, SearchCheckpoint, write_state

    write_state(path, {"archive_X": np.zeros((0, 3), np.int16)},
                {"format": FORMAT, "key": SearchCheckpoint(path, settings=settings).key, "state": {}})


def test_prepare_run_dir_with_overwrite(tmp_path):
    from hwnas.search.cli import _prepare_run_dir

    pj, ck, svg = tmp_path / "pareto.json", tmp_path / "checkpoint.npz", tmp_path / "pareto.svg"
    # a checkpoint of other settings: removed, a fresh search
    _checkpoint(ck, "other")
    assert _prepare_run_dir(tmp_path, "mine", overwrite=True) == "fresh" and not ck.exists()
    # this search's checkpoint beside another search's finished results: those go, the checkpoint resumes
    _checkpoint(ck, "mine")
    pj.write_text(json.dumps({"settings_key": "other", "partial": False}))
    svg.write_text("<svg/>")
    assert _prepare_run_dir(tmp_path, "mine", overwrite=True) == "resume"
    assert ck.is_file() and not pj.exists() and not svg.exists()
    # this search's finished results (killed before the checkpoint was removed): searched again
    pj.write_text(json.dumps({"settings_key": "mine", "partial": False}))
    assert _prepare_run_dir(tmp_path, "mine", overwrite=True) == "replace" and not ck.exists()
    assert pj.exists()  # removed when the new search writes its first results (not if it is refused before)


def test_overwrite_keeps_the_old_results_when_the_new_run_is_refused(tmp_path):
    """search.overwrite=true deleted the finished results first; a run then refused (budgets out of range, a
    missing predictor file) left the folder empty."""
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    p = hwnas_search(args, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.suffix in (".json", ".csv", ".yaml")}
    p = hwnas_search([*args, "search.overwrite=true", "search.budgets=[1000000]"], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert {f: (run / f).read_bytes() for f in before} == before
    p = hwnas_search([*args, "search.overwrite=true", "search.seed=7"], tmp_path)  # another search replaces them
    assert p.returncode == 0 and json.loads((run / "pareto.json").read_text())["seed"] == 7


# ------------------------------------------------------------------ 4. unreadable pareto.json, durable writes
@pytest.mark.parametrize("text", ["", '{"settings_key": "8a86', "[]"])
def test_unreadable_pareto_json_beside_this_searchs_checkpoint_resumes(tmp_path, text):
    from hwnas.search.cli import ConfigError, _prepare_run_dir

    pj, ck = tmp_path / "pareto.json", tmp_path / "checkpoint.npz"
    pj.write_text(text)
    with pytest.raises(ConfigError, match=r"unreadable pareto\.json \(and no checkpoint of this search"):
        _prepare_run_dir(tmp_path, "mine", overwrite=False)
    _checkpoint(ck, "other")
    with pytest.raises(ConfigError, match="unreadable pareto.json"):
        _prepare_run_dir(tmp_path, "mine", overwrite=False)
    assert ck.is_file() and pj.read_text() == text  # refused: nothing removed
    _checkpoint(ck, "mine")
    assert _prepare_run_dir(tmp_path, "mine", overwrite=False) == "resume"
    assert ck.is_file() and not pj.exists()


def test_power_loss_empty_pareto_json_then_the_same_command_resumes(tmp_path, reference):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    p = hwnas_search(args, cwd=tmp_path, kill=3)
    assert p.returncode == 137
    (run / "pareto.json").write_bytes(b"")  # what a power loss leaves of a file whose data never reached the disk
    p = hwnas_search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    assert "pareto.json was unreadable" in log and "resuming the search from step 3" in log
    final, data = front(run)
    assert data["partial"] is False and final == reference[0] and data["n_evals"] == reference[1]["n_evals"]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from hwnas.predictors import assets

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(assets.os, "fsync", fsync)
    monkeypatch.setattr(assets.os, "replace", replace)
    path = assets.atomic_write(tmp_path / "pareto.json", "{}\n")
    assert path.read_text() == "{}\n"
    file_ino, dir_ino = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]


# ------------------------------------------------------------------ 5. hv_ref
@pytest.mark.parametrize("hv_ref, expect", [
    (0.7, "search.hv_ref=0.7 is not a reference point; write search.hv_ref={accuracy: 0.7, latency: 30}"),
    ({"accuracy": "abc"}, "search.hv_ref.accuracy='abc' is not a number"),
    ({"acc": 0.7}, "search.hv_ref={'acc': 0.7} has unknown key(s) ['acc']"),
    ([0.7, 1, 2], "is not a reference point"),
    ([0.7, float("nan")], "search.hv_ref[1] (latency)=nan is not a number"),
    ({"latency": -1}, "search.hv_ref.latency=-1 must be a latency > 0"),  # the hypervolume would be 0 whatever the front
])
def test_bad_hv_ref_is_one_config_error(hv_ref, expect):
    from hwnas.predictors.build import ConfigError
    from hwnas.search.nsga import run_search
    from hwnas.search.settings import search_kwargs
    from hwnas.spaces import create_space

    with pytest.raises(ConfigError) as info:
        search_kwargs({"hv_ref": hv_ref})
    assert expect in str(info.value) and "\n" not in str(info.value)
    space = create_space("ofa_mbv3_w12")  # the library call: a ValueError naming the setting, not a TypeError
    with pytest.raises(ValueError, match="search.hv_ref"):
        run_search(space, ToyAccuracy(space), ToyLatency(space), hv_ref=hv_ref, pop_size=8, n_gen=1, refine=0, verbose=False)


def test_good_hv_ref_forms():
    from hwnas.search.settings import parse_hv_ref

    assert parse_hv_ref(None) == (None, None)
    assert parse_hv_ref({"accuracy": 0.7, "latency": None}) == (0.7, None)
    assert parse_hv_ref({"latency": 30}) == (None, 30.0)
    assert parse_hv_ref([0.5, 20]) == (0.5, 20.0)


def test_settings_key_leaves_out_where_a_dask_search_runs(tmp_path, monkeypatch):
    """evaluator=dask with another number of workers or another scheduler address was another search: a search
    could not resume on a restarted cluster."""
    monkeypatch.chdir(tmp_path)
    base = key_of(["evaluator=dask"])
    assert key_of(["evaluator=dask", "evaluator.n_workers=7", "evaluator.threads_per_worker=2",
                   "evaluator.processes=false", "evaluator.address=tcp://10.0.0.5:8786"]) == base
    assert key_of(["evaluator=dask", "evaluator.objectives=[accuracy,latency]"]) != base  # what runs where: kept
    assert key_of([]) == DEFAULT_KEY


def test_settings_key_leaves_out_how_supernet_accuracies_are_computed(tmp_path, monkeypatch):
    """accuracy=supernet with fewer loader workers, the progress bar, another torch device or cache file -- or the
    same checkpoint given by another path -- was another search: an interrupted search rerun so started over."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pth").write_bytes(b"weights")
    sup = ["accuracy=supernet", "accuracy.data=/datasets/imagenet", "accuracy.checkpoint=ck.pth"]
    base = key_of(sup)
    assert key_of([*sup, "accuracy.num_workers=0", "accuracy.progress=true", "accuracy.device=cpu",
                   "accuracy.cache=elsewhere.sqlite"]) == base
    assert key_of([*sup[:2], f"accuracy.checkpoint={tmp_path / 'ck.pth'}"]) == base
    assert key_of([*sup, "accuracy.n_calib=500"]) != base  # what the accuracies are: kept
    (tmp_path / "ck.pth").write_bytes(b"retrained")
    assert key_of(sup) != base
