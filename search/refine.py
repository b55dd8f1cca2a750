"""Refinement of a search's front: Pareto local search (PLS) and budget walkers.

Each pass evaluates one batch:

* PLS: the archive's front members that were not expanded yet (at most ``members`` of them, spread
  over the latency range) with all their single moves (:func:`neighbour_matrix`): one effective gene
  changed -- a block one step on the kernel/expand grid (``moves="grid"``) or to any other value
  (``"all"``), a depth or the resolution one step. Members within ``band`` (a fraction) below a
  budget get every move whatever ``moves`` says: the best arch under a budget comes from there, and
  the wider neighbourhood finds better ones (measured on 30 seeds of the README command: mean gap to
  the best known 0.012 -> 0 points at 15 ms, 0.19 -> 0.12 at 30 ms) for half the cost of ``"all"``
  everywhere;
* one step of every budget walker: a walker climbs under one budget from a good arch by its best
  feasible neighbour among all single moves and ``pairs`` combined moves (:func:`combo_moves`: two
  block changes at once, chosen by the single moves' measured effects); at a local optimum of those
  it tries as many triples once before it stops. The front's best archs under a budget are local
  optima for single moves, and the predictor's interactions between blocks make combinations that
  single effects rate as losses gain (measured: the best known 30 ms arch is three changes away from
  a default run's best, and the 8th-best estimated triple).

The front is recomputed after each pass; refinement ends when every front member has been expanded
and every walker has stopped, after ``passes`` passes, or when the evaluation budget is spent.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .operators import GenomeLayout, row_keys


def _move_table(layout: GenomeLayout, moves: str) -> np.ndarray:
    """``T[g, u, v]``: gene ``g`` may move from value ``u`` to ``v`` (see :func:`neighbour_moves`)."""
    cache = layout.__dict__.setdefault("_move_tables", {})
    if moves not in cache:
        n = int(layout.sizes.max())
        u, v = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        T = np.zeros((layout.n_var, n, n), dtype=bool)
        for g, size in enumerate(layout.sizes):
            inside = (v < size) & (u < size)
            if moves == "all" or not layout.mbconv:
                T[g] = inside & (v != u)
            elif g < layout.n_slots:
                T[g, :size, :size] = layout.is_grid_nbr[g].T
            else:
                T[g] = inside & (np.abs(v - u) == 1)
        cache[moves] = T
    return cache[moves]


def neighbour_moves(layout: GenomeLayout, M: np.ndarray, moves: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Genomes one effective gene change away from the rows of ``M``: ``(Y, row, gene, value)``,
    ``Y`` canonical (it may repeat across rows).

    ``moves="all"``: every other value of every effective gene. ``moves="grid"``: block genes move to
    a grid neighbour only (kernel or expand one step up/down), depth and resolution genes one step;
    about half the evaluations of "all" per member.
    """
    if moves not in ("all", "grid"):
        raise ValueError(f"search.refine.moves={moves!r} is unknown; allowed values: ['all', 'grid']")
    M = layout.canonical(M)
    T = _move_table(layout, moves)
    ok = T[np.arange(layout.n_var)[None, :], M] & layout.active(M)[:, :, None]  # (rows, genes, values)
    row, gene, value = np.nonzero(ok)
    Y = M[row]
    Y[np.arange(len(row)), gene] = value
    return layout.canonical(Y), row, gene, value


def neighbour_matrix(layout: GenomeLayout, M: np.ndarray, moves: str = "all") -> np.ndarray:
    """The genomes of :func:`neighbour_moves`."""
    return neighbour_moves(layout, M, moves)[0]


def combo_moves(x: np.ndarray, a0: float, l0: float, genes: np.ndarray, values: np.ndarray, a: np.ndarray,
                l: np.ndarray, budget: float, n: int, size: int = 2) -> np.ndarray:
    """Up to ``n`` genomes that change ``size`` (>= 2) block genes of ``x`` at once: the ones estimated
    most accurate among those estimated to fit ``budget``.

    ``genes``, ``values`` are ``x``'s single block moves (from :func:`neighbour_moves`) and ``a``, ``l``
    their objectives. A combination's accuracy and latency are estimated as ``x``'s (``a0``, ``l0``)
    plus the single effects -- exact for latency when the predictor is a sum over layers (a lookup
    table), a first-order estimate otherwise; the true values come from evaluating the returned
    genomes. The estimate is not required to gain: at a local optimum of single moves every
    combination is estimated to lose, and the accuracy predictor's interactions make some of them
    gain (measured: the best known 30 ms arch is the 8th-best estimated triple from a default
    search's best). Pairs are enumerated; a larger combination extends the ``3 n`` best-estimated ones
    a move smaller (within the budget plus the largest latency one move saves) by one more move.
    """
    da, dl = a - a0, l - l0
    m = len(genes)
    i, j = _pairs(m)
    ok = genes[i] != genes[j]
    i, j = i[ok], j[ok]
    idx = np.stack([i, j], axis=1)
    gain, cost = da[i] + da[j], dl[i] + dl[j]
    slack = budget + max(-dl.min(initial=0.0), 0.0)
    for s in range(3, size + 1):
        beam = np.flatnonzero(l0 + cost <= slack)
        beam = beam[_best(gain[beam], 3 * n)]
        g, c = gain[beam][:, None] + da[None, :], cost[beam][:, None] + dl[None, :]
        fit = l0 + c <= (budget if s == size else slack)
        for col in idx[beam].T:
            fit &= genes[None, :] != genes[col][:, None]
        r, k = np.nonzero(fit)
        top = _best(g[r, k], 4 * n)  # a combination comes from several beam members: keep each once
        idx = np.sort(np.concatenate([idx[beam[r[top]]], k[top, None]], axis=1), axis=1)
        _, first = np.unique(np.ravel_multi_index(idx.T, (m,) * s), return_index=True)
        first = np.sort(first)
        idx, gain, cost = idx[first], g[r[top], k[top]][first], c[r[top], k[top]][first]
    fit = np.flatnonzero(l0 + cost <= budget)
    idx = idx[fit[_best(gain[fit], n)]]
    P = np.repeat(x[None], len(idx), axis=0)
    r = np.arange(len(idx))
    for col in idx.T:
        P[r, genes[col]] = values[col]
    return P


