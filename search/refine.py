"""Refinement of a search's front by Pareto local search (PLS).

Each pass takes the archive's front members that were not expanded yet (at most ``members`` of them,
spread over the latency range) and evaluates all their neighbours in one batch:

* single moves (:func:`neighbour_matrix`): one effective gene changed -- a block one step on the
  kernel/expand grid (``moves="grid"``) or to any other value (``"all"``), a depth or the resolution
  one step;
* pair moves (:func:`pair_moves`), for the best member under each latency budget: two block changes
  at once, chosen from the single moves by their measured effects. With latency budgets the front's
  best members are local optima for single moves; the misses measured against the best known archs
  were one pair move away.

The front is recomputed after each pass; refinement ends when every front member has been expanded,
after ``passes`` passes, or when the evaluation budget is spent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .operators import GenomeLayout, row_keys


def neighbour_matrix(layout: GenomeLayout, M: np.ndarray, moves: str = "all") -> np.ndarray:
    """Canonical genomes one effective gene change away from the rows of ``M`` (may repeat).

    ``moves="all"``: every other value of every effective gene. ``moves="grid"``: block genes move to
    a grid neighbour only (kernel or expand one step up/down), depth and resolution genes one step;
    about half the evaluations of "all" per member.
    """
    if moves not in ("all", "grid"):
        raise ValueError(f"search.refine.moves={moves!r} is unknown; allowed values: ['all', 'grid']")
    M = layout.canonical(M)
    if not len(M):
        return M
    act = layout.active(M)
    sizes = layout.sizes
    grid = moves == "grid" and layout.mbconv
    blocks = []
    for g in range(layout.n_var):
        rows = np.flatnonzero(act[:, g])
        if not len(rows):
            continue
        if grid:
            cur = M[rows, g]
            if g < layout.n_slots:
                is_nbr = layout.is_grid_nbr[g]
                for v in range(int(sizes[g])):
                    r = rows[is_nbr[v, cur]]
                    if len(r):
                        Y = M[r].copy()
                        Y[:, g] = v
                        blocks.append(Y)
            else:
                for step in (-1, 1):
                    ok = (cur + step >= 0) & (cur + step < sizes[g])
                    if ok.any():
                        Y = M[rows[ok]].copy()
                        Y[:, g] += step
                        blocks.append(Y)
            continue
        for v in range(int(sizes[g])):
            r = rows[M[rows, g] != v]
            if len(r):
                Y = M[r].copy()
                Y[:, g] = v
                blocks.append(Y)
    if not blocks:
        return np.zeros((0, M.shape[1]), dtype=int)
    return layout.canonical(np.concatenate(blocks))


def single_block_moves(layout: GenomeLayout, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every genome that differs from ``x`` in one active block gene: ``(Y, gene, value)``."""
    x = layout.canonical(x)[0]
    act = np.flatnonzero(layout.active(x[None])[0])
    if layout.mbconv:
        act = act[act < layout.n_slots]
    genes, values = [], []
    for g in act:
        for v in range(int(layout.sizes[g])):
            if v != x[g]:
                genes.append(g)
                values.append(v)
    genes_a, values_a = np.array(genes, dtype=int), np.array(values, dtype=int)
    Y = np.repeat(x[None], len(genes_a), axis=0)
    Y[np.arange(len(genes_a)), genes_a] = values_a
    return Y, genes_a, values_a


def pair_moves(x: np.ndarray, a0: float, l0: float, Y: np.ndarray, genes: np.ndarray, values: np.ndarray,
               a: np.ndarray, l: np.ndarray, budget: float, n_pairs: int) -> np.ndarray:
    """Up to ``n_pairs`` genomes that change two block genes of ``x`` at once, estimated to fit
    ``budget`` with the largest accuracy gains.

    ``Y`` are ``x``'s single block moves (:func:`single_block_moves`) with their objectives ``a``, ``l``.
    A pair's accuracy and latency are estimated as ``x``'s (``a0``, ``l0``) plus both single effects --
    exact for latency when the predictor is a sum over layers (a lookup table), a first-order estimate
    otherwise; the true values come from evaluating the returned genomes.
    """
    da, dl = a - a0, l - l0
    i, j = np.triu_indices(len(Y), k=1)
    ok = genes[i] != genes[j]
    i, j = i[ok], j[ok]
    gain = da[i] + da[j]
    keep = (l0 + dl[i] + dl[j] <= budget) & (gain > 0)
    i, j, gain = i[keep], j[keep], gain[keep]
    o = np.argsort(-gain, kind="stable")[:n_pairs]
    P = np.repeat(x[None], len(o), axis=0)
    r = np.arange(len(o))
    P[r, genes[i[o]]] = values[i[o]]
    P[r, genes[j[o]]] = values[j[o]]
    return P


