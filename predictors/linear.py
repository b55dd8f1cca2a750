"""Operator-level linear latency predictor: latency = sum of per-(position, operator) costs + constant.

Features (:func:`latency_features`):

* NAS-Bench-201 / FBNet (categorical spaces): one-hot of the operator at every position.
* MobileNet spaces (OFA-MBv3, Proxyless): one-hot of the (kernel, expand) block in every active slot,
  scaled by ``(r / 224)^2`` (compute grows with the spatial size), the same one-hots unscaled (a
  per-layer fixed cost: kernel launches dominate GPUs at batch 1), then one-hot resolution (the
  stem/head at each input size). On the OFA-MBv3 data (hold-out SRCC, 4000 train) this gives
  0.80/0.965/0.998 on 2080ti batch 1/64 and titan_xp batch 32, vs 0.82/0.961/0.991 for the space's
  plain one-hots (depth, resolution one-hots included); batch 1 GPU timings are noisy.

Every feature column also has a *group* (its operator type, e.g. ``nor_conv_3x3`` or ``k5e6``);
adaptation uses the per-group sums ("how many 3x3 convolutions") as a low-dimensional correction.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hwnas.spaces.base import COST_NAMES
from hwnas.spaces.mbconv import layer_costs

from .base import Predictor


def _is_mbconv(space: Any) -> bool:
    return hasattr(space, "all_block_choices") and hasattr(space, "n_slots")


def latency_features(space: Any, archs: Sequence[Any]) -> np.ndarray:
    """Feature matrix ``(n, n_features)`` float64 used by the linear latency predictors."""
    if _is_mbconv(space):
        given = getattr(archs, "space", None) if hasattr(archs, "arrays") else None
        if given is not None and (given is space or given.is_restriction_of(space)):  # e.g. a reduced space's batch
            ks, es, d, r = archs.arrays
        else:
            archs = [space.validate(a) for a in archs]
            ks = np.array([a.ks for a in archs], dtype=int).reshape(len(archs), -1)
            es = np.array([a.e for a in archs], dtype=int).reshape(len(archs), -1)
            d = np.array([a.d for a in archs], dtype=int).reshape(len(archs), -1)
            r = np.array([a.r for a in archs], dtype=int)
        pairs = space.all_block_choices
        npairs = len(pairs)
        pid = np.full((8, 16), -1, dtype=int)
        for i, (k, e) in enumerate(pairs):
            pid[k, e] = i
        n, ns = ks.shape
        active = space.slot_pos[None, :] < d[:, space.slot_unit]
        col = np.arange(ns)[None, :] * npairs + pid[ks, es]
        nb = ns * npairs
        X = np.zeros((n, 2 * nb + len(space.resolutions)))
        scale = (r.astype(float) / 224.0) ** 2
        rows = np.broadcast_to(np.arange(n)[:, None], col.shape)
        X[rows[active], col[active]] = np.broadcast_to(scale[:, None], col.shape)[active]
        X[rows[active], nb + col[active]] = 1.0
        ridx = np.searchsorted(space.resolutions, r)
        ok = (ridx < len(space.resolutions)) & (np.asarray(space.resolutions)[np.minimum(ridx, len(space.resolutions) - 1)] == r)
        X[np.arange(n)[ok], 2 * nb + ridx[ok]] = 1.0
        return X
    return np.asarray(space.features(archs), dtype=float)


def feature_groups(space: Any) -> tuple[np.ndarray, list[str]]:
    """Group id of every feature column and the group names (operator types)."""
    if _is_mbconv(space):
        pairs = space.all_block_choices
        npairs = len(pairs)
        names = [f"k{k}e{e}*(r/224)^2" for k, e in pairs] + [f"k{k}e{e}" for k, e in pairs] + [f"r{r}" for r in space.resolutions]
        per_slot = np.tile(np.arange(npairs), space.n_slots)
        g = np.concatenate([per_slot, npairs + per_slot, 2 * npairs + np.arange(len(space.resolutions))])
        return g, names
    m = len(space.choices)
    return np.tile(np.arange(m), space.n_positions), list(space.choices)


def feature_stages(space: Any) -> np.ndarray:
    """Stage id of every feature column (positions of one stage share resolution and width):
    the unit of a slot for MobileNet spaces, ``space.stages`` for categorical spaces (one stage if absent)."""
    if _is_mbconv(space):
        npairs = len(space.all_block_choices)
        per_slot = np.repeat(space.slot_unit, npairs)
        return np.concatenate([per_slot, per_slot, np.full(len(space.resolutions), space.n_units)])
    sizes = getattr(space, "stages", None) or (space.n_positions,)
    pos_stage = np.repeat(np.arange(len(sizes)), sizes)
    return np.repeat(pos_stage, len(space.choices))


def ridge_fit(X: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, float]:
    """Least squares with a small ridge on the weights (not on the intercept); returns (w, b)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    xm, ym = X.mean(0), y.mean()
    Xc = X - xm
    A = Xc.T @ Xc
    lam = ridge * max(np.trace(A) / max(A.shape[0], 1), 1e-12)
    w = np.linalg.solve(A + lam * np.eye(A.shape[0]), Xc.T @ (y - ym))
    return w, float(ym - xm @ w)


