"""Hardware-specific search-space reduction from a block-friendliness profile.

Rules for block choices, input resolutions and unit depths, configurable through :class:`ReductionRules`:

**Front rule** (``rule="front"``, default). A reduction must keep the accuracy-latency front of whole
networks. Under the profile's additive model (unit depth responses + the *position-specific* paired
block deltas of the active layers + the resolution response, see :class:`AdditiveFront`) the best
network for every latency price is found exactly; the hypervolume of these networks' points, against the
worst corner of the random networks of the profile (so the fast end counts, not only the middle), is the
criterion. Block choices (in every unit for scope "global", per unit for "unit") are removed greedily,
the one that loses the least hypervolume first, judged at a fixed resolution, while the loss stays within
``front_tol`` (0.5 %); then resolutions the same way. A choice that is the fastest or the most accurate
at some positions is needed by the fast or the accurate end and stays, even when on average over
positions it is no better than another choice (the GPU case: at batch 1 block costs are small and differ
by position). Resolutions that cost (almost) nothing but buy less accuracy go (GPU at batch 1).

What this buys, per device and evaluation budget, is measured by ``benchmarks/space_reduction.py``
(figures in the README). Between near-equivalent choices the greedy pick can change with the profile's
seed: either keeps the front within ``front_tol``.

The position-averaged rules below ("hull", "dominance") are kept as options.

**Block choices** (per scope: the whole space, or each unit). For every allowed choice ``c`` the
profile gives, per background sample, the latency and accuracy change of putting ``c`` at a position
instead of the position's average choice; averaged over the scope's positions this is ``(L_c, A_c)``
with a paired standard error (common random numbers make these differences precise).

*epsilon-dominance* (``rule="dominance"``): ``c`` is dropped when another choice ``c'``

* is not slower: ``L_c' - L_c <= tau_L``  (``tau_L = latency_tol x mean network latency``),
* is not less accurate: ``A_c' - A_c >= -tau_A``  (``tau_A = accuracy_tol``, top-1 fraction per layer),
* and is clearly better in one of them: faster by more than ``max(tau_L, z*se)`` or more accurate by
  more than ``max(tau_A, z*se)``.

*efficient frontier* (``rule="hull"``): additionally drops choices lying more than
``max(tau_A, z*se)`` below the upper-left concave hull of the ``(L_c, A_c)`` points. For an additive
cost/benefit model this is the multiple-choice-knapsack LP-dominance: for any latency price, a position
is best served by a hull choice, so choices under the hull are only ever picked to fill leftover
budget. Choices slower than the most accurate choice (flat end of the frontier) go too.

Both are "latency cost without a matching accuracy gain". At least ``min_blocks`` choices per unit are
kept (the least clearly dominated come back first).

**Unit depths.** For unit ``u`` the depth profile gives the latency/accuracy of each allowed depth.
The *exchange rate* ``rho`` of the space is the accuracy bought per unit of latency by adding layers,
pooled over all units (``sum dA / sum dL`` over all depth steps). The top depth of a unit is removed
while its last step buys less than ``depth_efficiency x rho`` (or costs latency and buys no accuracy),
keeping at least ``min_depths`` depths.

The result is a new space of the same class (``space.to_config()`` with reduced ``block_choices`` /
``depth_choices``), written as a hydra space config so ``hwnas-search space=reduced_<device>`` loads it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.spaces.checks import check_int, check_number
from hwnas.spaces.errors import UserError
from hwnas.spaces.io import space_from_spec, space_spec

from .profile import SpaceProfile, block_name

SCOPES = ("global", "unit")
RULES = ("front", "hull", "dominance")


class RulesError(UserError, ValueError):
    """A :class:`ReductionRules` field is unknown or out of range: one line naming it and the allowed
    values (a ``ValueError`` too, as it was before)."""


@dataclass
class ReductionRules:
    """Thresholds of :func:`reduce_space` (see the module doc)."""

    #: "front": drop block choices (and resolutions) while the additive model's accuracy-latency front
    #: of whole networks keeps its hypervolume within ``front_tol``; "hull": drop choices below the
    #: efficient (concave) latency-accuracy frontier of the position-averaged choices; "dominance": drop
    #: only choices epsilon-Pareto-dominated by another choice
    rule: str = "front"
    #: "global": one set of choices for every unit (aggregated over all positions); "unit": per unit
    scope: str = "global"
    #: latency tolerance, as a fraction of the mean network latency of the random baseline ("dominance";
    #: "hull" uses it for choices slower than the most accurate one)
    latency_tol: float = 0.002
    #: accuracy tolerance in top-1 fraction per layer (0.0002 = 0.02 points): "hull" keeps choices
    #: at most this far below the frontier, "dominance" treats smaller accuracy differences as ties
    accuracy_tol: float = 0.0002
    #: paired standard errors a strict improvement must exceed (noise guard)
    z: float = 2.0
    #: keep at least this many block choices per unit
    min_blocks: int = 3
    #: drop block choices at all
    drop_blocks: bool = True
    #: cap unit depths at all
    cap_depth: bool = True
    #: a unit's top layer is removed if it buys less than this fraction of the space's exchange rate
    depth_efficiency: float = 0.4
    #: keep at least this many depth choices per unit
    min_depths: int = 1
    #: "front": largest relative hypervolume loss of the additive network front the reduction may cause
    front_tol: float = 0.005
    #: "front": drop input resolutions too (needs a profile with resolution cells)
    drop_resolutions: bool = True
    #: keep at least this many resolutions
    min_resolutions: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise RulesError(f"rules.rule={self.rule!r} is unknown; use one of {list(RULES)}")
        if self.scope not in SCOPES:
            raise RulesError(f"rules.scope={self.scope!r} is unknown; use one of {list(SCOPES)}")
        for name in ("latency_tol", "accuracy_tol", "z", "depth_efficiency", "front_tol"):
            check_number(getattr(self, name), f"rules.{name}", 0.0, error=RulesError)
        for name in ("min_blocks", "min_depths", "min_resolutions"):
            check_int(getattr(self, name), f"rules.{name}", 1, error=RulesError)

    @classmethod
    def from_dict(cls, obj: Any) -> "ReductionRules":
        if isinstance(obj, ReductionRules):
            return obj
        obj = dict(obj or {})
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(obj) - known)
        if extra:
            raise RulesError(f"reduction rules have unknown key(s) {extra}; allowed keys: {sorted(known)}")
        return cls(**obj)


@dataclass
class Reduction:
    """Outcome of :func:`reduce_space`."""

    space: Any
    device: str
    accuracy: str
    block_choices: list[list[tuple[int, int]]]
    depth_choices: list[list[int]]
    dropped: list[list[str]]
    decisions: Any  # pandas.DataFrame: one row per (scope, choice) and per depth step
    rules: ReductionRules
    exchange_rate: float
    config: dict = field(default_factory=dict)
    #: input resolutions kept / dropped
    resolutions: list[int] = field(default_factory=list)
    dropped_resolutions: list[int] = field(default_factory=list)
    #: rule "front": relative hypervolume the additive network front loses by the block/resolution drops
    front_loss: float = float("nan")

    @property
    def dropped_global(self) -> list[str]:
        """Choices dropped in every unit."""
        sets = [set(d) for d in self.dropped]
        common = set.intersection(*sets) if sets else set()
        return [b for b in (block_name(k, e) for k, e in self.space_full_pairs) if b in common]

    @property
    def space_full_pairs(self) -> list[tuple[int, int]]:
        return list(self.space.all_block_choices)

    @property
    def max_depths(self) -> list[int]:
        return [max(d) for d in self.depth_choices]

    def describe(self) -> str:
        drops = self.dropped_global
        per_unit = "; ".join(f"u{u}: {','.join(d) or '-'}" for u, d in enumerate(self.dropped))
        res = ""
        if self.dropped_resolutions:
            res = f"; resolutions {_ranges(self.resolutions)} (dropped {len(self.dropped_resolutions)})"
        return (
            f"{self.device}: drop {','.join(drops) or 'nothing'} (per unit {per_unit}); "
            f"max depths {tuple(self.max_depths)}{res}"
        )


def _ranges(rs: list[int]) -> str:
    return "[" + ",".join(str(r) for r in rs) + "]" if len(rs) <= 6 else f"[{rs[0]},{rs[1]},...,{rs[-1]}] ({len(rs)})"


# ============================================================================ rules
def _scope_deltas(profile: SpaceProfile, name: str, positions: list[tuple[int, int]]) -> np.ndarray:
    """``(n_pairs, N)`` per-sample deltas averaged over ``positions`` (NaN rows for unavailable)."""
    dev = profile.paired_deltas(name)
    rows = np.stack([dev[u, j] for u, j in positions], axis=0)  # (P, n_pairs, N)
    avail = ~np.isnan(rows).any(axis=2)  # (P, n_pairs)
    out = np.full(rows.shape[1:], np.nan)
    for c in range(rows.shape[1]):
        if avail[:, c].any():
            out[c] = rows[avail[:, c], c].mean(axis=0)
    return out


def _dominance(L: np.ndarray, A: np.ndarray, tau_L: float, tau_A: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """``dom[i, j]``: choice ``j`` dominates choice ``i``; ``margin[i, j]`` how clearly (>0)."""
    n = L.shape[0]
    dom = np.zeros((n, n), dtype=bool)
    margin = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j or np.isnan(L[i]).any() or np.isnan(L[j]).any():
                continue
            dl = L[j] - L[i]  # per sample, <0: j faster
            da = A[j] - A[i]  # >0: j more accurate
            ml, ma = float(dl.mean()), float(da.mean())
            sl = float(dl.std(ddof=1) / math.sqrt(dl.size))
            sa = float(da.std(ddof=1) / math.sqrt(da.size))
            if ml > tau_L or ma < -tau_A:
                continue
            faster = -ml - max(tau_L, z * sl)
            better = ma - max(tau_A, z * sa)
            if faster > 0 or better > 0:
                dom[i, j] = True
                margin[i, j] = max(faster / max(tau_L, 1e-12), better / max(tau_A, 1e-12))
    return dom, margin


def _hull_gaps(L: np.ndarray, A: np.ndarray, allowed: list[int]) -> tuple[np.ndarray, np.ndarray, list[int], dict]:
    """Vertical gap of every choice below the efficient frontier (upper-left concave hull of the mean
    (latency, accuracy) points) and its paired standard error; returns ``(gap, se, hull_members,
    beyond)``. Beyond the rightmost (most accurate) hull vertex the frontier is flat: more latency buys
    nothing; ``beyond[c] = (extra latency, its se)`` for those choices."""
    n = L.shape[0]
    gap = np.full(n, np.nan)
    se = np.full(n, np.nan)
    beyond: dict[int, tuple[float, float]] = {}
    if not allowed:
        return gap, se, [], beyond
    mL = {c: float(L[c].mean()) for c in allowed}
    mA = {c: float(A[c].mean()) for c in allowed}
    order = sorted(allowed, key=lambda c: (mL[c], -mA[c]))
    pareto, best = [], -np.inf
    for c in order:  # cheaper first; keep strictly better accuracy
        if mA[c] > best:
            pareto.append(c)
            best = mA[c]
    hull: list[int] = []
    for c in pareto:  # upper concave hull (monotone chain)
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (mL[b] - mL[a]) * (mA[c] - mA[a]) - (mA[b] - mA[a]) * (mL[c] - mL[a])
            if cross >= 0:  # b lies on or below the chord a-c
                hull.pop()
            else:
                break
        hull.append(c)
    for c in allowed:
        x = mL[c]
        if c in hull:
            gap[c], se[c] = 0.0, 0.0
            continue
        right = [h for h in hull if mL[h] >= x]
        left = [h for h in hull if mL[h] <= x]
        if not right:  # beyond the last vertex: flat frontier
            per = A[hull[-1]] - A[c]
            dl = L[c] - L[hull[-1]]
            beyond[c] = (float(dl.mean()), float(dl.std(ddof=1) / math.sqrt(dl.size)))
        else:
            a, b = left[-1], right[0]
            w = 0.0 if mL[b] == mL[a] else (x - mL[a]) / (mL[b] - mL[a])
            per = (1 - w) * A[a] + w * A[b] - A[c]
        gap[c] = float(per.mean())
        se[c] = float(per.std(ddof=1) / math.sqrt(per.size))
    return gap, se, hull, beyond


def _masked_mean(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Row means of ``x`` over the entries where ``ok`` (``(n, 1)``)."""
    return (np.where(ok, x, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1))[:, None]


