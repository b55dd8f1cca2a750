"""Timing networks on this machine: a protocol that stays reproducible on a noisy, shared CPU.

The protocol (see :class:`MeasureConfig`):

* every model is timed in several **fresh worker processes** ("repeat groups"); a process runs
  ``warmup`` untimed calls then ``repeats`` timed calls (at least ``min_time_s`` of them) and keeps
  the **median** call time;
* the result is the median over the processes; the relative spread across processes,
  ``(max - min) / median``, flags outliers: a model whose spread exceeds ``max_spread`` gets more
  processes (at most ``max_extra``) until ``processes`` of them agree within ``max_spread``; the
  result is the median of the ``processes`` process medians closest to the overall median (so an
  outlier process is out-voted, not averaged in);
* processes can be pinned to CPUs (``pin=[1]``, or ``pin="auto"``: the least busy CPU right now);
* each process times a chunk of models in a shuffled order, so a burst of load from another
  program does not hit the same model in every process, and the start-up cost is shared.

Backends: ``onnxruntime`` (CPU execution provider, ``threads`` intra-op threads; the module is
exported to ONNX in a temporary folder, atomically) and ``torch`` (eager, ``torch.set_num_threads``).
With one pinned thread ONNX Runtime is by far the steadier of the two on a shared machine.

The worker runs this very file through :func:`runpy.run_path`, so it imports neither ``hwnas`` nor
``torch`` when it only needs ONNX Runtime (start-up ≈ 0.4 s instead of ≈ 2 s).
Models travel to a worker as a :class:`ModelSpec`: a factory ``"package.module:function"`` plus JSON
keyword arguments; the factory returns ``(module, input_shape)``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from hwnas.spaces.errors import UserError

try:  # the worker runs this file without its package
    from .base import Predictor
except ImportError:  # pragma: no cover - worker process only
    Predictor = object  # type: ignore[misc,assignment]

BACKENDS = ("onnxruntime", "torch")
_BACKEND_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "eager": "torch"}


class MeasureError(UserError, RuntimeError):
    """A measurement could not be taken; the message says which model and why."""


# ============================================================================ configuration
@dataclass(frozen=True)
class MeasureConfig:
    """Settings of the timing protocol (all recorded with every stored measurement)."""

    backend: str = "onnxruntime"
    threads: int = 1
    processes: int = 3
    warmup: int = 5
    repeats: int = 10
    min_time_s: float = 0.0
    batch_size: int = 1
    pin: Any = None  # None, "auto", or a list of CPU ids
    clock: str = "auto"  # "wall", "cpu" (process CPU time; single thread only), "auto": cpu if threads == 1
    overlap: bool = False  # export the next chunk while this one is timed (faster, but the export
    # competes with the timed process for caches and memory bandwidth: 3.5 % vs 0.4 % test-retest difference)
    max_spread: float = 0.15
    max_extra: int = 3
    chunk: int = 8
    timeout_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        b = _BACKEND_ALIASES.get(str(self.backend).lower())
        if b is None:
            raise ValueError(f"backend={self.backend!r} is unknown; use one of {list(BACKENDS)}")
        object.__setattr__(self, "backend", b)
        for name, lo in (("threads", 1), ("processes", 1), ("warmup", 0), ("repeats", 1), ("batch_size", 1),
                         ("max_extra", 0), ("chunk", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
            object.__setattr__(self, name, int(v))
        if not (self.max_spread > 0):
            raise ValueError(f"max_spread={self.max_spread!r} must be > 0 (relative spread, e.g. 0.15)")
        clock = str(self.clock).lower()
        if clock == "auto":
            clock = "cpu" if self.threads == 1 else "wall"
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock={self.clock!r} is unknown; use 'wall', 'cpu' or 'auto'")
        if clock == "cpu" and self.threads != 1:
            raise ValueError(f"clock='cpu' sums the CPU time of all threads, so it needs threads=1 (got threads={self.threads}); "
                             "use clock='wall' with several threads")
        object.__setattr__(self, "clock", clock)
        if not isinstance(self.overlap, (bool, np.bool_)):
            raise ValueError(f"overlap={self.overlap!r} must be true or false")
        object.__setattr__(self, "overlap", bool(self.overlap))
        if self.min_time_s < 0:
            raise ValueError(f"min_time_s={self.min_time_s!r} must be >= 0")
        pin = self.pin
        if isinstance(pin, str):
            if pin.lower() in ("", "none", "off"):
                pin = None
            elif pin.lower() == "auto":
                pin = "auto"
            else:
                try:
                    pin = tuple(int(x) for x in pin.replace(" ", "").split(",") if x)
                except ValueError:
                    raise ValueError(f"pin={self.pin!r} must be 'auto', 'none' or CPU ids such as '1' or '0,1'") from None
        elif pin is not None:
            try:
                pin = tuple(int(x) for x in pin)
            except (TypeError, ValueError):
                raise ValueError(f"pin={self.pin!r} must be 'auto', None or a list of CPU ids") from None
        if isinstance(pin, tuple):
            if not pin:
                pin = None
            else:
                avail = _available_cpus()
                bad = [c for c in pin if c not in avail]
                if bad:
                    raise ValueError(f"pin={list(pin)} names CPU(s) {bad} this process may not use; allowed: {sorted(avail)}")
        object.__setattr__(self, "pin", pin)

    def settings(self) -> dict:
        """The protocol as a JSON-able dict (stored with each measurement)."""
        d = asdict(self)
        d["pin"] = list(self.pin) if isinstance(self.pin, tuple) else self.pin
        return d

    def fingerprint(self) -> dict:
        """What makes two measurements comparable: same backend, threads and batch size."""
        return {"backend": self.backend, "threads": self.threads, "batch_size": self.batch_size, "clock": self.clock}

    def replace(self, **kw: Any) -> "MeasureConfig":
        d = asdict(self)
        d.update(kw)
        return MeasureConfig(**d)


def _available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return set(range(os.cpu_count() or 1))


def least_busy_cpus(k: int = 1, interval: float = 0.2) -> list[int]:
    """The ``k`` CPUs with the lowest utilisation over ``interval`` seconds (``/proc/stat``)."""
    avail = sorted(_available_cpus())

    def snap() -> dict[int, tuple[int, int]]:
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        parts = line.split()
                        vals = [int(x) for x in parts[1:]]
                        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                        out[int(parts[0][3:])] = (sum(vals), idle)
        except OSError:
            pass
        return out

    a = snap()
    time.sleep(interval)
    b = snap()
    busy = {}
    for c in avail:
        if c in a and c in b:
            tot = b[c][0] - a[c][0]
            idle = b[c][1] - a[c][1]
            busy[c] = 1.0 - idle / tot if tot > 0 else 0.0
        else:
            busy[c] = 0.0
    return sorted(avail, key=lambda c: (busy[c], c))[: max(1, k)]


# ============================================================================ models
@dataclass(frozen=True)
class ModelSpec:
    """A network to time: ``factory`` ("pkg.module:function") called with ``kwargs`` returns
    ``(torch.nn.Module, input_shape)``. ``key`` names it in messages."""

    factory: str
    kwargs: dict = field(default_factory=dict)
    key: str = ""

    def build(self) -> tuple[Any, tuple[int, ...]]:
        fn = _import_callable(self.factory)
        out = fn(**self.kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise MeasureError(f"factory {self.factory} must return (module, input_shape); got {type(out).__name__}")
        module, shape = out
        return module, tuple(int(s) for s in shape)

    def to_json(self) -> dict:
        return {"factory": self.factory, "kwargs": self.kwargs, "key": self.key}


def _import_callable(path: str) -> Callable:
    import importlib

    if ":" not in path:
        raise MeasureError(f"factory={path!r} must look like 'package.module:function'")
    mod, name = path.split(":", 1)
    try:
        obj = importlib.import_module(mod)
    except ImportError as exc:
        raise MeasureError(f"factory={path!r}: module {mod!r} cannot be imported ({exc})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise MeasureError(f"factory={path!r}: {mod!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def tiny_cnn(width: int = 8, depth: int = 2, resolution: int = 32, batch_size: int = 1, seed: int = 0):
    """A small conv net (tests, smoke runs): ``depth`` conv-BN-ReLU layers of ``width`` channels."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers).eval(), (batch_size, 3, resolution, resolution)


