"""What every adaptation method is built on, per space.

* **Per-position features** (:func:`hwnas.predictors.linear.latency_features`): NAS-Bench-201 edge x
  operator, FBNet layer x block, MobileNet slot x (kernel, expand) -- scaled by the input area and
  unscaled -- plus the input resolution. A device's latency is close to linear in them (a per-position
  linear model trained on half of a device's rows ranks the other half at SRCC 0.92-1.0 on every device
  of the shipped datasets).
* **A reference population**: 2,000 random archs of the space (fixed seed). Directions and kernels are
  scaled on it, so that "one unit" means the spread of latency over the space, whatever the K samples
  happen to be (scales taken from the samples themselves blew up when the samples had little spread).
* **Structured prior kernels** over the per-position weights, from coarse to fine: ``physics`` (the
  arch's physical totals -- 1x1-conv MACs, other MACs, activations, operator launches, weights -- from
  the space's geometry, :func:`~hwnas.predictors.linear.cost_table`), ``counts`` (one weight per
  operator type, wherever it sits) and ``onehot`` (a free weight per position and operator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..linear import LinearLatencyPredictor, cost_table, feature_groups, latency_features

POOL_SIZE = 2000
POOL_SEED = 20240617


@dataclass
class Basis:
    """Features, reference population and prior kernels of one space (see the module doc)."""

    space: Any
    pool: list
    mean: np.ndarray  # feature mean over the pool
    pool_X: np.ndarray  # centred pool features
    kernels: dict[str, np.ndarray] = field(default_factory=dict)  # weight-space covariances, unit pool variance
    macs: np.ndarray | None = None  # the per-position MACs direction (unit pool spread), when the space has a geometry

    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """Centred per-position features of ``archs``."""
        return latency_features(self.space, archs) - self.mean

    def unit(self, w: np.ndarray) -> np.ndarray:
        """``w`` scaled so that its predictions spread with standard deviation 1 over the pool."""
        s = float(np.std(self.pool_X @ w))
        return w / s if s > 0 else w

    def unit_kernel(self, S: np.ndarray) -> np.ndarray:
        """``S`` scaled so that a weight vector drawn from ``N(0, S)`` spreads by 1 over the pool (on average)."""
        t = float(np.einsum("ij,ji->", self.pool_X.T @ self.pool_X, S)) / len(self.pool_X)
        return S / t if t > 0 else S

    def cv(self, w: np.ndarray, b: float) -> float:
        """Coefficient of variation (std / mean) of ``x . w + b`` over the pool."""
        p = (self.pool_X + self.mean) @ w + b
        m = float(np.mean(p))
        return float(np.std(p) / m) if m > 0 else float("nan")


_CACHE: dict[str, Basis] = {}


def _space_key(space: Any) -> str:
    from hwnas.spaces.io import space_cache_key

    return space_cache_key(space)


def basis_for(space: Any) -> Basis:
    """The (cached) :class:`Basis` of ``space``."""
    key = _space_key(space)
    if key in _CACHE:
        return _CACHE[key]
    pool = list(space.sample(POOL_SIZE, rng=np.random.default_rng(POOL_SEED)))
    X = latency_features(space, pool)
    mean = X.mean(0)
    b = Basis(space, pool, mean, X - mean)
    p = X.shape[1]
    T = cost_table(space)
    if T is not None and np.abs(T).sum() > 0:
        Tn = np.stack([b.unit(T[:, j]) for j in range(T.shape[1]) if np.std(b.pool_X @ T[:, j]) > 0], axis=1)
        b.kernels["physics"] = b.unit_kernel(Tn @ Tn.T)
        if np.std(b.pool_X @ (T[:, 0] + T[:, 1])) > 0:
            b.macs = b.unit(T[:, 0] + T[:, 1])
    groups, _ = feature_groups(space)
    G = np.zeros((p, int(groups.max()) + 1))
    G[np.arange(p), groups] = 1.0
    b.kernels["counts"] = b.unit_kernel(G @ G.T)
    b.kernels["onehot"] = b.unit_kernel(np.eye(p))
    _CACHE[key] = b
    return b


@dataclass
class ProxyDirection:
    """A proxy predictor seen through the basis: per-position weights ``w`` and bias ``b`` (the proxy's
    own for a linear predictor, else a linear fit to its predictions over the pool), the unit direction,
    and how faithfully the linear form reproduces the proxy (SRCC over the pool; 1 for a linear proxy)."""

    w: np.ndarray
    b: float
    unit: np.ndarray
    fidelity: float
    linear: bool


def proxy_direction(basis: Basis, proxy: Any) -> ProxyDirection:
    """The proxy's direction in the basis; any latency predictor (``predict(archs)``) works."""
    if isinstance(proxy, LinearLatencyPredictor) and proxy.weights is not None and proxy.space is not None \
            and latency_features(proxy.space, basis.pool[:1]).shape[1] == len(basis.mean):
        w, b = np.asarray(proxy.weights, dtype=float), float(proxy.bias)
        return ProxyDirection(w, b, basis.unit(w), 1.0, True)
    if not hasattr(proxy, "predict"):
        raise TypeError(f"proxy: a latency predictor with predict(archs) is needed; got {type(proxy).__name__}")
    from ..linear import ridge_fit
    from ..metrics import srcc

    p = np.asarray(proxy.predict(basis.pool), dtype=float).reshape(-1)
    if p.shape != (len(basis.pool),) or not np.isfinite(p).all():
        raise ValueError("proxy: its predictions over random archs of the space are not finite numbers, one per arch")
    w, b = ridge_fit(basis.pool_X + basis.mean, p, 1e-6)
    fid = srcc((basis.pool_X + basis.mean) @ w + b, p)
    return ProxyDirection(w, float(b), basis.unit(w), float(fid), False)