class AdditiveFront:
    """The accuracy-latency front of whole networks under the profile's additive model.

    A network's latency (accuracy) is modelled as the sum of its units' depth responses, the paired block
    deltas of its active layers (position-specific, not averaged over positions) and its resolution
    response. For a price ``theta`` (``cos(theta)/tau_A`` per accuracy unit against ``sin(theta)/tau_L``
    per latency unit, ``theta`` from 0 = accuracy only to pi/2 = latency only) the best network is found
    exactly (best block per position, then best depth per unit, then best resolution); the ``(L, A)``
    points of these optima over a grid of prices are the (supported) front. Its hypervolume is measured
    against a reference point 10 % of the full space's front span beyond its worst latency and accuracy,
    so both ends of the front count."""

    def __init__(self, profile: SpaceProfile, device: str, accuracy: str, n_prices: int = 61,
                 resolution: bool = True) -> None:
        import warnings

        with np.errstate(all="ignore"), warnings.catch_warnings():  # (cells no sample reached: NaN, said nowhere else)
            warnings.simplefilter("ignore", RuntimeWarning)
            self.ML = np.nanmean(profile.paired_deltas(device), axis=3)  # (nu, ml, P)
            self.MA = np.nanmean(profile.paired_deltas(accuracy), axis=3)
        space = profile.space
        nu, ml = self.ML.shape[:2]
        DL, DA = profile.depths[device].mean(axis=2), profile.depths[accuracy].mean(axis=2)  # (nu, ml)
        self.depth_ok = np.zeros((nu, ml), dtype=bool)
        for u, ds in enumerate(space.depth_choices):
            self.depth_ok[u, [d - 1 for d in ds]] = True
        # per-unit depth responses around the unit's mean over its allowed depths (uniform depth draws),
        # so that baseline mean + model = the modelled network value
        self.DL = np.where(self.depth_ok, DL - _masked_mean(DL, self.depth_ok), 0.0)
        self.DA = np.where(self.depth_ok, DA - _masked_mean(DA, self.depth_ok), 0.0)
        if resolution and profile.resolutions.get(device) is not None and profile.resolutions.get(accuracy) is not None:
            RL, RA = profile.resolutions[device].mean(axis=1), profile.resolutions[accuracy].mean(axis=1)
            self.RL, self.RA = RL - RL.mean(), RA - RA.mean()
        else:  # not profiled: resolution is not part of the model (nor dropped)
            self.RL, self.RA = np.zeros(1), np.zeros(1)
        self.n_res = len(self.RL)
        self.avail = ~np.isnan(self.ML) & ~np.isnan(self.MA)
        self.tau_L = max(float(np.nanstd(self.ML)), 1e-12)  # price scales: typical per-layer effects
        self.tau_A = max(float(np.nanstd(self.MA)), 1e-12)
        # strictly positive weights on both objectives, so that ties (equally accurate choices) go to
        # the faster one even at the ends of the price range
        th = np.linspace(1e-3, np.pi / 2 - 1e-3, n_prices)
        self.wA, self.wL = np.cos(th) / self.tau_A, np.sin(th) / self.tau_L
        full = self.points(np.ones((nu, self.ML.shape[2]), dtype=bool), np.ones(self.n_res, dtype=bool))
        # reference point: the worst corner of the random networks of the space (or of the front, with a
        # 10 % margin, if that is worse): the front is valued as the improvement over random sampling,
        # so its fast end (compared with the least accurate random network) counts, not only its middle
        bl = np.asarray(profile.baseline[device], float) - float(np.mean(profile.baseline[device]))
        ba = np.asarray(profile.baseline[accuracy], float) - float(np.mean(profile.baseline[accuracy]))
        span_L = float(np.ptp(full[:, 0])) or 1.0
        span_A = float(np.ptp(full[:, 1])) or 1.0
        self.ref = (max(float(bl.max()), float(full[:, 0].max()) + 0.1 * span_L),
                    min(float(ba.min()), float(full[:, 1].min()) - 0.1 * span_A))
        self.hv_full = self.hypervolume(full)

    def points(self, keep: np.ndarray, rkeep: np.ndarray) -> np.ndarray:
        """``(n_prices, 2)`` (latency, accuracy) of the optimal networks with block choices ``keep``
        (``(n_units, n_pairs)`` bool) and resolutions ``rkeep``."""
        wA, wL = self.wA[:, None, None, None], self.wL[:, None, None, None]
        ok = self.avail & keep[:, None, :]
        v = np.where(ok[None], wA * np.nan_to_num(self.MA) - wL * np.nan_to_num(self.ML), -np.inf)  # (T,nu,ml,P)
        ci = v.argmax(axis=3)[..., None]
        bv = np.take_along_axis(v, ci, 3)[..., 0]  # (T, nu, ml); -inf where nothing is available
        bl = np.take_along_axis(np.broadcast_to(np.nan_to_num(self.ML), v.shape), ci, 3)[..., 0]
        ba = np.take_along_axis(np.broadcast_to(np.nan_to_num(self.MA), v.shape), ci, 3)[..., 0]
        bv = np.where(np.isfinite(bv), bv, 0.0)
        dv = wA[..., 0] * self.DA - wL[..., 0] * self.DL + np.cumsum(bv, axis=2)  # unit value at depth j+1
        dv = np.where(self.depth_ok[None], dv, -np.inf)
        di = dv.argmax(axis=2)  # (T, nu)
        mask = np.arange(self.ML.shape[1])[None, None, :] <= di[..., None]
        L = (np.take_along_axis(np.broadcast_to(self.DL, dv.shape), di[..., None], 2)[..., 0]).sum(1) + (bl * mask).sum((1, 2))
        A = (np.take_along_axis(np.broadcast_to(self.DA, dv.shape), di[..., None], 2)[..., 0]).sum(1) + (ba * mask).sum((1, 2))
        rv = np.where(rkeep[None], self.wA[:, None] * self.RA - self.wL[:, None] * self.RL, -np.inf)
        ri = rv.argmax(axis=1)
        return np.stack([L + self.RL[ri], A + self.RA[ri]], axis=1)

    def hypervolume(self, pts: np.ndarray) -> float:
        ref_L, ref_A = self.ref
        hv, best = 0.0, ref_A
        for lat, a in pts[np.lexsort((-pts[:, 1], pts[:, 0]))]:
            if lat < ref_L and a > best:
                hv += (ref_L - lat) * (a - best)
                best = a
        return hv

    def loss(self, keep: np.ndarray, rkeep: np.ndarray) -> float:
        """Relative hypervolume lost by restricting the space to ``keep`` / ``rkeep`` (0 = nothing)."""
        return max(0.0, 1.0 - self.hypervolume(self.points(keep, rkeep)) / self.hv_full) if self.hv_full > 0 else 0.0