def space_from_config(config: dict | str) -> Any:
    """A space from its :meth:`SearchSpace.to_config` dict (``_target_`` + kwargs) or a registry name."""
    if isinstance(config, str):
        from hwnas.spaces import create_space

        return create_space(config)
    cfg = dict(config)
    target = cfg.pop("_target_", None)
    if not target:
        raise MeasureError("space config has no _target_; pass space.to_config()")
    mod, _, name = target.rpartition(".")
    return _import_callable(f"{mod}:{name}")(**cfg)


def arch_model(space: dict | str, arch: dict | str, batch_size: int = 1, seed: int = 0):
    """Factory of a subnet: the static network of ``arch`` (``hwnas.supernet.static.build_static``)
    with random weights, input ``(batch_size, 3, r, r)``."""
    import torch

    from hwnas.supernet.static import build_static

    sp = space_from_config(space)
    a = sp.validate(arch)
    torch.manual_seed(seed)
    module = build_static(sp, a).eval()
    return module, (int(batch_size), 3, int(a.r), int(a.r))


def arch_spec(space: Any, arch: Any, batch_size: int = 1) -> ModelSpec:
    """The :class:`ModelSpec` of one arch of ``space`` (canonicalised)."""
    a = space.validate(arch)
    return ModelSpec(
        "hwnas.predictors.measure:arch_model",
        {"space": space.to_config(), "arch": a.to_dict(), "batch_size": int(batch_size)},
        key=a.to_str() if hasattr(a, "to_str") else str(a),
    )


