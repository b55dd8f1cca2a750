"""The bi-objective NAS problem (maximise accuracy, minimise latency) over a space's genome, with an
archive of every arch evaluated.

:class:`ArchProblem` hands each batch of new genomes to the predictors at once, as a
:class:`hwnas.spaces.ArchBatch` (``space.batch(X)``), so predictors with a vectorised path never build
arch objects. Every distinct canonical genome is evaluated once: repeats are served from the archive
(looked up by :class:`GenomeIndex`, with numpy), and the archive's feasible non-dominated set (``latency <= max_latency``) is kept up to date, so the
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

from .operators import GenomeLayout


class GenomeIndex:
    """Archive positions of canonical genomes, found with numpy instead of a Python loop over rows: each
    genome is packed into a few 64-bit words (mixed radix over the genes' sizes: exact), the words are
    mixed into one 64-bit hash kept sorted for binary search, and every hit is checked word by word (so
    two genomes with the same hash are still told apart)."""

    _MIX = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, sizes: np.ndarray) -> None:
        words: list[list[int]] = [[]]
        room = 1
        for g, n in enumerate(int(s) for s in sizes):
            if room * n >= 2**63:
                words.append([])
                room = 1
            words[-1].append(g)
            room *= n
        self.words = [(np.array(w), np.cumprod([1] + [int(sizes[g]) for g in w[:-1]]).astype(np.uint64)) for w in words]
        self.hash = np.zeros(0, np.uint64)  # sorted
        self.keys = np.zeros((0, len(words)), np.uint64)  # the packed words of each sorted hash
        self.pos = np.zeros(0, np.int64)  # archive position of each sorted hash

    def pack(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_words)`` packed words of canonical genomes ``X``."""
        X = np.asarray(X)
        return np.stack([X[:, genes].astype(np.uint64) @ mult for genes, mult in self.words], axis=1)

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        h = keys[:, 0].copy()
        for w in keys.T[1:]:
            h = h * self._MIX + w
        return h

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Archive positions of packed ``keys`` (-1: not in the archive)."""
        h = self._hash(keys)
        lo, hi = np.searchsorted(self.hash, h, "left"), np.searchsorted(self.hash, h, "right")
        out = np.full(len(keys), -1, np.int64)
        hit = np.flatnonzero(hi > lo)
        same = (self.keys[lo[hit]] == keys[hit]).all(1)
        out[hit[same]] = self.pos[lo[hit[same]]]
        for i in hit[~same]:  # another genome with the same hash comes first
            for j in range(lo[i] + 1, hi[i]):
                if (self.keys[j] == keys[i]).all():
                    out[i] = self.pos[j]
        return out

    def add(self, keys: np.ndarray, pos: np.ndarray) -> None:
        """Add packed ``keys`` that are new (and distinct) at archive positions ``pos``."""
        h = self._hash(keys)
        o = np.argsort(h, kind="stable")
        at = np.searchsorted(self.hash, h[o], "right")
        self.hash = np.insert(self.hash, at, h[o])
        self.keys = np.insert(self.keys, at, keys[o], axis=0)
        self.pos = np.insert(self.pos, at, pos[o])


def unique_first(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``keys``: ``(first, inverse)`` -- the index of each distinct row's first
    occurrence, in order of appearance, and for every row the number of its distinct row."""
    o = np.lexsort(keys.T[::-1])
    start = np.ones(len(o), dtype=bool)
    start[1:] = (keys[o[1:]] != keys[o[:-1]]).any(1)
    group = np.cumsum(start) - 1
    first_sorted = np.minimum.reduceat(o, np.flatnonzero(start)) if len(o) else np.zeros(0, np.int64)
    order = np.argsort(first_sorted, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    inverse = np.empty(len(o), np.int64)
    inverse[o] = rank[group]
    return first_sorted[order], inverse


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
        self._index = GenomeIndex(self.layout.sizes)
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
        return self._index.find(self._index.pack(X)) < 0

    def missing(self, X: np.ndarray, full: bool = False) -> int:
        """How many archs of canonical genomes ``X`` :meth:`predict` would send to a predictor."""
        keys = self._index.pack(X)
        idx = self._index.find(keys)
        n = len(unique_first(keys[idx < 0])[0])
        if full:
            n += len(set(idx[(idx >= 0)][np.isnan(self._acc[idx[idx >= 0]])]))
        return n

    def predict(self, X: np.ndarray, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, latency) of genomes ``X``; new canonical genomes go through the predictors in one
        batch, known ones come from the archive. Accuracy is NaN for archs over ``max_latency``, unless
        ``full`` (then it is predicted for them too, and kept)."""
        X = self.canonical(X)
        keys = self._index.pack(X)
        idx = self._index.find(keys)
        new = np.flatnonzero(idx < 0)
        if len(new):
            first, inverse = unique_first(keys[new])  # de-duplicated within the batch too,
            uniq = new[first]  # joining the archive in order of first appearance
            U = X[uniq]
            t = time.perf_counter()
            batch = self.space.batch(U)
            lat = predict_array(self.latency, batch, "latency")
            if not np.isfinite(lat).all():
                raise ValueError(f"the latency predictor returned a non-finite value for arch {self.space.decode(U[~np.isfinite(lat)][:1])[0]}")
            ok = np.ones(len(U), dtype=bool) if self.max_latency is None else lat <= self.max_latency
            acc = np.full(len(U), np.nan)
            if ok.all():
                acc = predict_array(self.accuracy, batch, "accuracy")
            elif ok.any():
                acc[ok] = predict_array(self.accuracy, self.space.batch(U[ok]), "accuracy")
            self.predict_s += time.perf_counter() - t
            if not np.isfinite(acc[ok]).all():
                bad = U[ok][~np.isfinite(acc[ok])][:1]
                raise ValueError(f"the accuracy predictor returned a non-finite value for arch {self.space.decode(bad)[0]}")
            base = len(self._acc)
            self._append(U, acc, lat)
            self._index.add(keys[uniq], base + np.arange(len(U)))
            idx[new] = base + inverse
        if full:
            fill = np.unique(idx[np.isnan(self._acc[idx])])
            if len(fill):
                t = time.perf_counter()
                acc = predict_array(self.accuracy, self.space.batch(self._X[fill].astype(int)), "accuracy")
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
        self._index = GenomeIndex(self.layout.sizes)
        keys = self._index.pack(self._X)
        if len(unique_first(keys)[0]) != len(keys):
            raise ValueError("the archive holds the same arch twice")
        self._index.add(keys, np.arange(len(keys)))
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
