"""The bi-objective NAS problem (maximise accuracy, minimise latency) as a vectorised pymoo ``Problem``.

Objectives are ``F = [-accuracy, latency]`` (pymoo minimises). With latency budgets, the optional
constraint is ``latency - max(budgets) <= 0``: the search then spends no effort on archs slower than
the largest budget. Every evaluation hands the whole population to the predictors at once as a
:class:`hwnas.spaces.ArchBatch` (``space.batch(X)``), so predictors with a vectorised path never build
arch objects.

The problem keeps an archive of every distinct (canonical) genome it evaluated with its objectives:
repeated genomes are served from it, and the final front is taken from it (the archive's
non-dominated set is never worse than the last population's).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from pymoo.core.problem import Problem

from hwnas.predictors.base import as_predictor, predict_array
from hwnas.spaces import SearchSpace

from .operators import GenomeLayout, row_keys


class ArchProblem(Problem):
    """NAS over ``space`` with an accuracy and a latency predictor.

    ``max_latency``: constraint ``latency <= max_latency`` (``None``: unconstrained).
    """

    def __init__(
        self,
        space: SearchSpace,
        accuracy: Any,
        latency: Any,
        max_latency: float | None = None,
    ) -> None:
        self.space = space
        self.accuracy = as_predictor(accuracy, "accuracy")
        self.latency = as_predictor(latency, "latency")
        self.max_latency = None if max_latency is None else float(max_latency)
        self.layout = GenomeLayout(space)
        xl, xu = space.bounds
        super().__init__(
            n_var=space.n_var,
            n_obj=2,
            n_ieq_constr=0 if self.max_latency is None else 1,
            xl=np.asarray(xl),
            xu=np.asarray(xu),
            vtype=int,
        )
        self.n_evals = 0  # predictor calls per arch (distinct archs evaluated)
        self.predict_s = 0.0  # wall time spent inside the predictors
        self._index: dict[bytes, int] = {}
        self._X: list[np.ndarray] = []
        self._acc: list[np.ndarray] = []
        self._lat: list[np.ndarray] = []
        self._front = np.zeros(0, dtype=np.int64)  # archive indices of the feasible front

    # ------------------------------------------------------------------ evaluation
    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, latency) of canonical genomes ``X``; new genomes go through the predictors in
        one batch, known ones come from the archive."""
        X = self.layout.canonical(np.rint(np.asarray(X)).astype(int))
        keys = row_keys(X)
        idx = np.fromiter((self._index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        new = np.flatnonzero(idx < 0)
        if len(new):
            # de-duplicate within the batch too
            first: dict[bytes, int] = {}
            uniq = []
            for i in new:
                if keys[i] not in first:
                    first[keys[i]] = len(uniq)
                    uniq.append(i)
            U = X[uniq]
            t = time.perf_counter()
            batch = self.space.batch(U)
            acc = predict_array(self.accuracy, batch, "accuracy")
            lat = predict_array(self.latency, batch, "latency")
            self.predict_s += time.perf_counter() - t
            if not (np.isfinite(acc).all() and np.isfinite(lat).all()):
                bad = U[~(np.isfinite(acc) & np.isfinite(lat))][0]
                raise ValueError(f"a predictor returned a non-finite value for arch {self.space.decode(bad[None])[0]}")
            base = len(self._index)
            for j, i in enumerate(uniq):
                self._index[keys[i]] = base + j
            self._X.append(U)
            self._acc.append(acc)
            self._lat.append(lat)
            self.n_evals += len(uniq)
            # update the feasible front incrementally: old front + new feasible points
            ok = np.ones(len(lat), dtype=bool) if self.max_latency is None else lat <= self.max_latency
            cand = np.concatenate([self._front, base + np.flatnonzero(ok)])
            a_all, l_all = self.archive_objectives()
            self._front = cand[pareto_mask(a_all[cand], l_all[cand])]
            for i in new:
                idx[i] = self._index[keys[i]]
        acc_all, lat_all = self.archive_objectives()
        return acc_all[idx], lat_all[idx]

    def _evaluate(self, X: np.ndarray, out: dict, *args: Any, **kwargs: Any) -> None:
        acc, lat = self.predict(X)
        out["F"] = np.column_stack([-acc, lat])
        if self.max_latency is not None:
            out["G"] = (lat - self.max_latency)[:, None]

    # ------------------------------------------------------------------ archive
    def archive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All distinct genomes evaluated so far with their accuracy and latency."""
        if not self._X:
            return np.zeros((0, self.n_var), dtype=int), np.zeros(0), np.zeros(0)
        if len(self._X) > 1:  # compact the chunks
            self._X = [np.concatenate(self._X)]
            self._acc = [np.concatenate(self._acc)]
            self._lat = [np.concatenate(self._lat)]
        return self._X[0], self._acc[0], self._lat[0]

    def front_indices(self) -> np.ndarray:
        """Archive indices of the non-dominated feasible archs (``latency <= max_latency``), sorted by
        latency."""
        _, _, lat = self.archive()
        return self._front[np.argsort(lat[self._front], kind="stable")]

    def archive_objectives(self) -> tuple[np.ndarray, np.ndarray]:
        _, a, l = self.archive()
        return a, l

    def contains(self, X: np.ndarray) -> np.ndarray:
        keys = row_keys(self.layout.canonical(X))
        return np.array([k in self._index for k in keys], dtype=bool)


# ============================================================================ front utilities
def pareto_mask(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated points (max ``acc``, min ``lat``); of exact ties one is kept."""
    acc, lat = np.asarray(acc, float), np.asarray(lat, float)
    keep = np.zeros(len(acc), dtype=bool)
    if not len(acc):
        return keep
    order = np.lexsort((-acc, lat))  # by latency, then best accuracy first
    a = acc[order]
    prev_best = np.concatenate([[-np.inf], np.maximum.accumulate(a)[:-1]])
    keep[order[a > prev_best]] = True
    return keep


def hypervolume(acc: np.ndarray, lat: np.ndarray, ref_acc: float, ref_lat: float) -> float:
    """Exact 2-D hypervolume dominated by the points, w.r.t. the reference (``ref_acc``, ``ref_lat``)
    (area of accuracy above ``ref_acc`` times latency below ``ref_lat``)."""
    acc, lat = np.asarray(acc, float), np.asarray(lat, float)
    ok = (acc > ref_acc) & (lat < ref_lat)
    if not ok.any():
        return 0.0
    a, l = acc[ok], lat[ok]
    m = pareto_mask(a, l)
    a, l = a[m], l[m]
    o = np.argsort(l)
    a, l = a[o], l[o]
    # staircase: point i holds accuracy a[i] from latency l[i] until l[i+1] (a increases with l)
    widths = np.diff(np.append(l, ref_lat))
    # area = sum over segments of (best acc reachable at that latency - ref) * width
    return float(np.sum((a - ref_acc) * widths))


def best_under(acc: np.ndarray, lat: np.ndarray, budget: float) -> int:
    """Index of the most accurate point with ``lat <= budget`` (-1 if none)."""
    ok = np.flatnonzero(np.asarray(lat) <= budget)
    if not len(ok):
        return -1
    return int(ok[np.argmax(np.asarray(acc)[ok])])


def as_budgets(budgets: Sequence[float] | float | None) -> list[float]:
    if budgets is None:
        return []
    if isinstance(budgets, (int, float)):
        budgets = [budgets]
    out = []
    for b in budgets:
        try:
            v = float(b)
        except (TypeError, ValueError):
            raise ValueError(f"search.budgets entry {b!r} is not a number; write e.g. search.budgets=[15,20]") from None
        if not v > 0:
            raise ValueError(f"search.budgets entry {b!r} must be > 0 (latency, same unit as the latency predictor)")
        out.append(v)
    return sorted(set(out))
