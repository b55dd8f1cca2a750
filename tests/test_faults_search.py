"""Faults around ``hwnas-search``: signals and kill -9 on real subprocesses, crafted files (nothing runs),
reruns into a used folder, one-line errors. Each test is a row of the README's reliability table."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import MacsLatency, ToyAccuracy, ToyLatency, cli_env

TESTS = Path(__file__).resolve().parent
SLOW_ENV = "HWNAS_TEST_SLOW_S"
HOLD_ENV = "HWNAS_TEST_HOLD_AFTER"
# a small search with toy predictors; SlowLatency sleeps $HWNAS_TEST_SLOW_S per batch and, after
# $HWNAS_TEST_HOLD_AFTER batches, holds until it is killed or interrupted (so a run to be interrupted cannot
# finish first however slow the test process is); neither is a setting: an interrupted run and its rerun have
# the same settings key
TOY = ["accuracy=custom", "accuracy._target_=test_cli.ToyAccuracy", "latency=custom",
       "latency._target_=test_faults_search.SlowLatency", "search.budgets=[4,8]", "search.pop_size=16",
       "search.n_gen=12", "search.refine.passes=3", "search.refine.members=8", "search.refine.starts=2",
       "search.refine.pairs=10", "search.checkpoint_s=0", "search.plot=false"]


class SlowLatency(MacsLatency):
    def __init__(self, space=None):
        super().__init__(space)
        self.delay = float(os.environ.get(SLOW_ENV, "0"))
        self.hold_after = int(os.environ.get(HOLD_ENV, "0"))
        self.calls = 0

    def predict(self, archs):
        self.calls += 1
        time.sleep(300 if self.hold_after and self.calls > self.hold_after else self.delay)
        return super().predict(archs)


class Marker:
    """Unpickling this object creates ``path`` (what a crafted file would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def search(args, cwd, slow=0.0):
    return subprocess.run([sys.executable, "-m", "hwnas.search", *args], cwd=cwd, env=cli_env({SLOW_ENV: str(slow)}),
                          capture_output=True, text=True, timeout=300)


def start(args, cwd, slow, hold_after=8):
    """A search to interrupt: it holds after ``hold_after`` latency batches (a few checkpoints in)."""
    return subprocess.Popen([sys.executable, "-m", "hwnas.search", *args], cwd=cwd,
                            env=cli_env({SLOW_ENV: str(slow), HOLD_ENV: str(hold_after)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120.0):
    t = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


def front(run_dir):
    d = json.loads((run_dir / "pareto.json").read_text())
    return [(r["arch_str"], r["accuracy"], r["latency"]) for r in d["front"]], d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its front is what every interrupted-and-resumed run must end with."""
    d = tmp_path_factory.mktemp("ref")
    p = search([*TOY, f"hydra.run.dir={d / 'run'}"], cwd=d)
    assert p.returncode == 0, p.stderr[-2000:]
    return front(d / "run")[0]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_partial_front_and_checkpoint_then_the_same_command_resumes(tmp_path, reference, sig, code):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    proc = start(args, tmp_path, slow=0.15)
    wait_for(run / "checkpoint.npz", proc)  # a few generations in
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"hwnas-search: interrupted ({sig.name})") and "run the same command again" in lines[-1]
    assert "Traceback" not in err
    partial, data = front(run)
    assert data["partial"] is True and (run / "checkpoint.npz").is_file() and not (run / "pareto.svg").exists()
    assert 0 < len(partial)
    p = search(args, cwd=tmp_path)  # the same command
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming the search from step" in p.stdout + p.stderr
    final, data = front(run)
    assert data["partial"] is False and final == reference
    assert not (run / "checkpoint.npz").exists()


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_with_a_dask_evaluator_is_one_line(tmp_path, reference):
    """Ctrl-C in a terminal reaches the whole process group, Dask's worker processes included. They
    used to print a KeyboardInterrupt traceback each, the scheduler a CommClosedError traceback per
    cancelled task and the cluster 30 INFO lines; now only the search's line, and the same command resumes."""
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}", "evaluator=dask", "evaluator.n_workers=1", "evaluator.processes=true"]
    proc = subprocess.Popen([sys.executable, "-m", "hwnas.search", *args], cwd=tmp_path,
                            env=cli_env({SLOW_ENV: "0.15", HOLD_ENV: "8"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(run / "checkpoint.npz", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("hwnas-search: interrupted (SIGINT)"), err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "distributed" not in out + err  # not one of Dask's log records
    p = search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming the search from step" in p.stdout + p.stderr
    assert front(run)[0] == reference


def test_kill9_then_the_same_command_resumes(tmp_path, reference):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    proc = start(args, tmp_path, slow=0.15)
    wait_for(run / "checkpoint.npz", proc)
    time.sleep(0.3)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    p = search(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming the search from step" in p.stdout + p.stderr
    assert front(run)[0] == reference
    assert not list(run.glob(".*.tmp*"))  # atomic writes leave no temp files


def test_rerun_into_a_used_folder(tmp_path, reference):
    run = tmp_path / "run"
    args = [*TOY, f"hydra.run.dir={run}"]
    p = search([*args, "search.plot=true"], cwd=tmp_path)
    assert p.returncode == 0 and (run / "pareto.svg").is_file()
    stamp = (run / "pareto.json").stat().st_mtime_ns
    # the same settings: reported as finished, nothing redone
    p = search([*args, "search.plot=true"], cwd=tmp_path)
    assert p.returncode == 0 and "already holds the finished results of this search" in p.stdout + p.stderr
    assert (run / "pareto.json").stat().st_mtime_ns == stamp
    # other settings: refused in one line, the results untouched
    p = search([*args, "search.seed=5"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("hwnas-search: error: ")
    assert "already holds the results of another search" in p.stderr and "search.overwrite=true" in p.stderr
    assert (run / "pareto.json").stat().st_mtime_ns == stamp
    # overwrite: the new results and no stale plot beside them
    p = search([*args, "search.seed=5", "search.overwrite=true"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (run / "pareto.svg").exists() and front(run)[0] != reference
    assert json.loads((run / "pareto.json").read_text())["seed"] == 5


def test_default_run_folder_is_found_again(tmp_path):
    """No hydra.run.dir: the folder is named by the settings, so the same command finds it."""
    p = search(TOY, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "search").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("ofa_mbv3_w12-")
    p = search(TOY, cwd=tmp_path)
    assert "already holds the finished results" in p.stdout + p.stderr
    search([*TOY, "search.seed=3"], cwd=tmp_path)
    assert len(list((tmp_path / "outputs" / "search").iterdir())) == 2


# ------------------------------------------------------------------ crafted files: nothing runs
def crafted_payload(tmp_path):
    marker = tmp_path / "MARKER"
    payload = tmp_path / "payload.pt"
    payload.write_bytes(pickle.dumps(Marker(marker)))
    return marker, payload


def test_crafted_pareto_json_runs_nothing(tmp_path):
    from hwnas.search.results import ResultsError, load_front
    from hwnas.spaces.base import SpaceError

    marker, payload = crafted_payload(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps({
        "space": {"_target_": "torch.load", "f": str(payload), "weights_only": False},
        "front": [{"arch": "r224:k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3", "accuracy": 0.7, "latency": 9.0}],
    }))
    with pytest.raises(SpaceError) as info:
        load_front(run)
    assert str(run / "pareto.json") in str(info.value) and "nothing was run" in str(info.value)
    assert not marker.exists()
    # "front": 5 -> one line naming the file (hwnas-export: test_faults_export.py)
    (run / "pareto.json").write_text(json.dumps({"space": {"space": "ofa_mbv3_w12", "options": {}}, "front": 5}))
    with pytest.raises(ResultsError, match=r"pareto\.json: 'front' must be a list"):
        load_front(run)


def test_crafted_checkpoint_runs_nothing(tmp_path):
    from hwnas.search.checkpoint import CheckpointError, SearchCheckpoint
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    marker, _ = crafted_payload(tmp_path)
    ck = tmp_path / "checkpoint.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = Marker(marker)
    np.savez(ck, meta=np.frombuffer(b"{}", dtype=np.uint8), archive_X=obj)
    space = create_space("ofa_mbv3_w12")
    with pytest.raises(CheckpointError, match=r"checkpoint.npz is unreadable \(not arrays: numpy would read it as pickled Python objects, which hwnas never loads\)"):
        run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=8, n_gen=1, verbose=False,
                   checkpoint=SearchCheckpoint(ck))
    assert not marker.exists()
    # a well-formed file whose genomes lie outside the space is refused too
    from hwnas.search.checkpoint import FORMAT, fingerprint, write_state

    bad = {"archive_X": np.full((2, space.n_var), 99, np.int16), "archive_acc": np.ones(2), "archive_lat": np.ones(2),
           "refine_expanded": np.zeros((0, space.n_var), np.int16), "refine_walkers": np.zeros((0, space.n_var), np.int16),
           "refine_walker_budget": np.zeros(0, np.int16)}
    write_state(ck, bad, {"format": FORMAT, "key": fingerprint(None), "state": {"phase": "refine"}})
    with pytest.raises(CheckpointError, match="outside space ofa_mbv3_w12"):
        run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=8, n_gen=1, verbose=False,
                   checkpoint=SearchCheckpoint(ck))


def test_crafted_predictor_file_runs_nothing(tmp_path):
    from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor, PredictorLoadError

    marker, payload = crafted_payload(tmp_path)
    with pytest.raises(PredictorLoadError, match=r"payload\.pt .*names posix\.system.*nothing was run"):
        OFAAccuracyPredictor(path=payload)
    assert not marker.exists()


# ------------------------------------------------------------------ one line for bad input
@pytest.mark.parametrize("override, expect", [
    ("search.pop_size=abc", "search.pop_size='abc' must be an integer >= 4; e.g. search.pop_size=100"),
    ("accuracy.path=/typo/x.pth", "accuracy.path='/typo/x.pth': /typo/x.pth does not exist"),
    # no raw TypeError / float() message: the key and the accepted forms
    ("search.hv_ref=0.7", "search.hv_ref=0.7 is not a reference point; write search.hv_ref={accuracy: 0.7, latency: 30} "
                          "or search.hv_ref.accuracy=0.7"),
    ("search.hv_ref={accuracy:abc}", "search.hv_ref.accuracy='abc' is not a number; write search.hv_ref={accuracy:"),
    ("search.budgets=abc", "search.budgets='abc' must be a list of latency budgets; e.g. search.budgets=[15,20]"),
    ("search.checkpoint_s=abc", "search.checkpoint_s='abc' must be a number of seconds >= 0; e.g. search.checkpoint_s=10"),
    ("search.sampling.structured=5", "search.sampling.structured=5 must be a fraction of the initial population in [0, 1]"),
    ("search.crossover.prob=2", "search.crossover.prob=2 must be a probability in [0, 1]; e.g. search.crossover.prob=0.9"),
    ("search.max_latency=-3", "search.max_latency=-3 must be a latency > 0"),
])
def test_bad_values_are_one_line(tmp_path, override, expect):
    p = search(["assets.mirror=" + str(TESTS.parents[1] / "shared" / "data"), override, f"hydra.run.dir={tmp_path / 'r'}"],
               cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwnas-search: error: ") and expect in lines[0], p.stderr
    assert "http" not in lines[0]  # no download URL built from a local path


def test_lookup_table_lacking_entries_is_one_line(tmp_path, data_dir):
    from hwnas.predictors.lut import read_lut, write_ofa_yaml

    for r in (160, 224):
        t = read_lut(data_dir / "ofa" / "note10" / f"{r}_lookup_table.yaml")
        if r == 224:
            t = {k: v for k, v in t.items() if "kernel:7" not in k}
        write_ofa_yaml(t, tmp_path / "luts" / f"{r}_lookup_table.yaml")
    p = search([f"assets.mirror={data_dir}", "latency.tables=luts", "space.resolutions=[160,224]",
                f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "224_lookup_table.yaml lacks" in lines[0] and "kernel:7" in lines[0], p.stderr


def test_temporary_files_of_killed_processes_are_removed(tmp_path):
    """What atomic writes of a killed process leave (``.<name>.<pid>.<random>.tmp[.ext]``, files or export
    folders) is removed by the next run; a live process's and other files are left alone."""
    from hwnas.predictors.assets import atomic_path, remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_file = tmp_path / f".checkpoint.npz.{dead.pid}.ab_12x.tmp.npz"
    stale_dir = tmp_path / f".budget15_r160_ab.{dead.pid}.x9y8.tmp"
    live = tmp_path / f".pareto.json.{os.getpid()}.q1w2.tmp.json"
    keep = [tmp_path / "pareto.json", tmp_path / ".hidden", tmp_path / f".a.{dead.pid}.tmp"]
    for p in (stale_file, live, *keep):
        p.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale_file, stale_dir])
    assert live.exists() and all(p.exists() for p in keep)
    with atomic_path(tmp_path / "checkpoint.npz") as tmp:  # the names atomic writes use are the ones removed
        assert tmp.name.startswith(f".checkpoint.npz.{os.getpid()}.") and tmp.name.endswith(".tmp.npz")
