"""The adapted predictor, the table of adaptation methods, and :func:`adapt`."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.spaces.errors import UserError

from ..base import Predictor
from ..linear import latency_features

log = logging.getLogger("hwnas.adapt")


class AdaptationError(UserError, ValueError):
    """Bad target samples or settings; the message names the field and the fix."""


class AdaptedPredictor(Predictor):
    """Target latency ``= features(arch) . weights + bias [+ gamma * (proxy(arch) - proxy_linear(arch))]``.

    Every method ends in this form: a per-position linear model of the target (the last term keeps a
    non-linear proxy's own detail, e.g. a lookup table's), never below ``floor`` (:func:`adapt` sets it to
    a hundredth of the fastest target sample: a linear model can extrapolate below zero for archs far from its
    samples, and a latency must be positive; above it the predictions are as fitted). ``info`` says how it was fitted;
    :meth:`summary` is one line for logs; :meth:`to_dict` / :meth:`from_dict` round-trip it as plain
    JSON data (no pickle)."""

    metric = "latency_ms"

    def __init__(self, space: Any, weights: np.ndarray, bias: float, method: str, info: dict | None = None,
                 proxy: Any = None, gamma: float = 0.0, proxy_w: np.ndarray | None = None, proxy_b: float = 0.0,
                 floor: float = 0.0) -> None:
        self.space = space
        self.weights = np.asarray(weights, dtype=float)
        self.bias = float(bias)
        self.method = method
        self.info = dict(info or {})
        self.proxy = proxy
        self.gamma = float(gamma)
        self.proxy_w = None if proxy_w is None else np.asarray(proxy_w, dtype=float)
        self.proxy_b = float(proxy_b)
        self.floor = float(floor)

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        X = latency_features(self.space, archs)
        out = X @ self.weights + self.bias
        if self.gamma and self.proxy is not None:
            out = out + self.gamma * (np.asarray(self.proxy.predict(archs), dtype=float) - (X @ self.proxy_w + self.proxy_b))
        return np.maximum(out, self.floor) if self.floor > 0 else out

    def summary(self) -> str:
        """One line: method, K, what the fit decided, SRCC on the samples."""
        i = self.info
        parts = [f"adapt[{self.method}] K={i.get('k', '?')}"]
        if "library" in i:
            parts.append(f"library={i['library']}")
        if "posterior" in i:
            parts.append("like " + ", ".join(f"{k} {v:.2f}" for k, v in list(i["posterior"].items())[:3]))
        if i.get("fallback"):
            parts.append(f"fallback: {i['fallback']}")
        if "srcc_samples_proxy" in i:
            macs = f", MACs {i['srcc_samples_macs']:.3f}" if "srcc_samples_macs" in i else ""
            parts.append(f"SRCC on samples: proxy {i['srcc_samples_proxy']:.3f}{macs} -> fit {i.get('srcc_samples_fit', float('nan')):.3f}")
        if "fit_s" in i:
            parts.append(f"{1000 * i['fit_s']:.0f} ms")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        from hwnas.spaces.io import space_spec

        return {"format": "hwnas.adapted/1", "space": space_spec(self.space), "method": self.method,
                "weights": self.weights.tolist(), "bias": self.bias, "gamma": self.gamma,
                "proxy_weights": None if self.proxy_w is None else self.proxy_w.tolist(), "proxy_bias": self.proxy_b,
                "floor": self.floor,
                "info": json.loads(json.dumps(self.info, default=_plain))}

    @classmethod
    def from_dict(cls, data: dict, proxy: Any = None, source: str = "adapted predictor") -> "AdaptedPredictor":
        """Rebuild from :meth:`to_dict` data (the space through the registry; nothing is instantiated
        from the data). A predictor that keeps a non-linear proxy's detail needs that ``proxy``."""
        from hwnas.spaces.io import space_from_spec

        if not isinstance(data, dict) or data.get("format") != "hwnas.adapted/1":
            raise AdaptationError(f"{source}: not an adapted predictor (format 'hwnas.adapted/1')")
        space = space_from_spec(data["space"], source)
        try:
            w = np.asarray(data["weights"], dtype=float)
            gamma = float(data.get("gamma") or 0.0)
            floor = float(data.get("floor") or 0.0)
            pw = data.get("proxy_weights")
        except (TypeError, ValueError, KeyError) as exc:
            raise AdaptationError(f"{source}: weights must be a list of numbers ({exc})") from None
        n = latency_features(space, space.sample(1, rng=0)).shape[1]
        if w.shape != (n,) or not np.isfinite(w).all():
            raise AdaptationError(f"{source}: weights must be {n} finite numbers for space {space.name!r}")
        if gamma and proxy is None:
            raise AdaptationError(f"{source}: this predictor refines a non-linear proxy; pass proxy= to load it")
        return cls(space, w, float(data["bias"]), str(data.get("method", "?")), data.get("info") or {}, proxy, gamma,
                   None if pw is None else np.asarray(pw, dtype=float), float(data.get("proxy_bias") or 0.0),
                   floor if np.isfinite(floor) and floor > 0 else 0.0)


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ============================================================================ the method table
METHODS: dict[str, Callable[..., AdaptedPredictor]] = {}


