"""The bi-objective NAS problem (maximise accuracy, minimise latency) over a space's genome, with an
archive of every arch evaluated.

:class:`ArchProblem` hands each batch of new genomes to the predictors at once, as a
:class:`hwnas.spaces.ArchBatch` (``space.batch(X)``), so predictors with a vectorised path never build
arch objects. Every distinct canonical genome is evaluated once: repeats are served from the archive,
and the archive's feasible non-dominated set (``latency <= max_latency``) is kept up to date, so the
front a search returns is never worse than anything it evaluated.

Latency is predicted first: an arch over ``max_latency`` is infeasible whatever its accuracy, so its
accuracy is not predicted (NaN in the archive) -- with an expensive accuracy predictor, or a cheap
one called tens of thousands of times, that is evaluation time saved for archs that can never be on
the front.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.base import as_predictor, predict_array
from hwnas.spaces import SearchSpace

from .operators import GenomeLayout, row_keys


class ArchProblem:
    """NAS over ``space`` with an accuracy and a latency predictor.

    ``max_latency``: only archs with ``latency <= max_latency`` count as feasible (``None``: all).
    """

    def __init__(self, space: SearchSpace, accuracy: Any, latency: Any, max_latency: float | None = None) -> None:
        self.space = space
        self.accuracy = as_predictor(accuracy, "accuracy")
        self.latency = as_predictor(latency, "latency")
        self.layout = GenomeLayout(space)
        self.n_var = self.layout.n_var
        self.n_evals = 0  # archs sent to the predictors (new ones, and accuracies filled in later)
        self.predict_s = 0.0  # time spent inside the predictors
        self._index: dict[bytes, int] = {}
        self._X = np.zeros((0, self.n_var), dtype=np.int16)
        self._acc = np.zeros(0)
        self._lat = np.zeros(0)
        self.max_latency: float | None = None
        self._front = np.zeros(0, dtype=np.int64)
        self.set_max_latency(max_latency)

    # ------------------------------------------------------------------ evaluation
    def canonical(self, X: np.ndarray) -> np.ndarray:
        return self.layout.canonical(np.rint(np.asarray(X)).astype(int))

    def is_new(self, X: np.ndarray) -> np.ndarray:
        """Mask of the rows of canonical genomes ``X`` that the archive does not hold."""
        return np.fromiter((k not in self._index for k in row_keys(X)), dtype=bool, count=len(X))

    def missing(self, X: np.ndarray, full: bool = False) -> int:
        """How many archs of canonical genomes ``X`` :meth:`predict` would send to a predictor."""
        keys = row_keys(X)
        idx = np.fromiter((self._index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        n = len({k for k, i in zip(keys, idx) if i < 0})
        if full:
            n += len(set(idx[(idx >= 0)][np.isnan(self._acc[idx[idx >= 0]])]))
        return n

    def predict(self, X: np.ndarray, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, latency) of genomes ``X``; new canonical genomes go through the predictors in one
        batch, known ones come from the archive. Accuracy is NaN for archs over ``max_latency``, unless
        ``full`` (then it is predicted for them too, and kept)."""
        X = self.canonical(X)
        keys = row_keys(X)
        index = self._index
        idx = np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        new = np.flatnonzero(idx < 0)
        if len(new):
            first: dict[bytes, int] = {}
            for i in new:  # de-duplicate within the batch too
                first.setdefault(keys[i], int(i))
            uniq = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            U = X[uniq]
            t = time.perf_counter()
            batch = self.space.batch(U)
            lat = predict_array(self.latency, batch, "latency", positive=True)  # NaN, inf, <= 0: one error
            ok = np.ones(len(U), dtype=bool) if self.max_latency is None else lat <= self.max_latency
            acc = np.full(len(U), np.nan)
            if ok.all():
                acc = predict_array(self.accuracy, batch, "accuracy", finite=True)  # any finite number
            elif ok.any():
                acc[ok] = predict_array(self.accuracy, self.space.batch(U[ok]), "accuracy", finite=True)
            self.predict_s += time.perf_counter() - t
            base = len(self._acc)
            self._append(U, acc, lat)
            for j, k in enumerate(first):
                index[k] = base + j
            idx[new] = [index[keys[i]] for i in new]
        if full:
            fill = np.unique(idx[np.isnan(self._acc[idx])])
            if len(fill):
                t = time.perf_counter()
                acc = predict_array(self.accuracy, self.space.batch(self._X[fill].astype(int)), "accuracy", finite=True)
                self.predict_s += time.perf_counter() - t
                self._acc = self._acc.copy()
                self._acc[fill] = acc
                self.n_evals += len(fill)
        return self._acc[idx], self._lat[idx]

    def _append(self, U: np.ndarray, acc: np.ndarray, lat: np.ndarray) -> None:
        base = len(self._acc)
        self._X = np.concatenate([self._X, U.astype(np.int16)]) if base else U.astype(np.int16)
        self._acc = np.concatenate([self._acc, acc])
        self._lat = np.concatenate([self._lat, lat])
        self.n_evals += len(U)
        ok = np.arange(base, base + len(U))
        if self.max_latency is not None:
            ok = ok[lat <= self.max_latency]
        cand = np.concatenate([self._front, ok])
        self._front = cand[pareto_mask(self._acc[cand], self._lat[cand])]

    # ------------------------------------------------------------------ archive
    def archive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All distinct genomes evaluated so far (in evaluation order; int16, read-only) with their
        accuracy and latency."""
        return self._X, self._acc, self._lat

    def __len__(self) -> int:
        return len(self._acc)

    def front_indices(self) -> np.ndarray:
        """Archive indices of the non-dominated feasible archs (``latency <= max_latency``), sorted by
        latency."""
        return self._front[np.argsort(self._lat[self._front], kind="stable")]

    def set_max_latency(self, max_latency: float | None) -> None:
        """Set the feasibility limit (the front is recomputed). It may not grow past archived archs whose
        accuracy was skipped as infeasible."""
        new = None if max_latency is None else float(max_latency)
        skipped = self._lat[np.isnan(self._acc)]
        if len(skipped) and (new is None or (skipped <= new).any()):  # pragma: no cover - a misuse
            raise ValueError("max_latency cannot grow past archs evaluated as infeasible (their accuracy was skipped)")
        self.max_latency = new
        ok = np.arange(len(self._lat)) if self.max_latency is None else np.flatnonzero(self._lat <= self.max_latency)
        self._front = ok[pareto_mask(self._acc[ok], self._lat[ok])]

    def load_archive(self, X: np.ndarray, acc: np.ndarray, lat: np.ndarray) -> None:
        """Replace the archive by saved rows (canonical genomes, in evaluation order)."""
        self._X = np.asarray(X, dtype=np.int16).reshape(-1, self.n_var)
        self._acc = np.asarray(acc, dtype=float).copy()
        self._lat = np.asarray(lat, dtype=float).copy()
        self._index = {k: i for i, k in enumerate(row_keys(self._X))}
        self.n_evals = len(self._acc) + int(np.sum(np.isfinite(self._acc) & (self._lat > (self.max_latency or np.inf))))
        self.set_max_latency(self.max_latency)


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
        if not v > 0 or v != v or v == float("inf"):
            raise ValueError(f"search.budgets entry {b!r} must be a finite number > 0 (latency, same unit as the latency predictor)")
        out.append(v)
    return sorted(set(out))
