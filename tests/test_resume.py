"""Survive: per-generation search checkpoints (kill -9 and resume = same result), pipeline stages
resumed without repeating measurements, corrupted caches reported and left alone."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.search.checkpoint import KILL_ENV, CheckpointError, SearchCheckpoint, read_meta

from _pipeline_helpers import small_pipeline_cfg, small_pipeline_run  # noqa: F401 - fixtures

HERE = Path(__file__).resolve().parent
HELPER = HERE / "_pipeline_helpers.py"


def _run(out, ckpt, kill=None):
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill is not None:
        env[KILL_ENV] = str(kill)
    return subprocess.run([sys.executable, str(HELPER), str(out), str(ckpt)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_kill9_then_resume_gives_the_uninterrupted_result(tmp_path):
    from _pipeline_helpers import comparable

    # uninterrupted run
    p = _run(tmp_path / "a", tmp_path / "a.npz")
    assert p.returncode == 0, p.stderr
    full = json.loads(p.stdout.strip().splitlines()[-1])
    steps = len(full["saved"])  # 8 generations + the refinement passes
    assert full["resumed_from"] is None and steps > 8 and full["saved"] == list(range(1, steps + 1))
    # killed (os._exit, like kill -9) right after the checkpoint of generation 3
    p = _run(tmp_path / "b", tmp_path / "b.npz", kill=3)
    assert p.returncode == 137
    assert not (tmp_path / "b" / "pareto.json").exists()
    assert read_meta(tmp_path / "b.npz")["state"]["step"] == 3  # npz + JSON, no pickle
    # the same command again resumes from generation 3 and ends with the same front
    p = _run(tmp_path / "b", tmp_path / "b.npz")
    assert p.returncode == 0, p.stderr
    resumed = json.loads(p.stdout.strip().splitlines()[-1])
    assert resumed["resumed_from"] == 3 and resumed["saved"] == list(range(4, steps + 1))
    assert resumed["n_evals"] == full["n_evals"]
    assert comparable(tmp_path / "b" / "pareto.json") == comparable(tmp_path / "a" / "pareto.json")


def test_checkpoint_from_other_settings_or_corrupted_is_refused(tmp_path):
    from _pipeline_helpers import search_front

    ck = tmp_path / "c.npz"
    search_front(tmp_path / "o", ck, n_gen=2)
    with pytest.raises(CheckpointError, match="other settings"):
        search_front(tmp_path / "o", ck, seed=2, n_gen=2)
    ck.write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        search_front(tmp_path / "o", ck, n_gen=2)
    assert ck.read_bytes() == b"garbage, not a checkpoint"  # reported, never overwritten


def test_corrupted_supernet_cache_is_reported_not_overwritten(tmp_path):
    # The cache opening of SupernetAccuracy, exercised without building a supernet.
    from hwnas.supernet.accuracy import SupernetAccuracy

    bad = tmp_path / "acc.sqlite"
    junk = b"\x00garbage" * 500
    bad.write_bytes(junk)
    acc = SupernetAccuracy.__new__(SupernetAccuracy)
    acc.cache_path, acc._db = str(bad), None
    with pytest.raises(sqlite3.DatabaseError, match=r"acc\.sqlite is corrupted.*move or delete it"):
        acc._open_db()
    assert bad.read_bytes() == junk


def test_pipeline_resumes_search_after_crash_without_new_measurements(tmp_path, monkeypatch, small_pipeline_cfg, small_pipeline_run):
    from _pipeline_helpers import comparable

    from hwnas.search.pipeline import run_pipeline

    ref_dir, ref = small_pipeline_run

    class Crash(Exception):
        pass

    orig = SearchCheckpoint.save

    def save_then_crash(self, algo, problem, gen, history, hv_ref):
        orig(self, algo, problem, gen, history, hv_ref)
        if gen == 3:
            raise Crash()

    monkeypatch.setattr(SearchCheckpoint, "save", save_then_crash)
    with pytest.raises(Crash):
        run_pipeline(small_pipeline_cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "05_search" / "stage.json").exists()
    monkeypatch.setattr(SearchCheckpoint, "save", orig)
    s = run_pipeline(small_pipeline_cfg, tmp_path / "run")
    assert s["stages_skipped"] == ["01_proxy", "02_samples", "03_adapt", "04_reduce"]
    meta = json.loads((tmp_path / "run" / "05_search" / "stage.json").read_text())
    assert meta["resumed_from_gen"] == 3
    # the K samples were measured before the crash and not again; only the front was new
    assert s["new_measurements_this_run"] == s["target_measurements"] - s["k"]
    assert s["target_measurements"] == ref["target_measurements"]
    assert comparable(tmp_path / "run" / "05_search" / "pareto.json") == comparable(ref_dir / "05_search" / "pareto.json")
    assert s["evaluation"]["hv_ratio"] == ref["evaluation"]["hv_ratio"]


@pytest.mark.parametrize("edit, said", [
    (lambda st, a: st.update(history={"a": 1}), "state history is not a list of steps"),
    (lambda st, a: st.update(history=[1, 2, 3]), "state history is not a list of steps"),
    (lambda st, a: st.update(hv_ref=["x", None]), "state hv_ref=['x', None] is not a reference point [accuracy, latency]"),
    (lambda st, a: st.update(elapsed_s=float("nan")), "state elapsed_s=nan is not a number of seconds"),
    (lambda st, a: st.update(step=-2), "state step=-2 is not a count"),
    (lambda st, a: a["archive_lat"].__setitem__(0, -1.0), "the archive holds latencies <= 0"),
])
def test_an_edited_checkpoint_state_is_one_line(tmp_path, edit, said):
    """A checkpoint whose JSON state was edited (history a dict, hv_ref of text, elapsed_s NaN ...) ended in a
    TypeError traceback, numpy's ufunc error or 'cannot convert float NaN to integer' naming no file."""
    from _pipeline_helpers import search_front

    from hwnas.search.checkpoint import read_state, write_state

    ck = tmp_path / "c.npz"
    search_front(tmp_path / "o", ck, n_gen=2)
    arrays, meta = read_state(ck)
    arrays = {k: v.copy() for k, v in arrays.items()}
    edit(meta["state"], arrays)
    write_state(ck, arrays, meta)
    before = ck.read_bytes()
    with pytest.raises(CheckpointError) as e:
        search_front(tmp_path / "o", ck, n_gen=2)
    assert str(e.value) == f"checkpoint {ck}: {said}; the file is corrupt or not from this search — delete it"
    assert ck.read_bytes() == before