def register_method(name: str) -> Callable:
    """Decorator: register ``fn(proxy, archs, latencies, **kwargs) -> AdaptedPredictor`` as a method."""

    def deco(fn: Callable[..., AdaptedPredictor]) -> Callable[..., AdaptedPredictor]:
        if name in METHODS:
            raise ValueError(f"adaptation method {name!r} is registered twice")
        METHODS[name] = fn
        return fn

    return deco


def macs_of(space: Any, archs: Sequence[Any]) -> np.ndarray | None:
    """Multiply-accumulates of each arch (the simplest latency baseline), or None for a space without geometry."""
    from ..linear import cost_table

    T = cost_table(space)
    return None if T is None else latency_features(space, archs) @ (T[:, 0] + T[:, 1])


def check_samples(archs: Sequence[Any], latencies: Sequence[float]) -> np.ndarray:
    y = np.asarray(latencies, dtype=float).reshape(-1)
    if len(y) != len(archs):
        raise AdaptationError(f"target samples: {len(archs)} archs but {len(y)} latencies; give one latency per arch")
    if len(y) < 3:
        raise AdaptationError(f"target samples: got {len(y)}; adaptation needs at least 3 measured target archs")
    if not np.isfinite(y).all():
        raise AdaptationError("target samples: latencies contain NaN/inf; measure those archs again or drop them")
    if (y <= 0).any():
        raise AdaptationError(f"target samples: latencies must be > 0 ms (got {float(y.min())!r}); check the units and the column")
    return y


def adapt(proxy: Any, target_archs: Sequence[Any], target_latencies: Sequence[float], method: str = "bayes",
          **kwargs: Any) -> AdaptedPredictor:
    """Adapt a proxy-device latency predictor to a target device from K measured target samples.

    ``proxy``: any latency predictor of the space (``predict(archs)``; a fitted
    :class:`~hwnas.predictors.linear.LinearLatencyPredictor` is used exactly, any other is read through
    a linear fit over random archs). ``method``: a name in :data:`METHODS` (``bayes``, the default;
    ``adaproxy``, ``adaproxy_plain``, ``multiproxy``, ``proxy``). Method options go in ``kwargs``
    (e.g. ``library=`` for ``bayes``, ``sources=`` for ``multiproxy``). Returns an
    :class:`AdaptedPredictor` whose ``info`` and :meth:`~AdaptedPredictor.summary` say what was done.
    """
    if method not in METHODS:
        raise AdaptationError(f"method={method!r} is unknown; choose from {sorted(METHODS)}")
    y = check_samples(target_archs, target_latencies)
    from ..metrics import srcc
    from ..threads import limit_threads

    t0 = time.process_time()
    with limit_threads(1):
        model = METHODS[method](proxy, list(target_archs), y, **kwargs)
    model.info.setdefault("k", int(len(y)))
    model.floor = 0.01 * float(np.min(y))  # only what would be ~0 or below: rankings above it are kept
    model.info["fit_s"] = time.process_time() - t0
    try:
        model.info["srcc_samples_proxy"] = srcc(np.asarray(proxy.predict(list(target_archs)), dtype=float), y)
    except Exception:  # noqa: BLE001 - a proxy that cannot predict these archs: no summary figure
        pass
    macs = macs_of(model.space, list(target_archs))
    if macs is not None:
        model.info["srcc_samples_macs"] = srcc(macs, y)
    model.info["srcc_samples_fit"] = srcc(model.predict(list(target_archs)), y)
    log.debug(model.summary())  # (the commands say it once: the search's predictor report, the pipeline's stage)
    return model
