"""Faults on the target side, on real processes: kill -9 and SIGTERM of hwnas-measure and of the
pipeline, a full disk, a read-only store, two processes registering one device at once, temporary
files on every exit path. Each test is a row of the README's reliability table."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from hwnas.predictors.measure.store import MeasurementStore, StoreError, StoreReadOnlyError

HERE = Path(__file__).resolve().parent
TINY = ["--space", "ofa_mbv3_w12", "--resolutions", "64", "--processes", "2", "--repeats", "3", "--warmup", "1", "--no-progress"]


def _measure_cmd(store, *extra):
    return [sys.executable, "-m", "hwnas.predictors.measure.cli", *TINY, "--store", str(store), "--device", "here", *extra]


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(cond, timeout=120.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def _rows(store) -> int:
    if not Path(store).exists():
        return 0
    try:
        return len(MeasurementStore(store).records())
    except StoreError:
        return 0


def _workdirs(tmp: Path, pid: int | None = None) -> list[Path]:
    return sorted(tmp.glob(f"hwnas-measure-{pid if pid is not None else ''}*"))


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to see the timing processes")


# ============================================================================ hwnas-measure
@needs_proc
@pytest.mark.slow
def test_measure_kill9_keeps_each_finished_arch_leaves_no_worker_and_resumes(tmp_path):
    """kill -9 mid-run: every arch finished before is stored (one commit per arch), the timing
    processes die with their parent, the next run removes the killed run's temporary folder and
    measures only what is missing."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    store = tmp_path / "m.sqlite"
    # --chunk 1: one timing task per arch, so that some archs are done while others are not
    p = subprocess.Popen(_measure_cmd(store, "-n", "4", "--chunk", "1"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: _rows(store) >= 1 or p.poll() is not None), "no arch was stored"
    assert p.poll() is None, p.stderr.read()
    assert _wait(lambda: bool(_children(p.pid)), timeout=60), "no timing process seen"
    workers = _children(p.pid)
    p.kill()
    p.wait()
    done = _rows(store)
    assert 1 <= done < 4
    assert _wait(lambda: not any(_alive(w) for w in workers), timeout=10), "a timing process outlived its parent"
    assert _workdirs(tmp, p.pid), "the killed run's temporary folder should still be there"
    r = subprocess.run(_measure_cmd(store, "-n", "4"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{done} already in" in r.stderr and f"{4 - done} to measure" in r.stderr
    assert _rows(store) == 4
    assert not _workdirs(tmp), "stale temporary folders were not cleaned"


@needs_proc
@pytest.mark.slow
def test_measure_sigterm_cleans_up_and_says_so(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    store = tmp_path / "m.sqlite"
    p = subprocess.Popen(_measure_cmd(store, "-n", "4"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: bool(_children(p.pid)) or p.poll() is not None, timeout=120)
    workers = _children(p.pid)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM
    assert "finished measurements are in" in err and "rerun the same command" in err
    assert "Traceback" not in err
    assert not any(_alive(w) for w in workers)
    assert not _workdirs(tmp), "temporary ONNX files left after SIGTERM"


def test_temporary_files_removed_when_a_measurement_fails(tmp_path, monkeypatch):
    from hwnas.predictors.measure import MeasureConfig, MeasureError, ModelSpec, measure_specs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ok = ModelSpec("hwnas.predictors.measure.models:tiny_cnn", {"width": 4, "depth": 1, "resolution": 16}, key="ok")
    with pytest.raises(MeasureError, match="cannot be imported"):
        measure_specs([ok, ModelSpec("no_such_pkg.mod:f", {}, key="bad")], MeasureConfig(processes=1, repeats=1, warmup=0))
    assert not _workdirs(tmp_path)


def test_stale_workdirs_of_dead_processes_are_removed(tmp_path):
    from hwnas.predictors.measure.measurer import clean_stale_workdirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"hwnas-measure-{dead}-abc"
    live = tmp_path / f"hwnas-measure-{os.getppid()}-abc"  # a running process (pytest's parent)
    for d in (stale, live):
        d.mkdir()
        (d / "model0.onnx").write_bytes(b"x" * 100)
    assert clean_stale_workdirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


# ============================================================================ file systems
@contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({r.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only: a read-only remount for root (permissions do not stop root), chmod otherwise."""
    if os.geteuid() != 0:
        files = [folder, *folder.iterdir()]
        for f in files:
            f.chmod(0o555 if f.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for f in files:
                f.chmod(0o755 if f.is_dir() else 0o644)
        return
    saved = folder.parent / (folder.name + ".saved")
    shutil.copytree(folder, saved)
    with _tmpfs(folder, "8m"):
        for f in saved.iterdir():
            shutil.copy2(f, folder / f.name)
        r = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        yield folder


def _store_with_rows(path: Path, space, n: int) -> list[str]:
    from hwnas.predictors.measure import MeasureConfig
    from hwnas.spaces.io import arch_key

    keys = [arch_key(space, a) for a in space.sample(n, 0)]
    with MeasurementStore(path) as st:
        st.register_device("here", MeasureConfig(processes=2, repeats=3, warmup=1))
        for i, k in enumerate(keys):
            st.put("here", space.name, k, 1.0 + i)
    return keys


def test_read_only_store_opens_read_only_and_says_why(tmp_path, capsys):
    from hwnas.predictors.measure.cli import main
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12", resolutions=[64])
    ro = tmp_path / "ro"
    ro.mkdir()
    keys = _store_with_rows(ro / "m.sqlite", space, 2)
    with _read_only(ro):
        st = MeasurementStore(ro / "m.sqlite")
        assert st.read_only and {r.arch for r in st.records()} == set(keys)  # the data are intact and readable
        with pytest.raises(StoreReadOnlyError, match="read-only.*2 measurements can be read.*writable folder"):
            st.put("here", space.name, keys[0], 5.0)
        # everything asked for is stored: the command works from a read-only store
        assert main([*TINY, "-n", "2", "--seed", "0", "--store", str(ro / "m.sqlite"), "--device", "here"]) == 0
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:  # something to measure: one line, before any timing
            main([*TINY, "-n", "3", "--seed", "0", "--store", str(ro / "m.sqlite"), "--device", "here"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith("hwnas-measure: error: store") and "read-only" in err[-1]
        assert "not a readable measurement store" not in err[-1]


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_what_was_stored(tmp_path):
    from hwnas.spaces import create_space

    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
    space = create_space("ofa_mbv3_w12", resolutions=[64])
    with _tmpfs(tmp_path / "small", "2m") as small:
        store = small / "m.sqlite"
        _store_with_rows(store, space, 1)
        filler = small / "filler"
        with open(filler, "wb") as f:  # fill the file system to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        r = subprocess.run(_measure_cmd(store, "-n", "2", "--seed", "5"), capture_output=True, text=True, timeout=600)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert lines[-1].startswith("hwnas-measure: error:") and "no space left" in lines[-1] and "kept" in lines[-1]
        filler.unlink()
        assert _rows(store) == 1  # what was stored before is intact


# ============================================================================ registration race
def _register(path, threads, barrier, out):
    from hwnas.predictors.measure import MeasureConfig

    barrier.wait()
    try:
        MeasurementStore(path).register_device("dev", MeasureConfig(threads=threads, clock="wall"))
        out.put(("ok", threads))
    except StoreError as exc:
        out.put(("refused", str(exc)))


def test_register_device_race_has_one_winner(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    for trial in range(6):
        path = tmp_path / f"race{trial}.sqlite"
        MeasurementStore(path).close()
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_register, args=(str(path), 1 + i % 2, barrier, out)) for i in range(4)]
        for p in procs:
            p.start()
        res = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        winners = {t for kind, t in res if kind == "ok"}
        assert len(winners) == 1, res  # one protocol per device name, whatever the interleaving
        stored = MeasurementStore(path).devices()["dev"]
        assert stored["threads"] == winners.pop()
        assert sum(kind == "refused" for kind, _ in res) == 2  # the two processes with the other protocol


# ============================================================================ pipeline
def _pipeline_cmd(run_dir, mirror, *extra):
    return [sys.executable, "-m", "hwnas.search.pipeline.cli", "--config-name", "pipeline_nasbench201", "target.device=titan_rtx_1",
            "samples.pool=400", "samples.k=10", "reduce.n_samples=32", "search.n_gen=300", "search.pop_size=24",
            "search.refine.passes=1", "search.verbose=false", "search.plot=false", "report=false", f"assets.mirror={mirror}",
            f"hydra.run.dir={run_dir}", *extra]


@pytest.mark.slow
def test_pipeline_kill9_during_search_resumes_without_measuring_again(tmp_path, data_dir):
    env = dict(os.environ, PYTHONPATH=str(HERE))
    ref = subprocess.run(_pipeline_cmd(tmp_path / "ref", data_dir), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    p = subprocess.Popen(_pipeline_cmd(run, data_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: any((run / "05_search").glob("checkpoint.npz")) or p.poll() is not None, timeout=300)
    p.kill()
    p.wait()
    if (run / "05_search" / "stage.json").exists():
        pytest.skip("the search finished before it could be killed (machine too fast for this drill)")
    r = subprocess.run(_pipeline_cmd(run, data_dir), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert s["stages_skipped"][:2] == ["01_proxy", "02_samples"]  # the K samples were not measured again
    assert s["target_measurements"] == s_ref["target_measurements"]
    assert s["new_measurements_this_run"] == s["target_measurements"] - s["k"]
    assert s["best_at_budgets"] == s_ref["best_at_budgets"] and s["final_size"] == s_ref["final_size"]