def _front_reduction(profile: SpaceProfile, device: str, accuracy: str, rules: "ReductionRules"):
    """Greedy backward elimination in two stages.

    1. Block choices, judged on the front at a fixed input resolution (the resolution term left out: block
       costs scale with the resolution, so the additive resolution response is not trusted to stand in
       for block choices at the fast end): repeatedly drop the block choice (in every unit for scope
       "global", in one unit for "unit") whose removal loses the least hypervolume, while the loss stays
       within ``rules.front_tol``.
    2. Resolutions, judged on the front with the resolution term and the kept blocks: drop the one that
       adds the least loss, while the added loss stays within ``rules.front_tol``.

    Returns ``(keep, rkeep, log, front)``; ``log`` maps each candidate to the loss its removal would cause
    at the end (or caused, when dropped); ``front`` is the full model (with resolutions)."""
    space = profile.space
    pairs = profile.pairs
    nu = len(profile.layout)
    bfront = AdditiveFront(profile, device, accuracy, resolution=False)
    front = AdditiveFront(profile, device, accuracy)
    keep = np.zeros((nu, len(pairs)), dtype=bool)
    for u, bc in enumerate(space.block_choices):
        keep[u, [pairs.index(tuple(b)) for b in bc]] = True
    rkeep = np.ones(front.n_res, dtype=bool)
    one = np.ones(1, dtype=bool)
    log: dict[tuple, float] = {}

    def block_candidates(keep, floor=True):
        out = []
        if not rules.drop_blocks:
            return out
        scopes = [list(range(nu))] if rules.scope == "global" else [[u] for u in range(nu)]
        for units in scopes:
            for c in range(len(pairs)):
                us = [u for u in units if keep[u, c]]
                if not us or (floor and any(keep[u].sum() <= rules.min_blocks for u in us)):
                    continue
                k2 = keep.copy()
                k2[us, c] = False
                avg = front.ML[us, :, c]
                slow = float(np.nanmean(avg)) if np.isfinite(avg).any() else 0.0
                out.append((("block", c, tuple(units)), k2, slow))
        return out

    def res_candidates(rkeep, floor=True):
        out = []
        if not (rules.drop_resolutions and front.n_res > 1):
            return out
        if floor and rkeep.sum() <= rules.min_resolutions:
            return out
        for i in np.flatnonzero(rkeep):
            r2 = rkeep.copy()
            r2[i] = False
            out.append((("resolution", int(i), ()), r2, float(front.RL[i])))
        return out

    def greedy(state, cands, loss_of):
        while True:
            scored = [(loss_of(x), key, x, slow) for key, x, slow in cands(state)]
            if not scored:
                return state
            # ties (e.g. choices that are never optimal): the slower one goes first
            loss, key, x, _ = min(scored, key=lambda t: (round(t[0], 9), -t[3], t[1]))
            if loss > rules.front_tol:
                return state
            state = x
            log[key] = loss

    keep = greedy(keep, block_candidates, lambda k: bfront.loss(k, one))
    base = front.loss(keep, rkeep)
    rkeep = greedy(rkeep, res_candidates, lambda r: front.loss(keep, r) - base)
    for key, k, _ in block_candidates(keep, floor=False):
        log.setdefault(key, bfront.loss(k, one))
    base = front.loss(keep, rkeep)
    for key, r, _ in res_candidates(rkeep, floor=False):
        log.setdefault(key, front.loss(keep, r) - base if r.any() else 1.0)
    return keep, rkeep, log, front


