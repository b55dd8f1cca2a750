"""``latency=adapted``: a proxy predictor adapted to the target from measured samples, built from a config."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from ..base import Predictor
from ..linear import LinearLatencyPredictor
from .core import AdaptationError, adapt
from .selection import select_samples

log = logging.getLogger("hwnas.adapt")


def _fit_device(space: Any, data: Any, device: str, field: str) -> LinearLatencyPredictor:
    if device not in data.devices:
        raise AdaptationError(f"{field}={device!r} is not a column of {data.name or 'the dataset'}; columns: {data.devices}")
    y = data[device]
    ok = np.isfinite(y)
    return LinearLatencyPredictor(space).fit([a for a, o in zip(data.archs, ok) if o], y[ok])


def _sample_count(k: Any) -> int | None:
    """``k`` as a number of samples (None: every row); anything else is one error naming the setting."""
    if k is None:
        return None
    try:
        n = int(k) if not isinstance(k, bool) and float(k) == int(float(k)) else None
    except (TypeError, ValueError, OverflowError):
        n = None
    if n is None or n < 1:
        raise AdaptationError(f"k={k!r} is not a number of samples; give latency.k=<a whole number >= 1> (e.g. latency.k=20) "
                              "or latency.k=null to take every row of target_samples")
    return n


class AdaptedLatency(Predictor):
    """Latency on a target device from a proxy predictor adapted with K target samples.

    proxy: a latency dataset (builtin name or CSV) holding ``proxy_device``, whose linear predictor
        (fitted on all its rows) is the proxy; or any fitted latency predictor of the space.
    target_samples: a CSV / dataset / filled plan with the target's measurements in ``target_device``.
        Rows with a value are the samples; if ``k`` is set and more rows have values, ``k`` of them are
        picked by ``selection`` (``auto``, ``stratified``, ``kmeans``, ``random``) -- that is how the benchmarks
        simulate measuring K archs. ``k=null`` takes every row (many rows: a direct fit, seconds).
    method: an adaptation method (``bayes``, ``adaproxy``, ``adaproxy_plain``, ``multiproxy``, ``proxy``).
    library: the device library for ``bayes`` (``auto``: the builtin dataset of the space; ``none``;
        a dataset name or CSV). The target device is always left out of it.
    sources: device columns of the proxy dataset used by ``multiproxy``.
    check_units: a CSV of target samples is checked like a filled plan (one positive value in ms per
        arch, in one unit some device can have: :func:`~hwnas.predictors.data.datasets.check_measured`);
        ``False`` skips the unit part, for a device beyond the bounds.
    """

    metric = "latency_ms"

    def __init__(self, space: Any, proxy: Any = "nasbench201", proxy_device: str = "pixel3", target_samples: Any = None,
                 target_device: str | None = None, k: int | None = 10, selection: str = "auto", method: str = "bayes",
                 library: Any = "auto", sources: Sequence[str] | None = None, seed: int = 0, mirror: str | None = None,
                 check_units: bool = True, **method_kwargs: Any) -> None:
        from hwnas.spaces import create_space

        from ..data import check_measured, is_user_file, load_dataset

        k = _sample_count(k)

        self.space = create_space(space) if isinstance(space, str) else space
        self.work = self._work_space(proxy, mirror)
        pdata = None
        if hasattr(proxy, "predict"):
            self.proxy = proxy
        else:
            pdata = self._check_space(load_dataset(str(proxy), space=self.work, mirror=mirror, field="proxy"), "proxy")
            self.proxy = _fit_device(self.work, pdata, proxy_device, "proxy_device")
        if target_samples is None:
            raise AdaptationError("target_samples: give a CSV (or dataset name, or a filled plan) with the measured target latencies")
        if not target_device:
            raise AdaptationError("target_device: name the column of target_samples that holds the target latencies")
        tdata = self._check_space(load_dataset(os.fspath(target_samples), space=self.work, mirror=mirror,
                                               field="target_samples"), "target_samples")
        if target_device not in tdata.devices:
            from hwnas.predictors.measure.plan import is_plan, plan_paths

            if is_plan(target_samples):  # a plan's device is in its plan.json, not a column of plan.csv
                raise AdaptationError(
                    f"target_device={target_device!r}: the plan {target_samples} was made for device {tdata.devices[0]!r} "
                    f"({plan_paths(target_samples)[1]}); set latency.target_device={tdata.devices[0]}, or make a plan for "
                    f"{target_device!r} (hwnas-measure --plan K --device {target_device} --out DIR)")
            raise AdaptationError(f"target_device={target_device!r} is not a column of {target_samples}; columns: {tdata.devices}")
        if is_user_file(target_samples):  # builtins are reference data; filled plans are checked when read
            check_measured(tdata, target_device, os.fspath(target_samples), "target_samples", check_units=check_units)
        yt = tdata[target_device]
        rows = np.flatnonzero(np.isfinite(yt))
        if k is not None and len(rows) < int(k):
            log.info(f"latency.k={k}, but {target_samples} holds {len(rows)} measured archs of {target_device}: all "
                        f"{len(rows)} are used (measure more, or set latency.k={len(rows)} to say so)")
        if k is not None and len(rows) > int(k):
            pick = select_samples(self.work, [tdata.archs[i] for i in rows], int(k), selection, seed, proxy=self.proxy)
            rows = rows[pick]
        self.sample_archs = [tdata.archs[i] for i in rows]
        self.sample_latencies = yt[rows]
        if method == "multiproxy":
            if pdata is None or not sources:
                raise AdaptationError("method=multiproxy needs proxy=<dataset> and sources=[device, ...] of it")
            method_kwargs["sources"] = {d: _fit_device(self.work, pdata, d, "sources") for d in sources}
        elif method == "bayes":
            method_kwargs.setdefault("library", library)
            method_kwargs.setdefault("mirror", mirror)
            method_kwargs["exclude"] = list(method_kwargs.get("exclude") or []) + [target_device]
        self.model = adapt(self.proxy, self.sample_archs, self.sample_latencies, method=method, **method_kwargs)
        self.target_device = self.device_name = target_device  # (the search logs report()'s summary: not here too)

    def _work_space(self, proxy: Any, mirror: str | None) -> Any:
        """The space the adaptation is fitted in: the builtin proxy dataset's own space when the search
        space is a restriction of it (a space reduced by ``hwnas-profile``: fewer blocks, depths or
        resolutions), so that the dataset's rows with the dropped choices still inform the fit; the
        search's archs are archs of it too. Otherwise the search space."""
        from ..data.datasets import fit_space

        if hasattr(proxy, "predict") or not hasattr(self.space, "is_restriction_of"):
            return self.space
        return fit_space(self.space, str(proxy), mirror, field="proxy")

    def _check_space(self, ds: Any, field: str) -> Any:
        """``ds`` as data of the work space (a filled plan of a reduced space: its archs are archs of it)."""
        if getattr(ds.space, "name", None) == getattr(self.work, "name", None):
            return ds
        if hasattr(ds.space, "is_restriction_of") and ds.space.is_restriction_of(self.work):
            return ds.within(self.work, field)
        raise AdaptationError(f"{field}: dataset space {ds.space.name!r} differs from the search space {self.space.name!r}")

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        return self.model.predict(archs)

    def report(self) -> dict:
        """What the run folder records about this predictor: the samples, the fit, the decision."""
        from hwnas.spaces.io import arch_key

        return {"target_device": self.target_device, "summary": self.model.summary(), "method": self.model.method,
                "info": self.model.to_dict()["info"],
                "samples": [{"arch": arch_key(self.work, a), "latency_ms": float(v)}
                            for a, v in zip(self.sample_archs, self.sample_latencies)]}
