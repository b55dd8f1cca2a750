"""The timing side of the measurement protocol: what runs beside (or on) the device.

This file is self-contained on purpose: it imports only the standard library and numpy (ONNX Runtime
and, for the eager backend, torch inside the functions that need them). It runs

* as a **fresh timing process** (``python -c <runpy> worker.py``): reads one JSON request on stdin,
  times each model with ``warmup`` untimed and ``repeats`` timed calls and writes the call times (ms)
  as one JSON line on stdout;
* inside a **Dask worker on a remote device** (:func:`measure_on_device`): hwnas sends its functions
  by value (cloudpickle), so the device needs only Python, numpy, onnxruntime and ``dask[distributed]``;
  the protocol then runs there exactly as it runs locally, fresh processes included.

The protocol's control logic (:func:`run_protocol`) lives here too, so that both places share it:
every model is timed in ``processes`` fresh processes ("groups"; a shuffled order per group), the
result is the median of the process medians, and while a model's ``processes`` most central process
medians spread more than ``max_spread`` (relative), one more process times it (at most ``max_extra``).

A timing process dies with its parent (Linux ``PR_SET_PDEATHSIG``; elsewhere it notices that its
parent is gone between two models), so a killed run leaves no worker behind.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

#: how a timing process is started: this file is run by path, without its package
WORKER_CODE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__hwnas_measure_worker__')"


class ProtocolError(RuntimeError):
    """A timing went wrong; the message names the model and what happened."""


# ============================================================================ statistics
def relative_spread(values: Sequence[float]) -> float:
    """``(max - min) / median`` (0 for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return 0.0
    med = float(np.median(v))
    return float((v.max() - v.min()) / med) if med > 0 else float("inf")


def core(values: Sequence[float], k: int | None = None) -> list[float]:
    """The ``k`` values closest to the median (all of them when ``k`` is None or too large): the
    processes that agree, once an outlier process has been out-voted by re-measurement."""
    v = [float(x) for x in values]
    if k is None or k >= len(v):
        return v
    med = float(np.median(v))
    return sorted(sorted(v, key=lambda x: (abs(x - med), x))[:k])


def summarise(per_process: Sequence[Sequence[float]], max_spread: float, k: int | None = None) -> dict:
    """Median of each process's call times; the result (``ms``) is the median over the ``k`` process
    medians closest to the median of all (all of them by default); their relative ``spread`` flags
    instability (``stable``). ``n`` counts the timed calls."""
    meds = [float(np.median(t)) for t in per_process if len(t)]
    if not meds:
        raise ProtocolError("no timings were returned")
    c = core(meds, k)
    spread = relative_spread(c)
    return {"ms": float(np.median(c)), "spread": spread, "n": int(sum(len(t) for t in per_process)),
            "per_process": meds, "stable": bool(spread <= max_spread)}


# ============================================================================ control logic
#: runs one group in one process: (models, settings, group index) -> per model, its call times (ms)
GroupRunner = Callable[[Sequence[dict], dict, int], list]


def run_protocol(models: Sequence[dict], settings: dict, runner: GroupRunner) -> list[dict]:
    """The protocol on prepared ``models`` (dicts with a ``key``); ``settings`` holds ``processes``,
    ``max_spread``, ``max_extra`` and ``seed``. Returns one :func:`summarise` dict per model."""
    times: list[list[list[float]]] = [[] for _ in models]
    k = int(settings["processes"])
    group = 0
    for _ in range(k):
        _run_group(models, list(range(len(models))), settings, runner, group, times)
        group += 1

    def unsettled(i: int) -> bool:
        return relative_spread(core([float(np.median(t)) for t in times[i]], k)) > settings["max_spread"]

    for _ in range(int(settings["max_extra"])):
        todo = [i for i in range(len(models)) if unsettled(i)]
        if not todo:
            break
        _run_group(models, todo, settings, runner, group, times)
        group += 1
    return [summarise(t, settings["max_spread"], k) for t in times]


def _run_group(models, idx, settings, runner, group, times) -> None:
    order = list(idx)
    random.Random(int(settings.get("seed", 0)) * 1000003 + group).shuffle(order)
    out = runner([models[i] for i in order], settings, group)
    if len(out) != len(order):
        raise ProtocolError(f"a worker returned {len(out)} timings for {len(order)} models")
    for i, t in zip(order, out):
        t = [float(x) for x in t]
        if not t or not all(np.isfinite(x) and x > 0 for x in t):
            raise ProtocolError(f"model {models[i].get('key', i)!r}: the worker returned invalid call times {t[:5]}")
        times[i].append(t)


# ============================================================================ timing processes
def available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return set(range(os.cpu_count() or 1))


def least_busy_cpus(k: int = 1, interval: float = 0.2) -> list[int]:
    """The ``k`` CPUs with the lowest utilisation over ``interval`` seconds (``/proc/stat``)."""
    avail = sorted(available_cpus())

    def snap() -> dict[int, tuple[int, int]]:
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        parts = line.split()
                        vals = [int(x) for x in parts[1:]]
                        out[int(parts[0][3:])] = (sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0))
        except OSError:
            pass
        return out

    a = snap()
    time.sleep(interval)
    b = snap()
    busy = {}
    for c in avail:
        tot = b[c][0] - a[c][0] if c in a and c in b else 0
        busy[c] = 1.0 - (b[c][1] - a[c][1]) / tot if tot > 0 else 0.0
    return sorted(avail, key=lambda c: (busy[c], c))[: max(1, k)]