def _front_row(rule: str, scope: str, choice: str, lat: np.ndarray, acc: np.ndarray, loss: float, gone: bool) -> dict:
    """A decision-table row of the front rule: the paired latency/accuracy deltas of a candidate and the
    front hypervolume it loses (or would lose) when dropped."""
    return dict(rule=rule, scope=scope, choice=choice,
                latency_delta=float(lat.mean()), accuracy_delta=float(acc.mean()),
                latency_se=float(lat.std(ddof=1) / math.sqrt(lat.size)),
                accuracy_se=float(acc.std(ddof=1) / math.sqrt(acc.size)),
                efficiency=float("nan"), gap=float(loss),
                dominated_by=f"front HV -{max(0.0, 100 * loss):.2f}% {'when dropped' if gone else 'if dropped'}",
                dropped=gone)


def reduce_space(profile: SpaceProfile, device: str, accuracy: str | None = None,
                 rules: ReductionRules | dict | None = None, name: str | None = None) -> Reduction:
    """Derive a reduced space for latency metric ``device`` of ``profile`` (see the module doc)."""
    import pandas as pd

    rules = ReductionRules.from_dict(rules)
    lat_spec = profile.metric(device)
    if lat_spec.kind != "latency":
        raise ValueError(f"device={device!r} is an {lat_spec.kind} metric; pass a latency metric: {profile.names('latency')}")
    accs = profile.names("accuracy")
    if accuracy is None:
        if not accs:
            raise ValueError("the profile has no accuracy metric; profile with accuracy={'name': predictor}")
        accuracy = accs[0]
    if profile.metric(accuracy).kind != "accuracy":
        raise ValueError(f"accuracy={accuracy!r} is not an accuracy metric; profiled accuracy metrics: {accs}")
    space = profile.space
    pairs = profile.pairs
    names = profile.pair_names
    nu = len(profile.layout)
    net_lat = float(profile.baseline[device].mean())
    tau_L = rules.latency_tol * net_lat
    tau_A = rules.accuracy_tol
    positions = profile.positions()
    rows: list[dict] = []

    # ------------------------------------------------------------------ block choices
    keep = [list(bc) for bc in space.block_choices]
    dropped: list[list[str]] = [[] for _ in range(nu)]
    resolutions = list(space.resolutions)
    hv_loss = float("nan")
    if rules.rule == "front":
        kmask, rkeep, losses, front = _front_reduction(profile, device, accuracy, rules)
        hv_loss = front.loss(kmask, rkeep)
        for u in range(nu):
            keep[u] = [b for b in space.block_choices[u] if kmask[u, pairs.index(tuple(b))]]
            dropped[u] = [names[pairs.index(tuple(b))] for b in space.block_choices[u] if not kmask[u, pairs.index(tuple(b))]]
        if front.n_res == len(resolutions):
            resolutions = [r for r, k in zip(space.resolutions, rkeep) if k]
        all_pos = positions
        L = _scope_deltas(profile, device, all_pos)
        A = _scope_deltas(profile, accuracy, all_pos)
        for (kind, idx, units), loss in sorted(losses.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
            if kind == "block":
                scope_name = "all" if len(units) == nu else f"u{units[0]}"
                pos = [p for p in positions if p[0] in units]
                Lc, Ac = (L[idx], A[idx]) if len(units) == nu else (_scope_deltas(profile, device, pos)[idx],
                                                                     _scope_deltas(profile, accuracy, pos)[idx])
                rows.append(_front_row("block", scope_name, names[idx], Lc, Ac, loss, not kmask[units[0], idx]))
            else:
                rl = profile.resolutions[device][idx] - profile.resolutions[device].mean(axis=0)
                ra = profile.resolutions[accuracy][idx] - profile.resolutions[accuracy].mean(axis=0)
                rows.append(_front_row("resolution", "all", f"r{space.resolutions[idx]}", rl, ra, loss, not rkeep[idx]))
    elif rules.drop_blocks:
        scopes = [("all", list(range(nu)))] if rules.scope == "global" else [(f"u{u}", [u]) for u in range(nu)]
        for scope_name, units in scopes:
            pos = [p for p in positions if p[0] in units]
            if not pos:
                continue
            L = _scope_deltas(profile, device, pos)
            A = _scope_deltas(profile, accuracy, pos)
            allowed = [c for c in range(len(pairs)) if not np.isnan(L[c]).any()]
            if rules.rule == "dominance":
                dom, margin = _dominance(L, A, tau_L, tau_A, rules.z)
                is_dom = {c: bool(dom[c, allowed].any()) for c in allowed}
                strength = {c: float(margin[c, allowed].max()) if is_dom[c] else 0.0 for c in allowed}
                why = {c: ",".join(names[j] for j in allowed if dom[c, j]) for c in allowed}
                gap = np.full(len(pairs), np.nan)
            else:
                gap, gse, hull, beyond = _hull_gaps(L, A, allowed)
                thr = {c: max(tau_A, rules.z * gse[c]) for c in allowed}
                is_dom = {c: bool(gap[c] > thr[c]) for c in allowed}
                strength = {c: float(gap[c] - thr[c]) / max(tau_A, 1e-12) for c in allowed}
                why = {c: ("frontier" if c in hull else f"{100 * gap[c]:.3f} pts below frontier") for c in allowed}
                # plus epsilon-dominance: a frontier choice that costs latency for an accuracy gain
                # within the tolerance of a cheaper choice does not pay for itself either
                dom, margin = _dominance(L, A, tau_L, tau_A, rules.z)
                for c in allowed:
                    if not is_dom[c] and dom[c, allowed].any():
                        is_dom[c] = True
                        strength[c] = float(margin[c, allowed].max())
                        why[c] = "dominated by " + ",".join(names[j] for j in allowed if dom[c, j])
                    elif is_dom[c] and dom[c, allowed].any():
                        strength[c] = max(strength[c], float(margin[c, allowed].max()))
                for c, (dl, sl) in beyond.items():  # slower than the most accurate choice, not better
                    excess = dl - max(tau_L, rules.z * sl)
                    if excess > 0 and not is_dom[c]:
                        is_dom[c] = True
                        strength[c] = excess / max(tau_L, 1e-12)
                        why[c] = f"slower than {names[hull[-1]]}, no more accurate"
                    elif excess > 0:
                        strength[c] = max(strength[c], excess / max(tau_L, 1e-12))
            # enforce min_blocks per unit: bring back the least clearly dominated
            for u in units:
                in_unit = [c for c in allowed if pairs[c] in space.block_choices[u]]
                drop_u = [c for c in in_unit if is_dom[c]]
                n_keep = len(in_unit) - len(drop_u)
                if n_keep < rules.min_blocks:
                    # keep the most clearly dominated dropped; ties: the slower one goes
                    drop_u = sorted(drop_u, key=lambda c: (-strength[c], -float(L[c].mean())))
                    drop_u = drop_u[: max(0, len(in_unit) - rules.min_blocks)]
                keep[u] = [b for b in space.block_choices[u] if pairs.index(tuple(b)) not in drop_u]
                dropped[u] = [names[c] for c in sorted(drop_u)]
            for c in allowed:
                rows.append(dict(
                    rule="block", scope=scope_name, choice=names[c],
                    latency_delta=float(L[c].mean()), accuracy_delta=float(A[c].mean()),
                    latency_se=float(L[c].std(ddof=1) / math.sqrt(L.shape[1])),
                    accuracy_se=float(A[c].std(ddof=1) / math.sqrt(A.shape[1])),
                    efficiency=float("nan"), gap=float(gap[c]),
                    dominated_by=why[c],
                    dropped=any(names[c] in dropped[u] for u in units),
                ))

    # ------------------------------------------------------------------ depths
    depth_keep = [list(d) for d in space.depth_choices]
    Ld, Ad = profile.depths[device], profile.depths[accuracy]
    steps = []  # (u, d_from, d_to, dL, dA)
    for u in range(nu):
        ds = sorted(space.depth_choices[u])
        for a, b in zip(ds[:-1], ds[1:]):
            dl = float((Ld[u, b - 1] - Ld[u, a - 1]).mean())
            da = float((Ad[u, b - 1] - Ad[u, a - 1]).mean())
            steps.append((u, a, b, dl, da))
    pos_steps = [(dl, da) for *_, dl, da in steps if dl > 0]
    rho = (sum(da for _, da in pos_steps) / sum(dl for dl, _ in pos_steps)) if pos_steps else float("nan")
    for u in range(nu):
        us = [s for s in steps if s[0] == u]
        for _, a, b, dl, da in us:
            eff = da / dl if dl > 0 else float("inf") if da >= 0 else float("-inf")
            rows.append(dict(rule="depth", scope=f"u{u}", choice=f"d{a}->d{b}", latency_delta=dl, accuracy_delta=da,
                             latency_se=float("nan"), accuracy_se=float("nan"),
                             efficiency=eff / rho if rho and math.isfinite(rho) and rho > 0 else float("nan"), gap=float("nan"),
                             dominated_by="", dropped=False))
        if not rules.cap_depth or not math.isfinite(rho) or rho <= 0:
            continue
        for _, a, b, dl, da in sorted(us, key=lambda s: -s[2]):
            if len(depth_keep[u]) <= rules.min_depths or b != max(depth_keep[u]):
                break
            wasteful = (dl > 0 and da <= 0) or (dl > 0 and da / dl < rules.depth_efficiency * rho)
            if not wasteful:
                break
            depth_keep[u].remove(b)
            for r in rows:
                if r["rule"] == "depth" and r["scope"] == f"u{u}" and r["choice"] == f"d{a}->d{b}":
                    r["dropped"] = True

    # ------------------------------------------------------------------ new space
    new_space = _narrowed(space, name or f"reduced_{_slug(device)}", keep, depth_keep, resolutions, "the reduction")
    decisions = pd.DataFrame(rows, columns=["rule", "scope", "choice", "latency_delta", "accuracy_delta",
                                            "latency_se", "accuracy_se", "efficiency", "gap", "dominated_by", "dropped"])
    return Reduction(space=new_space, device=device, accuracy=accuracy, block_choices=[list(map(tuple, b)) for b in keep],
                     depth_choices=depth_keep, dropped=dropped, decisions=decisions, rules=rules,
                     exchange_rate=float(rho), config=new_space.to_config(), resolutions=list(resolutions),
                     dropped_resolutions=[r for r in space.resolutions if r not in resolutions], front_loss=hv_loss)


def _narrowed(space: Any, name: str, blocks: list, depths: list, resolutions: list, what: str) -> Any:
    """``space`` with only these block choices (per unit), depths (per unit) and resolutions, built
    from its spec (data) under the new ``name``."""
    spec = space_spec(space)
    spec["options"].update(name=name, depth_choices=[list(d) for d in depths],
                           block_choices=[[block_name(k, e) for k, e in bc] for bc in blocks], resolutions=list(resolutions))
    return space_from_spec(spec, f"{what} of {space.name}")


def agreed_reduction(space: Any, first: Reduction, second: Reduction, name: str | None = None) -> Reduction:
    """The reduction both agree on: a block choice, depth or resolution is dropped only when both
    ``first`` and ``second`` (reductions of ``space``, e.g. under an adapted predictor and under
    the proxy it was adapted from) drop it; everything either keeps stays.

    Why: a predictor adapted from a few whole-network measurements ranks networks well, but the K
    samples cannot tell what one block costs; its per-choice costs can move far from the device's
    (measured: at K=20 an adapted model of a CPU made k5e3 faster than k3e3, and the reduction under it
    dropped k3e3, the fastest block). Requiring the proxy's profile to agree keeps that from removing
    what the target needs; the drops both see are the ones a few samples can support.
    """
    full = space
    n_units = len(first.block_choices)
    keep_blocks, dropped = [], []
    for u in range(n_units):
        union = set(first.block_choices[u]) | set(second.block_choices[u])
        order = [tuple(b) for b in full.block_choices[u]]
        keep_blocks.append([b for b in order if b in union])
        dropped.append([d for d in first.dropped[u] if d in set(second.dropped[u])])
    depths = [sorted(set(a) | set(b)) for a, b in zip(first.depth_choices, second.depth_choices)]
    resolutions = sorted(set(first.resolutions) | set(second.resolutions))
    new_space = _narrowed(full, name or first.space.name, keep_blocks, depths, resolutions, "the agreed reduction")
    decisions = first.decisions.copy()
    if len(decisions) and len(second.decisions):
        other = {(r.rule, r.scope, r.choice): bool(r.dropped) for r in second.decisions.itertuples()}
        decisions["dropped"] = [bool(d) and other.get((r, sc, c), False)
                                for r, sc, c, d in zip(decisions["rule"], decisions["scope"], decisions["choice"], decisions["dropped"])]
    return Reduction(space=new_space, device=first.device, accuracy=first.accuracy, block_choices=keep_blocks,
                     depth_choices=depths, dropped=dropped, decisions=decisions, rules=first.rules,
                     exchange_rate=first.exchange_rate, config=new_space.to_config(), resolutions=resolutions,
                     dropped_resolutions=[r for r in full.resolutions if r not in resolutions], front_loss=float("nan"))


# ============================================================================ config io
def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", str(text)).strip("_").lower()
    return s or "device"


def space_yaml(reduction: Reduction, extra_comment: str = "") -> str:
    """The YAML text of the reduced space (a hydra ``space`` config) with a provenance header."""
    import yaml

    cfg = dict(reduction.config)
    cfg["_convert_"] = "all"
    header = [
        f"# Reduced space for device '{reduction.device}' (accuracy source '{reduction.accuracy}'),",
        "# derived by hwnas-profile from a block-friendliness profile. Dropped block choices per unit:",
    ]
    header += [f"#   unit {u}: {', '.join(d) or '-'}" for u, d in enumerate(reduction.dropped)]
    header.append(f"# max unit depths: {tuple(reduction.max_depths)}")
    if reduction.dropped_resolutions:
        header.append(f"# dropped resolutions: {reduction.dropped_resolutions}")
    header.append("# rules: " + ", ".join(f"{k}={v}" for k, v in asdict(reduction.rules).items()))
    if extra_comment:
        header += [f"# {line}" for line in extra_comment.splitlines()]
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(header) + "\n" + body


def write_space_config(reduction: Reduction, conf_dir: str | os.PathLike, filename: str | None = None,
                       extra_comment: str = "") -> Path:
    """Write the reduced space atomically to ``<conf_dir>/space/<name>.yaml`` (``conf_dir`` is a hydra
    config root such as ``hwnas/conf``; pass ``.../space`` itself and it is used as is)."""
    conf_dir = Path(conf_dir)
    target = conf_dir if conf_dir.name == "space" else conf_dir / "space"
    fname = filename or f"{reduction.config['name']}.yaml"
    return atomic_write(target / fname, space_yaml(reduction, extra_comment))


def load_space_config(path: str | os.PathLike) -> Any:
    """Load a space YAML written by :func:`write_space_config` back into a space, as data: through the
    space registry (:func:`hwnas.spaces.io.space_from_spec`), never by importing a class it names."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text())
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k != "_convert_"}
    return space_from_spec(cfg, path)