def export_onnx(module: Any, input_shape: Sequence[int], path: str | os.PathLike, opset: int = 17) -> str:
    """Export ``module`` (eval mode) to ONNX at ``path``, atomically (temp file + ``os.replace``)."""
    import torch

    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".export.", suffix=".onnx")
    os.close(fd)
    module = module.eval()
    x = torch.randn(*input_shape)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, (x,), tmp, input_names=["input"], output_names=["output"],
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
            except TypeError:  # pragma: no cover - very old torch without the dynamo flag
                torch.onnx.export(module, (x,), tmp, input_names=["input"], output_names=["output"], opset_version=opset)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ============================================================================ results
@dataclass
class Measurement:
    """Result of the protocol for one model (milliseconds)."""

    ms: float  # median over the agreeing processes (see :func:`core`)
    spread: float  # (max - min) / median over those processes
    n: int  # timed calls in total
    per_process: list[float]  # median call time of every process, outliers included
    stable: bool  # spread <= max_spread at the end

    def to_dict(self) -> dict:
        return asdict(self)


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


def summarise(per_process: Sequence[Sequence[float]], max_spread: float, k: int | None = None) -> Measurement:
    """Median of each process's call times; the result is the median over the ``k`` process medians
    closest to the median of all (all of them by default), their relative spread flags instability."""
    meds = [float(np.median(t)) for t in per_process if len(t)]
    if not meds:
        raise MeasureError("no timings were returned")
    c = core(meds, k)
    spread = relative_spread(c)
    return Measurement(
        ms=float(np.median(c)),
        spread=spread,
        n=int(sum(len(t) for t in per_process)),
        per_process=meds,
        stable=bool(spread <= max_spread),
    )


#: runs one repeat group: (prepared models, config, group index) -> per model list of call times (ms)
GroupRunner = Callable[[Sequence[dict], MeasureConfig, int], list[list[float]]]


def run_protocol(models: Sequence[dict], cfg: MeasureConfig, runner: GroupRunner) -> list[Measurement]:
    """The protocol's control logic on already prepared models (see the module doc).

    ``cfg.processes`` groups time every model; then, while some model's ``cfg.processes`` most
    central process medians spread more than ``cfg.max_spread``, one more group times those models
    (at most ``cfg.max_extra`` more). ``runner`` times a group in one process; tests inject a fake one.
    """
    times: list[list[list[float]]] = [[] for _ in models]
    group = 0
    todo = list(range(len(models)))
    for _ in range(cfg.processes):
        _run_group(models, todo, cfg, runner, group, times)
        group += 1
    k = cfg.processes

    def unsettled(i: int) -> bool:
        return relative_spread(core([float(np.median(t)) for t in times[i]], k)) > cfg.max_spread

    for _ in range(cfg.max_extra):
        todo = [i for i in range(len(models)) if unsettled(i)]
        if not todo:
            break
        _run_group(models, todo, cfg, runner, group, times)
        group += 1
    return [summarise(t, cfg.max_spread, k) for t in times]


def _run_group(models, idx, cfg, runner, group, times) -> None:
    order = list(idx)
    random.Random(cfg.seed * 1000003 + group).shuffle(order)
    out = runner([models[i] for i in order], cfg, group)
    if len(out) != len(order):
        raise MeasureError(f"a worker returned {len(out)} timings for {len(order)} models")
    for i, t in zip(order, out):
        t = [float(x) for x in t]
        if not t or not all(math.isfinite(x) and x > 0 for x in t):
            raise MeasureError(f"model {models[i].get('key', i)!r}: the worker returned invalid call times {t[:5]}")
        times[i].append(t)