class LinearLatencyPredictor(Predictor):
    """``latency = w . features(arch) + b`` fitted by least squares with a small ridge.

    ``weights`` (per feature) and ``feature_names`` give the per-operator costs (a learned lookup table).
    A prediction is never below ``floor``, a hundredth of the fastest latency it was fitted on: a linear fit can
    extrapolate below zero for archs far from its data (NAS-Bench-201's cells of ``none`` ops), and
    a latency must be a positive number.
    """

    metric = "latency_ms"

    def __init__(self, space: Any = None, ridge: float = 1e-3) -> None:
        if space is not None and isinstance(space, str):
            from hwnas.spaces import create_space

            space = create_space(space)
        self.space = space
        self.ridge = float(ridge)
        self.weights: np.ndarray | None = None
        self.bias = 0.0
        self.floor = 0.0

    def features(self, archs: Sequence[Any]) -> np.ndarray:
        if self.space is None:
            raise ValueError("LinearLatencyPredictor needs space= (a space object or its registered name)")
        return latency_features(self.space, archs)

    def fit(self, archs: Sequence[Any], values: Sequence[float]) -> "LinearLatencyPredictor":
        y = np.asarray(values, dtype=float).reshape(-1)
        if len(y) != len(archs):
            raise ValueError(f"fit: {len(archs)} archs but {len(y)} values; give one latency per arch")
        if not np.isfinite(y).all():
            raise ValueError("fit: latencies contain NaN/inf; drop those archs first")
        self.weights, self.bias = ridge_fit(self.features(archs), y, self.ridge)
        self.floor = 0.01 * float(y.min()) if len(y) and y.min() > 0 else 0.0
        return self

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("LinearLatencyPredictor.predict before fit(); call fit(archs, latencies) first")
        out = self.features(archs) @ self.weights + self.bias
        return np.maximum(out, self.floor) if self.floor > 0 else out

    @property
    def feature_names(self) -> list[str]:
        if _is_mbconv(self.space):
            sp = self.space
            names = [f"s{s}_k{k}e{e}" for s in range(sp.n_slots) for k, e in sp.all_block_choices]
            return [f"{x}*(r/224)^2" for x in names] + names + [f"r{r}" for r in sp.resolutions]
        return self.space.feature_names


# ============================================================================ physical cost features


def cost_table(space: Any) -> np.ndarray | None:
    """``T`` of shape ``(n_features, len(COST_NAMES))`` with ``latency_features(space, archs) @ T`` the
    physical totals of each arch (MACs, activations, operator launches, weights), or ``None`` when the
    space does not describe its geometry. Device-agnostic: any device's latency is roughly a mix of
    these (a roofline view), which is what makes them a good low-dimensional correction basis for
    latency adaptation."""
    if _is_mbconv(space):
        pairs = space.all_block_choices
        npairs, ns = len(pairs), space.n_slots
        nb = ns * npairs
        T = np.zeros((2 * nb + len(space.resolutions), len(COST_NAMES)))
        layout = tuple(space.arch_type.LAYOUT)
        for j, (k, e) in enumerate(pairs):
            probe = space.arch_type(ks=(k,) * ns, e=(e,) * ns, d=layout, r=224)
            for L in space.layers_unchecked(probe):
                if L.slot >= 0:
                    c = layer_costs(L)
                    T[L.slot * npairs + j, :3] = c[:3]  # scaled columns: (r/224)^2 x cost at 224
                    T[nb + L.slot * npairs + j, 3:] = c[3:]  # unscaled: launches and weights
        for i, r in enumerate(space.resolutions):
            probe = space.arch_type(ks=(pairs[0][0],) * ns, e=(pairs[0][1],) * ns, d=layout, r=int(r))
            T[2 * nb + i] = sum((layer_costs(L) for L in space.layers_unchecked(probe) if L.slot < 0), np.zeros(len(COST_NAMES)))
        return T
    costs = space.op_costs() if hasattr(space, "op_costs") else None
    if costs is None:
        return None
    return np.asarray(costs, dtype=float).reshape(-1, len(COST_NAMES))