@functools.lru_cache(maxsize=64)
def _pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, k=1)


def _best(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first (ties by position)."""
    if len(score) > k:
        part = np.sort(np.argpartition(-score, k)[:k])
        return part[np.argsort(-score[part], kind="stable")]
    return np.argsort(-score, kind="stable")


class Refiner:
    """Refinement of an :class:`~hwnas.search.problem.ArchProblem`'s archive front (see the module doc).

    Each pass returns one batch of candidates (:meth:`candidates`): the single moves of up to
    ``members`` front members not expanded yet (Pareto local search; every move for those within
    ``band`` below a budget), and one step of each budget
    walker. Walkers start, per budget, from the best arch of each of the ``starts`` best
    (depth, resolution) classes under the budget -- different basins -- and climb by the best feasible
    single or pair move (``pairs`` pair moves per step); a walker none of those improves tries
    ``pairs`` triples, and stops if they do not improve either. State (checkpointed with the search):
    expanded members, walkers with their budgets and move sizes, pass count.
    """

    def __init__(self, problem: Any, members: int | None, moves: str, pairs: int, starts: int, budgets: list[float],
                 band: float = 0.0) -> None:
        if moves not in ("all", "grid"):
            raise ValueError(f"search.refine.moves={moves!r} is unknown; allowed values: ['all', 'grid']")
        self.problem = problem
        self.members = members
        self.moves = moves
        self.pairs = int(pairs)
        self.starts = int(starts)
        self.budgets = list(budgets)
        self.band = float(band)
        self.expanded: set[bytes] = set()
        self.walkers = np.zeros((0, problem.n_var), dtype=int)
        self.walker_budget = np.zeros(0, dtype=int)
        self.walker_size = np.zeros(0, dtype=int)
        self.seeded = False
        self.passes = 0
        self.converged = False
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # the walkers' last neighbourhoods

    # ------------------------------------------------------------------ Pareto local search
    def _pls(self) -> np.ndarray | None:
        problem = self.problem
        X, _, lat = problem.archive()
        front = problem.front_indices()
        todo = [i for i, k in zip(front, row_keys(X[front])) if k not in self.expanded]
        if not todo:
            return None
        if self.members is not None and len(todo) > self.members:
            order = np.array(todo)[np.argsort(lat[todo], kind="stable")]
            pick = np.unique(np.linspace(0, len(order) - 1, int(self.members)).round().astype(int))
            todo = list(order[pick])
        self.expanded.update(row_keys(X[todo]))
        todo = np.asarray(todo, dtype=int)
        if not self.band or not self.budgets or self.moves == "all":
            return neighbour_matrix(problem.layout, X[todo], self.moves)
        b = np.asarray(self.budgets, dtype=float)[None, :]
        L = lat[todo][:, None]
        near = ((L <= b) & (L >= b * (1.0 - self.band))).any(axis=1)
        parts = [neighbour_matrix(problem.layout, X[todo[m]], mv) for m, mv in ((near, "all"), (~near, self.moves)) if m.any()]
        return np.concatenate(parts)

    # ------------------------------------------------------------------ budget walkers
    def _seed(self) -> None:
        X, acc, lat = self.problem.archive()
        lay = self.problem.layout
        ns = lay.n_slots if lay.mbconv else lay.n_var
        rows, which = [], []
        for bi, b in enumerate(self.budgets):
            ok = np.flatnonzero(lat <= b)
            classes: dict[bytes, int] = {}
            for i in ok[np.argsort(-acc[ok], kind="stable")]:
                classes.setdefault(X[i, ns:].tobytes(), int(i))
                if len(classes) >= self.starts:
                    break
            rows += list(classes.values())
            which += [bi] * len(classes)
        self.walkers = X[rows].astype(int) if rows else np.zeros((0, self.problem.n_var), dtype=int)
        self.walker_budget = np.array(which, dtype=int)
        self.walker_size = np.full(len(rows), 2, dtype=int)
        self.seeded = True

    def _neighbourhoods(self, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Every walker's neighbourhood -- all single moves, ``pairs`` estimated pair moves and, for a
        walker at a local optimum of those (size 3), ``pairs`` estimated triples -- as ``(genomes,
        walker index)``. Estimating the combinations evaluates the walkers' single block moves (in one
        batch), unless that would take more than ``limit`` new evaluations."""
        problem, lay = self.problem, self.problem.layout
        W = self.walkers
        Y, row, gene, value = neighbour_moves(lay, W, "all")
        parts, owner = [Y], [row]
        block = gene < lay.n_slots if lay.mbconv else np.ones(len(gene), dtype=bool)
        if len(W) and (limit is None or problem.missing(Y[block], full=True) <= limit):
            a0, l0 = problem.predict(W)
            a, l = problem.predict(Y[block], full=True)  # combinations need the single effects, over-budget ones too
            rb, gb, vb = row[block], gene[block], value[block]
            for w in range(len(W)):
                m = rb == w
                args = (W[w], a0[w], l0[w], gb[m], vb[m], a[m], l[m], self.budgets[self.walker_budget[w]], self.pairs)
                for size in range(2, int(self.walker_size[w]) + 1):
                    P = combo_moves(*args, size=size)
                    parts.append(P)
                    owner.append(np.full(len(P), w))
        return lay.canonical(np.concatenate(parts)), np.concatenate(owner)

    def _walk(self, limit: int | None) -> np.ndarray | None:
        """Move every walker to its best improving feasible neighbour (evaluated last pass); a walker
        that cannot improve tries triples once (size 3), then stops. Returns the new neighbourhoods."""
        problem = self.problem
        if not self.seeded:
            self._seed()
        elif len(self.walkers):
            N, owner = self._last if self._last is not None else self._neighbourhoods(0)  # rebuilt after a resume
            known = ~problem.is_new(N)
            N, owner = N[known], owner[known]
            a, l = problem.predict(N)
            a0 = problem.predict(self.walkers)[0]
            score = np.where(l <= np.asarray(self.budgets)[self.walker_budget[owner]], a, -np.inf)
            order = np.lexsort((np.arange(len(N)), -score, owner))  # per walker: best first, ties by position
            w, first = np.unique(owner[order], return_index=True)
            best = np.full(len(self.walkers), -np.inf)
            best[w] = score[order[first]]
            moved = best > a0
            stay = ~moved & (self.walker_size == 2)
            walkers = self.walkers.copy()
            walkers[w[moved[w]]] = N[order[first][moved[w]]]
            keep = moved | stay
            self.walkers = walkers[keep]
            self.walker_budget = self.walker_budget[keep]
            self.walker_size = np.where(moved, 2, 3)[keep]
        if not len(self.walkers):
            return None
        self._last = self._neighbourhoods(limit)
        return self._last[0]

    # ------------------------------------------------------------------ passes
    def candidates(self, limit: int | None = None) -> np.ndarray:
        """The genomes the next pass evaluates (empty when converged); at most ``limit`` new
        evaluations are spent on estimating pair moves here."""
        parts = [p for p in (self._pls(), self._walk(limit) if self.pairs and self.starts else None) if p is not None]
        if not parts:
            self.converged = True
            return np.zeros((0, self.problem.n_var), dtype=int)
        return np.concatenate(parts)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        keys = sorted(self.expanded)
        expanded = (np.frombuffer(b"".join(keys), dtype=np.int16).reshape(len(keys), -1) if keys
                    else np.zeros((0, self.problem.n_var), dtype=np.int16))
        return {"refine_expanded": expanded, "refine_walkers": self.walkers.astype(np.int16),
                "refine_walker_budget": self.walker_budget.astype(np.int16),
                "refine_walker_size": self.walker_size.astype(np.int16)}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self._last = None
        self.expanded = set(row_keys(arrays["refine_expanded"]))
        self.walkers = arrays["refine_walkers"].astype(int)
        self.walker_budget = arrays["refine_walker_budget"].astype(int)
        self.walker_size = arrays["refine_walker_size"].astype(int)
        if len(self.walker_budget) and (self.walker_budget.min() < 0 or self.walker_budget.max() >= len(self.budgets)):
            raise ValueError("a budget walker refers to no budget")
        if self.walker_size.shape != (len(self.walkers),) or not np.isin(self.walker_size, (2, 3)).all():
            raise ValueError("the budget walkers' move sizes do not match the walkers")
        self.seeded = bool(meta["refine_seeded"])
        self.passes = int(meta["refine_passes"])
        self.converged = bool(meta["refine_converged"])