# ============================================================================ the worker process
_WORKER_CODE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__hwnas_measure_worker__')"


def subprocess_runner(models: Sequence[dict], cfg: MeasureConfig, group: int) -> list[list[float]]:
    """Time ``models`` in one fresh Python process (the default :data:`GroupRunner`)."""
    pin = cfg.pin
    if pin == "auto":
        pin = least_busy_cpus(cfg.threads)
    request = {
        "backend": cfg.backend,
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "min_time_s": cfg.min_time_s,
        "pin": list(pin) if pin else None,
        "clock": cfg.clock,
        "seed": cfg.seed + group,
        "models": list(models),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER_CODE, os.path.abspath(__file__)],
            input=json.dumps(request), capture_output=True, text=True, timeout=cfg.timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise MeasureError(f"a timing worker ran past timeout_s={cfg.timeout_s}s on {len(models)} model(s); "
                           "raise timeout_s or lower chunk/repeats") from None
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-15:]
        raise MeasureError(f"timing worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
    try:
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise MeasureError(f"timing worker wrote no result; stderr: {proc.stderr[-2000:]}") from None
    return reply["times"]


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int, min_time_s: float, clock: str = "wall") -> list[float]:
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


def _worker_main() -> None:  # pragma: no cover - runs in the child process
    req = json.loads(sys.stdin.read())
    if req.get("pin"):
        os.sched_setaffinity(0, set(req["pin"]))
    np_rng = np.random.default_rng(req.get("seed", 0))
    times: list[list[float]] = []
    if req["backend"] == "onnxruntime":
        import onnxruntime as ort

        for m in req["models"]:
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(req["threads"])
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sess = ort.InferenceSession(m["path"], sess_options=so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            feed = {name: np_rng.standard_normal(m["shape"]).astype(np.float32)}
            times.append(_time_calls(lambda: sess.run(None, feed), req["warmup"], req["repeats"], req["min_time_s"], req.get("clock", "wall")))
            del sess
    else:
        import torch

        torch.set_num_threads(int(req["threads"]))
        for m in req["models"]:
            spec = ModelSpec(m["factory"], m["kwargs"], m.get("key", ""))
            module, shape = spec.build()
            module.eval()
            x = torch.randn(*shape)
            with torch.inference_mode():
                times.append(_time_calls(lambda: module(x), req["warmup"], req["repeats"], req["min_time_s"], req.get("clock", "wall")))
            del module
    sys.stdout.write(json.dumps({"times": times}) + "\n")
    sys.stdout.flush()


# ============================================================================ high level
class _torch_threads:
    """Run torch with ``n`` threads inside the block (building and tracing with the default thread
    count is 20-30x slower on a loaded machine, because the threads wait for each other)."""

    def __init__(self, n: int = 1) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.old)


def _prepare(specs: Sequence[ModelSpec], cfg: MeasureConfig, workdir: str, ids: Sequence[int] | None = None) -> list[dict]:
    out = []
    for i, s in zip(ids if ids is not None else range(len(specs)), specs):
        if cfg.backend == "onnxruntime":
            with _torch_threads(1):
                module, shape = s.build()
                path = os.path.join(workdir, f"model{i}.onnx")
                export_onnx(module, shape, path)
            out.append({"path": path, "shape": list(shape), "key": s.key})
        else:
            out.append(s.to_json())
    return out


def measure_specs(
    specs: Sequence[ModelSpec],
    cfg: MeasureConfig | None = None,
    runner: GroupRunner | None = None,
    on_result: Callable[[int, Measurement], None] | None = None,
    progress: Any = None,
) -> list[Measurement]:
    """Time every model of ``specs`` with the protocol, ``cfg.chunk`` models per worker process.

    ``on_result(i, measurement)`` is called as soon as model ``i`` is done (the store commits there);
    ``progress`` is anything with ``update(n)`` (a tqdm bar).
    """
    cfg = cfg or MeasureConfig()
    runner = runner or subprocess_runner
    results: list[Measurement | None] = [None] * len(specs)
    chunks = [list(range(s, min(s + cfg.chunk, len(specs)))) for s in range(0, len(specs), cfg.chunk)]
    with tempfile.TemporaryDirectory(prefix="hwnas-measure-") as workdir:

        def prep(idx: list[int]) -> list[dict]:
            return _prepare([specs[i] for i in idx], cfg, workdir, idx)

        pool = None
        if cfg.overlap and cfg.backend == "onnxruntime" and len(chunks) > 1:
            # building + exporting the next chunk runs beside the timing of this one
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending = pool.submit(prep, chunks[0]) if pool else None
            for c, idx in enumerate(chunks):
                models = pending.result() if pending is not None else prep(idx)
                pending = pool.submit(prep, chunks[c + 1]) if pool and c + 1 < len(chunks) else None
                for i, m in zip(idx, run_protocol(models, cfg, runner)):
                    results[i] = m
                    if on_result is not None:
                        on_result(i, m)
                for mdl in models:
                    if "path" in mdl and os.path.exists(mdl["path"]):
                        os.unlink(mdl["path"])
                if progress is not None:
                    progress.update(len(idx))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