class Refiner:
    """Refinement of an :class:`~hwnas.search.problem.ArchProblem`'s archive front (see the module doc).

    Each pass returns one batch of candidates (:meth:`candidates`): the single moves of up to
    ``members`` front members not expanded yet (Pareto local search), and one step of each budget
    walker. Walkers start, per budget, from the best arch of each of the ``starts`` best
    (depth, resolution) classes under the budget -- different basins -- and climb by the best feasible
    single or pair move (``pairs`` pair moves per step) until none improves. State (checkpointed with
    the search): expanded members, walkers, pass count.
    """

    def __init__(self, problem: Any, members: int | None, moves: str, pairs: int, starts: int, budgets: list[float]) -> None:
        if moves not in ("all", "grid"):
            raise ValueError(f"search.refine.moves={moves!r} is unknown; allowed values: ['all', 'grid']")
        self.problem = problem
        self.members = members
        self.moves = moves
        self.pairs = int(pairs)
        self.starts = int(starts)
        self.budgets = list(budgets)
        self.expanded: set[bytes] = set()
        self.walkers = np.zeros((0, problem.n_var), dtype=int)
        self.walker_budget = np.zeros(0, dtype=int)
        self.seeded = False
        self.passes = 0
        self.converged = False

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
        return neighbour_matrix(problem.layout, X[todo], self.moves)

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
        self.seeded = True

    def _moves(self, x: np.ndarray, budget: float, limit: int | None) -> tuple[np.ndarray, int]:
        """The walker's neighbourhood (single moves + estimated pair moves) and the evaluations used
        to estimate the pairs."""
        problem, lay = self.problem, self.problem.layout
        singles = neighbour_matrix(lay, x[None], "all")
        Y, genes, values = single_block_moves(lay, x[None])
        new = int(problem.is_new(Y).sum())
        if len(Y) < 2 or (limit is not None and new > limit):
            return singles, 0
        a0, l0 = problem.predict(x[None])
        a, l = problem.predict(Y)
        return np.concatenate([singles, pair_moves(x, a0[0], l0[0], Y, genes, values, a, l, budget, self.pairs)]), new

    def _walk(self, limit: int | None) -> np.ndarray | None:
        """Move every walker to its best improving feasible neighbour (evaluated last pass) and return
        the new neighbourhoods; walkers that cannot improve stop."""
        problem = self.problem
        if not self.seeded:
            self._seed()
            fresh = True
        else:
            fresh = False
        keep, parts = [], []
        for w, (x, bi) in enumerate(zip(self.walkers, self.walker_budget)):
            b = self.budgets[bi]
            if not fresh:
                N, _ = self._moves(x, b, 0)
                N = N[~problem.is_new(problem.canonical(N))]  # what the last pass evaluated
                a, l = problem.predict(N)
                a0 = problem.predict(x[None])[0][0]
                score = np.where(l <= b, a, -np.inf)
                k = int(np.argmax(score))
                if not score[k] > a0:
                    continue
                x = problem.canonical(N[k][None])[0]
                self.walkers[w] = x
            N, used = self._moves(x, b, limit)
            if limit is not None:
                limit -= used
            keep.append(w)
            parts.append(N)
        self.walkers, self.walker_budget = self.walkers[keep], self.walker_budget[keep]
        return np.concatenate(parts) if parts else None

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
                "refine_walker_budget": self.walker_budget.astype(np.int16)}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.expanded = set(row_keys(arrays["refine_expanded"]))
        self.walkers = arrays["refine_walkers"].astype(int)
        self.walker_budget = arrays["refine_walker_budget"].astype(int)
        if len(self.walker_budget) and (self.walker_budget.min() < 0 or self.walker_budget.max() >= len(self.budgets)):
            raise ValueError("a budget walker refers to no budget")
        self.seeded = bool(meta["refine_seeded"])
        self.passes = int(meta["refine_passes"])
        self.converged = bool(meta["refine_converged"])