def die_with_parent(parent: int) -> None:  # pragma: no cover - runs in a timing process
    """Ask the kernel to kill this process when its parent dies (Linux); exit now if it already has.
    Elsewhere :func:`time_group` checks the parent between two models."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux
        pass
    if os.getppid() != parent:
        raise SystemExit(3)


def group_in_subprocess(models: Sequence[dict], settings: dict, group: int, script: str | None = None) -> list:
    """Time ``models`` in one fresh Python process running ``script`` (default: this file)."""
    pin = settings.get("pin")
    if pin == "auto":
        pin = least_busy_cpus(int(settings["threads"]))
    request = {k: settings[k] for k in ("backend", "threads", "warmup", "repeats", "min_time_s", "clock")}
    request.update({"pin": list(pin) if pin else None, "seed": int(settings.get("seed", 0)) + group,
                    "models": list(models)})
    timeout = float(settings.get("timeout_s", 600.0))
    proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE, os.path.abspath(script or __file__), str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(json.dumps(request), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProtocolError(f"a timing worker ran past timeout_s={timeout}s on {len(models)} model(s); "
                            "raise timeout_s or lower chunk/repeats") from None
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, SIGTERM, timeout): the worker goes too
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = (err or "").strip().splitlines()[-15:]
        raise ProtocolError(f"timing worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
    try:
        return json.loads(out.strip().splitlines()[-1])["times"]
    except (json.JSONDecodeError, IndexError, KeyError):
        raise ProtocolError(f"timing worker wrote no result; stderr: {(err or '')[-2000:]}") from None


def time_calls(call: Callable[[], Any], warmup: int, repeats: int, min_time_s: float, clock: str = "wall") -> list[float]:
    """Call times in ms. ``clock="cpu"``: CPU time of this process (immune to being preempted by
    other programs; equal to the wall time of a single-threaded call on an idle machine)."""
    for _ in range(warmup):
        call()
    out: list[float] = []
    pc = time.process_time_ns if clock == "cpu" else time.perf_counter_ns
    start = time.perf_counter_ns()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while len(out) < repeats or (min_time_s > 0 and (time.perf_counter_ns() - start) < min_time_s * 1e9 and len(out) < 20 * repeats):
            t0 = pc()
            call()
            out.append((pc() - t0) / 1e6)
    finally:
        if gc_was:
            gc.enable()
    return out


def time_group(req: dict) -> list[list[float]]:
    """The body of a timing process: every model of ``req`` timed in turn."""
    if req.get("pin"):
        os.sched_setaffinity(0, set(req["pin"]))
    rng = np.random.default_rng(req.get("seed", 0))
    parent = req.get("parent")  # set by the timing process's entry point
    times: list[list[float]] = []
    for m in req["models"]:
        if parent is not None and os.getppid() != parent:  # the parent died (no PR_SET_PDEATHSIG here)
            raise SystemExit(3)
        if req["backend"] == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = int(req["threads"])
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sess = ort.InferenceSession(m["path"], sess_options=so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: rng.standard_normal(m["shape"]).astype(np.float32)}
            times.append(time_calls(lambda: sess.run(None, feed), req["warmup"], req["repeats"], req["min_time_s"], req["clock"]))
            del sess
        else:
            import torch

            from hwnas.predictors.measure.models import ModelSpec

            torch.set_num_threads(int(req["threads"]))
            module, shape = ModelSpec(m["factory"], m["kwargs"], m.get("key", "")).build()
            x = torch.randn(*shape)
            with torch.inference_mode():
                times.append(time_calls(lambda: module(x), req["warmup"], req["repeats"], req["min_time_s"], req["clock"]))
            del module
    return times


# ============================================================================ on a remote device
def platform_info() -> dict:
    """What the measuring machine is: OS, CPU, Python and ONNX Runtime versions, host name."""
    import platform

    info = {"system": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a torch-only device
        info["onnxruntime"] = None
    return info


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts; a zombie, killed but not reaped, does not). The same
    rule as :func:`hwnas.predictors.assets.pid_alive`, kept here because this file runs on the device without hwnas."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (PermissionError: another user's)
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (macOS): os.kill said it exists
        return True


def remove_dead_workdirs(root: str | None = None, prefix: str = "hwnas-measure-") -> list[str]:
    """Remove the ``<prefix><pid>-*`` temporary folders of processes that no longer run (a worker killed mid-task
    leaves its models behind, megabytes each, on a device whose /tmp may be memory); returns them. Self-contained
    (this file runs on the device): another user's process counts as alive."""
    import shutil

    root = root or tempfile.gettempdir()
    gone = []
    try:
        names = os.listdir(root)
    except OSError:
        return gone
    for name in names:
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def measure_on_device(models: Sequence[dict], settings: dict, script: str) -> dict:
    """A Dask task: time ONNX ``models`` (dicts with ``onnx`` bytes, ``shape`` and ``key``) with the
    whole protocol on the machine it runs on. ``script`` is the text of this file: the timing
    processes run it. Returns ``{"results": [summarise dicts], "platform": platform_info()}``; the
    temporary folder is removed on every exit path, and those of killed workers before it is made."""
    remove_dead_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"hwnas-measure-{os.getpid()}-") as d:
        path = os.path.join(d, "worker.py")
        with open(path, "w") as f:
            f.write(script)
        prepared = []
        for i, m in enumerate(models):
            p = os.path.join(d, f"model{i}.onnx")
            with open(p, "wb") as f:
                f.write(m["onnx"])
            prepared.append({"path": p, "shape": list(m["shape"]), "key": m.get("key", str(i))})
        results = run_protocol(prepared, settings, lambda ms, s, g: group_in_subprocess(ms, s, g, script=path))
    return {"results": results, "platform": platform_info()}


if __name__ == "__hwnas_measure_worker__":  # pragma: no cover - a timing process
    die_with_parent(int(sys.argv[2]))
    _request = dict(json.loads(sys.stdin.read()), parent=int(sys.argv[2]))
    sys.stdout.write(json.dumps({"times": time_group(_request)}) + "\n")
    sys.stdout.flush()