def measure_module(module: Any, input_shape: Sequence[int], cfg: MeasureConfig | None = None,
                   runner: GroupRunner | None = None) -> Measurement:
    """Time an arbitrary ``torch.nn.Module`` (ONNX Runtime backend: it is exported once, then timed
    in worker processes). The torch backend needs a :class:`ModelSpec` factory instead."""
    cfg = cfg or MeasureConfig()
    if cfg.backend != "onnxruntime":
        raise MeasureError("measure_module times through ONNX Runtime; for backend='torch' pass a ModelSpec "
                           "(factory 'pkg.module:function' + kwargs) to measure_specs, since worker processes rebuild the module")
    with tempfile.TemporaryDirectory(prefix="hwnas-measure-") as d, _torch_threads(1):
        path = export_onnx(module, input_shape, os.path.join(d, "model.onnx"))
        return run_protocol([{"path": path, "shape": list(input_shape), "key": type(module).__name__}], cfg,
                            runner or subprocess_runner)[0]


def measure_archs(space: Any, archs: Iterable[Any], cfg: MeasureConfig | None = None, **kw: Any) -> list[Measurement]:
    """Time subnets of ``space`` end to end (input ``(batch_size, 3, r, r)``)."""
    cfg = cfg or MeasureConfig()
    return measure_specs([arch_spec(space, a, cfg.batch_size) for a in archs], cfg, **kw)


# ============================================================================ predictor
class MeasuredLatency(Predictor):
    """Latency (ms) measured on this machine on demand, cached in a :class:`MeasurementStore`.

    ``predict(archs)`` returns stored values and times only the archs not yet in the store (each one
    is committed as soon as it is measured, so an interrupted search loses nothing).

    Example (hydra)::

        latency:
          _target_: hwnas.predictors.measure.MeasuredLatency
          space: ofa_mbv3_w12
          device: local-ort-t1
          store: measurements.sqlite
    """

    metric = "latency_ms"

    def __init__(self, space: Any, device: str = "local", store: Any = None, backend: str = "onnxruntime",
                 threads: int = 1, processes: int = 3, repeats: int = 10, warmup: int = 5, batch_size: int = 1,
                 pin: Any = None, progress: bool = False, config: MeasureConfig | None = None,
                 runner: GroupRunner | None = None, **protocol: Any) -> None:
        from .store import MeasurementStore

        if isinstance(space, str):
            from hwnas.spaces import create_space

            space = create_space(space)
        self.space = space
        self.device = str(device)
        self.config = config or MeasureConfig(backend=backend, threads=threads, processes=processes, repeats=repeats,
                                              warmup=warmup, batch_size=batch_size, pin=pin, **protocol)
        if store is None:
            store = ":memory:"
        self.store = store if isinstance(store, MeasurementStore) else MeasurementStore(store)
        self.store.register_device(self.device, self.config)
        self.progress = progress
        self.runner = runner
        self.n_measured = 0

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        archs = [self.space.validate(a) for a in archs]
        space_name = self.space.name
        known = self.store.get_many(self.device, space_name, archs)
        out = np.full(len(archs), np.nan)
        todo: dict[Any, list[int]] = {}
        for i, a in enumerate(archs):
            if a in known:
                out[i] = known[a].value
            else:
                todo.setdefault(a, []).append(i)
        if todo:
            uniq = list(todo)
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(uniq), desc=f"measuring on {self.device}", unit="arch")

            def commit(j: int, m: Measurement) -> None:
                self.store.put(self.device, space_name, uniq[j], m, self.config)
                for i in todo[uniq[j]]:
                    out[i] = m.ms

            try:
                measure_archs(self.space, uniq, self.config, runner=self.runner, on_result=commit, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            self.n_measured += len(uniq)
        return out


if __name__ == "__hwnas_measure_worker__":  # pragma: no cover
    _worker_main()
