"""Scale: population evaluation element-wise on a Dask cluster gives the local result."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.search.evaluators import (DaskRunner, DistributedPredictor, EvaluatorError, LocalRunner, make_runner,
                                     wrap_predictors)

from _pipeline_helpers import ToyAccuracy, ToyLatency

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def runner():
    r = DaskRunner(n_workers=2, threads_per_worker=1, processes=False)
    yield r
    r.close()


def test_dask_search_equals_local(runner):
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    space = create_space("nasbench201")
    acc, lat = ToyAccuracy(space), ToyLatency(space)
    kw = dict(pop_size=16, n_gen=5, seed=4, refine=1, verbose=False)
    local = run_search(space, acc, lat, **kw)
    looped = run_search(space, DistributedPredictor(acc, LocalRunner()), lat, **kw)
    np.testing.assert_array_equal(looped.genomes, local.genomes)
    dacc = DistributedPredictor(acc, runner)
    dist = run_search(space, dacc, lat, **kw)
    assert runner.n_workers == 2
    assert dacc.n_calls == dist.n_evals > 0  # every evaluated arch went through the cluster
    np.testing.assert_array_equal(dist.genomes, local.genomes)
    np.testing.assert_array_equal(dist.accuracy, local.accuracy)
    np.testing.assert_array_equal(dist.latency, local.latency)
    assert dist.n_evals == local.n_evals


def test_tasks_spread_over_both_workers(runner):
    import time

    from hwnas.spaces import create_space

    space = create_space("nasbench201")

    class Slow(ToyAccuracy):
        def predict(self, archs):
            time.sleep(0.02)  # an "expensive" per-arch evaluation
            return super().predict(archs)

    def executed(dask_worker):
        return dask_worker.state.executed_count

    before = runner.client.run(executed)
    archs = space.sample(24, 0)
    vals = DistributedPredictor(Slow(space), runner).predict(archs)
    np.testing.assert_array_equal(vals, ToyAccuracy(space).predict(archs))
    after = runner.client.run(executed)
    done = {w: after[w] - before[w] for w in after}
    assert len(done) == 2 and sum(done.values()) == 24
    assert min(done.values()) >= 4, done  # both workers took a share


def test_pymoo_elementwise_protocol_and_local_runner():
    from hwnas.spaces import create_space

    space = create_space("nasbench201")
    archs = space.sample(5, 1)
    acc = ToyAccuracy(space)
    d = DistributedPredictor(acc, LocalRunner())
    np.testing.assert_allclose(d.predict(archs), acc.predict(archs))
    assert LocalRunner()(lambda x: x * 2, [1, 2]) == [2, 4]


def test_evaluator_config_errors():
    assert isinstance(make_runner({"kind": "local"}), LocalRunner)
    with pytest.raises(EvaluatorError, match="evaluator.kind"):
        make_runner({"kind": "slurm"})
    with pytest.raises(EvaluatorError, match="unknown key"):
        make_runner({"kind": "dask", "workers": 3})
    with pytest.raises(EvaluatorError, match="evaluator.objectives"):
        wrap_predictors({"objectives": ["acc"]}, LocalRunner(), accuracy=1, latency=2)
    with pytest.raises(EvaluatorError, match=r"evaluator.objectives=\['lat'\]: unknown \['lat'\]"):  # not ['l', 'a', 't']
        wrap_predictors({"objectives": "lat"}, LocalRunner(), accuracy=1, latency=2)

    class Fake:  # a runner that is not local: the named predictor is wrapped
        pass

    out = wrap_predictors({"objectives": "latency"}, Fake(), accuracy=1, latency=2)
    assert out["accuracy"] == 1 and type(out["latency"]).__name__ == "DistributedPredictor"


# ============================================================================ a remote device on loopback
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

#: a device without hwnas and without torch: these imports fail in the worker
_NO_HWNAS = """
import sys
class _NotOnThisDevice:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hwnas", "torch"):
            raise ImportError(name + " is not installed on this device")
        return None
