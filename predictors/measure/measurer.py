"""Measurers (who times the networks) and :class:`MeasuredLatency` (a predictor that measures on demand).

A measurer times a list of :class:`~hwnas.predictors.measure.models.ModelSpec` with the protocol and
calls ``on_result(i, measurement)`` as soon as model ``i`` is done, so the caller can commit it at
once. Two of them:

* :class:`LocalMeasurer` -- timing processes on this machine;
* :class:`~hwnas.predictors.measure.remote.DaskMeasurer` -- a remote device's Dask worker.

Exported ONNX files live in a temporary folder named ``hwnas-measure-<pid>-*`` that is removed on every
exit path (error, Ctrl-C, SIGTERM through the CLIs' handler); folders of killed runs (whose process is
gone) are removed by the next run (:func:`clean_stale_workdirs`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.predictors.base import Predictor

from . import worker
from .models import ModelSpec, arch_spec, prepare
from .protocol import GroupRunner, MeasureConfig, Measurement, run_protocol
from .store import MeasurementStore

WORKDIR_PREFIX = "hwnas-measure-"

OnResult = Callable[[int, Measurement], None]


def clean_stale_workdirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove ``hwnas-measure-<pid>-*`` folders of processes that no longer exist; returns them
    (:func:`~hwnas.predictors.measure.worker.remove_dead_workdirs`, which a remote device runs too)."""
    from .worker import remove_dead_workdirs

    return [Path(p) for p in remove_dead_workdirs(os.fspath(root) if root is not None else None, WORKDIR_PREFIX)]


class workdir:
    """A fresh ``hwnas-measure-<pid>-*`` temporary folder, removed when the block ends (any way)."""

    def __enter__(self) -> str:
        clean_stale_workdirs()
        self.path = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
        return self.path

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class LocalMeasurer:
    """The protocol on this machine: ``config.chunk`` models per timing process (4 by default: the
    models of a chunk are stored as soon as their processes are done)."""

    where = "local"

    def __init__(self, config: MeasureConfig | None = None, runner: GroupRunner | None = None) -> None:
        self.config = config or MeasureConfig()
        self.runner = runner
        self._platform: dict | None = None

    @property
    def platform(self) -> dict:
        if self._platform is None:
            self._platform = worker.platform_info()
        return self._platform

    def measure(self, specs: Sequence[ModelSpec], on_result: OnResult | None = None, progress: Any = None) -> list[Measurement]:
        cfg = self.config
        results: list[Measurement | None] = [None] * len(specs)
        chunks = [list(range(s, min(s + cfg.chunk, len(specs)))) for s in range(0, len(specs), cfg.chunk)]
        with workdir() as wd:
            pool = None
            if cfg.overlap and cfg.backend == "onnxruntime" and len(chunks) > 1:
                from concurrent.futures import ThreadPoolExecutor  # build + export the next chunk meanwhile

                pool = ThreadPoolExecutor(max_workers=1)

            def prep(idx: list[int]) -> list[dict]:
                return prepare([specs[i] for i in idx], cfg, wd, idx)

            try:
                pending = pool.submit(prep, chunks[0]) if pool else None
                for c, idx in enumerate(chunks):
                    models = pending.result() if pending is not None else prep(idx)
                    pending = pool.submit(prep, chunks[c + 1]) if pool and c + 1 < len(chunks) else None
                    for i, m in zip(idx, run_protocol(models, cfg, self.runner)):
                        results[i] = m
                        if on_result is not None:
                            on_result(i, m)
                    for mdl in models:
                        if "path" in mdl:
                            Path(mdl["path"]).unlink(missing_ok=True)
                    if progress is not None:
                        progress.update(len(idx))
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass


def measure_specs(specs: Sequence[ModelSpec], cfg: MeasureConfig | None = None, runner: GroupRunner | None = None,
                  on_result: OnResult | None = None, progress: Any = None) -> list[Measurement]:
    """Time ``specs`` on this machine (see :class:`LocalMeasurer`)."""
    return LocalMeasurer(cfg, runner).measure(specs, on_result, progress)


def measure_module(module: Any, input_shape: Sequence[int], cfg: MeasureConfig | None = None,
                   runner: GroupRunner | None = None) -> Measurement:
    """Time an arbitrary ``torch.nn.Module`` through ONNX Runtime (exported once, timed in worker
    processes). The eager backend needs a :class:`ModelSpec` factory, since its workers rebuild the module."""
    from hwnas.supernet.onnx import export_onnx

    from hwnas.predictors.threads import torch_threads
    from .protocol import MeasureError

    cfg = cfg or MeasureConfig()
    if cfg.backend != "onnxruntime":
        raise MeasureError("measure_module times through ONNX Runtime; for backend='torch' pass a ModelSpec "
                           "(factory 'pkg.module:function' + kwargs) to measure_specs, since worker processes rebuild the module")
    with workdir() as d, torch_threads(1):
        path = export_onnx(module, input_shape, os.path.join(d, "model.onnx"), dynamic="none")
        return run_protocol([{"path": str(path), "shape": list(input_shape), "key": type(module).__name__}], cfg, runner)[0]


def measure_archs(space: Any, archs: Sequence[Any], cfg: MeasureConfig | None = None, **kw: Any) -> list[Measurement]:
    """Time subnets of ``space`` end to end on this machine (input ``(batch_size, 3, r, r)``)."""
    cfg = cfg or MeasureConfig()
    return measure_specs([arch_spec(space, a, cfg.batch_size) for a in archs], cfg, **kw)


def make_measurer(config: MeasureConfig, scheduler: str | None = None, resource: str = "hwnas-device",
                  runner: GroupRunner | None = None, **remote: Any) -> Any:
    """A :class:`LocalMeasurer`, or a Dask one when ``scheduler`` (``tcp://host:8786``) is given."""
    if scheduler:
        from .remote import DaskMeasurer

        return DaskMeasurer(config, scheduler, resource, **remote)
    return LocalMeasurer(config, runner)


class MeasuredLatency(Predictor):
    """Latency (ms) measured on demand, on this machine or on a remote device's Dask worker
    (``scheduler=tcp://host:8786``, ``resource=hwnas-device``), cached in a :class:`MeasurementStore`.

    ``predict(archs)`` returns stored values and times only the archs not yet in the store; each is
    committed as soon as it is measured (with the protocol and the measuring machine's platform), so an
    interrupted search loses nothing. ``identity`` names the measurer: the device and its protocol.
    Protocol settings (``backend``, ``threads``, ``processes``, ...) are :class:`MeasureConfig`'s fields.
    """

    metric = "latency_ms"
    kind = "measured"

    def __init__(self, space: Any, device: str = "local", store: Any = None, progress: bool = False,
                 config: MeasureConfig | None = None, runner: GroupRunner | None = None, scheduler: str | None = None,
                 resource: str = "hwnas-device", wait_s: float = 60.0, **protocol: Any) -> None:
        if isinstance(space, str):
            from hwnas.spaces import create_space

            space = create_space(space)
        self.space = space
        self.device = self.device_name = str(device)
        self.config = config or MeasureConfig(**protocol)  # backend, threads, processes, ...: MeasureConfig's fields
        self.store = store if isinstance(store, MeasurementStore) else MeasurementStore(store if store is not None else ":memory:")
        self.measurer = make_measurer(self.config, scheduler, resource, runner, wait_s=wait_s)
        self.store.register_device(self.device, self.config,
                                   self.measurer.platform if isinstance(self.measurer, LocalMeasurer) else None)
        self.progress = progress
        self.n_measured = 0

    @property
    def identity(self) -> dict:
        return {"device": self.device, "protocol": self.config.fingerprint(), "space": self.space.name}

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        from hwnas.spaces.io import arch_key

        archs = [self.space.validate(a) for a in archs]
        keys = [arch_key(self.space, a) for a in archs]
        known = {k: r.value for k, r in self.store.get_many(self.device, self.space.name, keys).items()}
        todo = [k for k in dict.fromkeys(keys) if k not in known]
        if todo:
            values = measure_into_store(self.store, self.device, self.space, [self.space.validate(k) for k in todo],
                                        self.measurer, progress=self.progress)
            known.update(zip(todo, values))
            self.n_measured += len(todo)
        return np.array([known[k] for k in keys], dtype=float)

    def close(self) -> None:
        self.measurer.close()


def measure_into_store(store: MeasurementStore, device: str, space: Any, archs: Sequence[Any], measurer: Any,
                       progress: bool | Any = False) -> list[float]:
    """Measure ``archs`` with ``measurer`` and commit each to ``store`` as it finishes (with the protocol
    and the measuring machine's platform); returns their latencies (ms) in order."""
    from hwnas.spaces.io import arch_key

    cfg = measurer.config
    specs = [arch_spec(space, a, cfg.batch_size) for a in archs]
    out = [float("nan")] * len(specs)
    bar = progress
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc=f"measuring {space.name} on {device}", unit="arch")

    def commit(i: int, m: Measurement) -> None:
        platform = m.platform or measurer.platform
        store.check_platform(device, platform)
        store.put(device, space.name, arch_key(space, archs[i]), m, cfg, platform)
        out[i] = m.ms

    try:
        measurer.measure(specs, on_result=commit, progress=bar or None)
    finally:
        if progress is True:
            bar.close()
    return out