sys.meta_path.insert(0, _NotOnThisDevice())
"""


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, protocol="tcp", host="127.0.0.1", scheduler_port=0, dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


def start_device(address, tmp_path, resource="hwnas-device"):
    """A stock Dask worker in its own process, holding the resource, with neither hwnas nor torch."""
    site = tmp_path / "device_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_HWNAS)
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                             "--no-dashboard", "--resources", f"{resource}=1", "--host", "127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc


def wait_for_workers(address, n, timeout=60):
    from distributed import Client

    with Client(address, timeout=30) as c:
        c.wait_for_workers(n, timeout=timeout)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _lat(space, store, address, **kw):
    from hwnas.predictors.measure import MeasuredLatency

    kw = {"wait_s": 20, **kw}
    return MeasuredLatency(space, device="loop-dev", store=store, scheduler=address, processes=2, repeats=3, warmup=1, **kw)


def _executing_on_the_device(client):
    """Tasks the device's worker is running now. The probe is compiled under a module name that no worker
    can import, so it travels by value (the device has no hwnas and no tests)."""
    ns = {"__name__": "hwnas_test_probe"}
    exec("def executing(dask_worker):\n    return len(dask_worker.state.executing)\n", ns)  # noqa: S102
    return sum(client.run(ns["executing"]).values())


@pytest.fixture
def tiny():
    from hwnas.spaces import create_space

    return create_space("ofa_mbv3_w12", resolutions=[64])


@pytest.mark.slow
def test_remote_device_measures_with_the_protocol_and_nothing_twice(scheduler, tmp_path, tiny):
    from hwnas.predictors.measure.store import MeasurementStore
    from hwnas.spaces.io import arch_key

    dev = start_device(scheduler, tmp_path)
    try:
        wait_for_workers(scheduler, 1)
        archs = tiny.sample(2, 0)
        lat = _lat(tiny, tmp_path / "m.sqlite", scheduler)
        y = lat.predict(archs)
        lat.close()
        assert np.all(np.isfinite(y)) and np.all(y > 0) and lat.n_measured == 2
        recs = {r.arch: r for r in MeasurementStore(tmp_path / "m.sqlite").records(device="loop-dev")}
        assert set(recs) == {arch_key(tiny, a) for a in archs}
        for a, v in zip(archs, y):
            r = recs[arch_key(tiny, a)]
            assert r.value == v and len(r.samples) >= 2 and r.n >= 6  # 2 fresh processes x 3 timed calls
            assert r.protocol["processes"] == 2 and r.platform["onnxruntime"] and r.platform["python"]
        again = _lat(tiny, tmp_path / "m.sqlite", scheduler)
        np.testing.assert_array_equal(again.predict(archs), y)
        assert again.n_measured == 0  # rerun: nothing measured twice
        again.close()
    finally:
        stop(dev)


def test_exports_overlap_the_timing_except_on_this_machine_with_the_wall_clock():
    """The next chunk is exported while the device times this one, unless the device is this machine
    and the timing reads the wall clock (2 threads): there the export would slow the timing down."""
    from hwnas.predictors.measure import MeasureConfig
    from hwnas.predictors.measure.remote import WINDOW, queue_window

    one, two = MeasureConfig(threads=1), MeasureConfig(threads=2)
    assert WINDOW > 1
    assert queue_window(["tcp://127.0.0.1:40123"], two) == 1
    assert queue_window(["tcp://localhost:40123"], two) == 1
    assert queue_window(["tcp://127.0.0.1:40123"], one) == WINDOW  # CPU time: the export does not inflate it
    assert queue_window(["tcp://192.0.2.7:40123"], two) == WINDOW  # another machine (a documentation address)


def test_no_worker_with_the_resource_names_the_command(scheduler, tmp_path, tiny):
    from hwnas.predictors.measure import MeasureError

    lat = _lat(tiny, tmp_path / "m.sqlite", scheduler, resource="hwnas-npu")
    lat.measurer.wait_s = 1
    with pytest.raises(MeasureError, match=r'on the device run: dask worker tcp://127\.0\.0\.1:\d+ --nthreads 1 --resources "hwnas-npu=1"'):
        lat.predict(tiny.sample(1, 0))
    lat.close()
    from hwnas.predictors.measure.store import MeasurementStore

    assert len(MeasurementStore(tmp_path / "m.sqlite")) == 0


def test_unreachable_scheduler_is_one_line(tmp_path, tiny, capsys):
    from hwnas.predictors.measure.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--space", "ofa_mbv3_w12", "--resolutions", "64", "-n", "1", "--scheduler", "tcp://127.0.0.1:1",
              "--device", "pi", "--store", str(tmp_path / "m.sqlite"), "--wait", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("hwnas-measure: error: scheduler='tcp://127.0.0.1:1': cannot connect")


@pytest.mark.slow
def test_device_lost_mid_task_is_retried_on_reconnect_and_stored_once(scheduler, tmp_path, tiny):
    """kill -9 of the device's worker while it times an arch; a worker reconnecting with the resource
    runs the task again; every arch is stored once, complete."""
    from distributed import Client

    from hwnas.predictors.measure.store import MeasurementStore

    dev = start_device(scheduler, tmp_path)
    wait_for_workers(scheduler, 1, timeout=300)
    archs = tiny.sample(2, 3)
    # >= 1 s per timing process; the device may take its time to come back on a loaded machine
    lat = _lat(tiny, tmp_path / "m.sqlite", scheduler, min_time_s=1.0, wait_s=600)
    out: dict = {}

    def measure():
        try:
            out["y"] = lat.predict(archs)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            out["error"] = exc

    t = threading.Thread(target=measure)
    t.start()
    try:
        with Client(scheduler, timeout=60) as c:
            deadline = time.monotonic() + 600
            while not _executing_on_the_device(c):  # the first arch's task is running its protocol on the device
                assert t.is_alive() and time.monotonic() < deadline, out
                time.sleep(0.05)
            assert len(MeasurementStore(tmp_path / "m.sqlite").records()) < len(archs)  # one arch is being timed
            stop(dev)  # the device disappears mid-task
            dev = start_device(scheduler, tmp_path)  # ... and comes back
        t.join(timeout=900)
        assert not t.is_alive() and "error" not in out, out
    finally:
        stop(dev)
        lat.close()
    y = out["y"]
    recs = MeasurementStore(tmp_path / "m.sqlite").records(device="loop-dev")
    assert len(recs) == 2 and sorted(r.value for r in recs) == sorted(y.tolist())
    assert all(len(r.samples) >= 2 and r.n >= 6 for r in recs)


@pytest.mark.slow
def test_cli_measures_through_the_scheduler(scheduler, tmp_path, capsys):
    from hwnas.predictors.measure.cli import main
    from hwnas.predictors.measure.store import MeasurementStore

    dev = start_device(scheduler, tmp_path)
    try:
        wait_for_workers(scheduler, 1)
        argv = ["--space", "ofa_mbv3_w12", "--resolutions", "64", "-n", "3", "--scheduler", scheduler, "--resource",
                "hwnas-device", "--device", "pi4-ort", "--store", str(tmp_path / "m.sqlite"), "--processes", "2",
                "--repeats", "3", "--warmup", "1", "--chunk", "2", "--no-progress"]
        assert main(argv) == 0  # 3 archs in 2 tasks (2 + 1), each arch stored with its own result
        recs = MeasurementStore(tmp_path / "m.sqlite").records(device="pi4-ort")
        # 2 fresh processes each (more when they disagree by more than max_spread: a loaded machine)
        assert len(recs) == 3 and all(r.value > 0 and r.platform and len(r.samples) >= 2 for r in recs)
        assert len({r.value for r in recs}) == 3
        capsys.readouterr()
        assert main(argv) == 0
        assert "0 to measure" in capsys.readouterr().err
    finally:
        stop(dev)


def test_a_ctrl_c_while_the_local_cluster_starts_stops_the_search(monkeypatch):
    """The cluster's start ignored SIGINT (so that its workers would not print tracebacks): a Ctrl-C in that second
    was lost and the search ran to its end. It is now noted and raised after the start: the cluster is closed and
    KeyboardInterrupt raised; the workers ignore SIGINT through their preload."""
    import signal
    import threading

    import distributed

    from hwnas.search.evaluators import DaskRunner

    closed = []

    class Starting:
        def __init__(self, **kw):
            assert kw["preload"] == ["hwnas.search._dask_worker"]
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the user's Ctrl-C, while the workers start
            # (to this thread: earlier tests of this process left Dask threads that would take a process-wide one)

        def close(self):
            closed.append(True)

    monkeypatch.setattr(distributed, "LocalCluster", Starting)
    with pytest.raises(KeyboardInterrupt):
        DaskRunner(n_workers=1)
    assert closed == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back


def test_the_workers_preload_makes_them_ignore_ctrl_c():
    import signal

    from hwnas.search._dask_worker import dask_setup

    old = signal.getsignal(signal.SIGINT)
    try:
        dask_setup(None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
