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


def pair_moves(x: np.ndarray, a0: float, l0: float, genes: np.ndarray, values: np.ndarray, a: np.ndarray,
               l: np.ndarray, budget: float, n_pairs: int) -> np.ndarray:
    """Up to ``n_pairs`` genomes that change two block genes of ``x`` at once, estimated to fit
    ``budget`` with the largest accuracy gains.

    ``genes``, ``values`` are ``x``'s single block moves (from :func:`neighbour_moves`) and ``a``, ``l``
    their objectives.
    A pair's accuracy and latency are estimated as ``x``'s (``a0``, ``l0``) plus both single effects --
    exact for latency when the predictor is a sum over layers (a lookup table), a first-order estimate
    otherwise; the true values come from evaluating the returned genomes.
    """
    da, dl = a - a0, l - l0
    i, j = np.triu_indices(len(genes), k=1)
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

    def _neighbourhoods(self, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Every walker's neighbourhood -- all single moves plus ``pairs`` estimated pair moves -- as
        ``(genomes, walker index)``. Estimating the pairs evaluates the walkers' single block moves
        (in one batch), unless that would take more than ``limit`` new evaluations."""
        problem, lay = self.problem, self.problem.layout
        W = self.walkers
        Y, row, gene, value = neighbour_moves(lay, W, "all")
        parts, owner = [Y], [row]
        block = gene < lay.n_slots if lay.mbconv else np.ones(len(gene), dtype=bool)
        if len(W) and (limit is None or problem.missing(Y[block], full=True) <= limit):
            a0, l0 = problem.predict(W)
            a, l = problem.predict(Y[block], full=True)  # pairs need the single effects, over-budget ones too
            rb, gb, vb = row[block], gene[block], value[block]
            for w in range(len(W)):
                m = rb == w
                P = pair_moves(W[w], a0[w], l0[w], gb[m], vb[m], a[m], l[m], self.budgets[self.walker_budget[w]], self.pairs)
                parts.append(P)
                owner.append(np.full(len(P), w))
        return lay.canonical(np.concatenate(parts)), np.concatenate(owner)

    def _walk(self, limit: int | None) -> np.ndarray | None:
        """Move every walker to its best improving feasible neighbour (evaluated last pass), drop the
        walkers that cannot improve, and return the new neighbourhoods."""
        problem = self.problem
        if not self.seeded:
            self._seed()
        elif len(self.walkers):
            N, owner = self._neighbourhoods(0)
            known = ~problem.is_new(N)
            N, owner = N[known], owner[known]
            a, l = problem.predict(N)
            a0 = problem.predict(self.walkers)[0]
            score = np.where(l <= np.asarray(self.budgets)[self.walker_budget[owner]], a, -np.inf)
            order = np.lexsort((np.arange(len(N)), -score, owner))  # per walker: best first, ties by position
            w, first = np.unique(owner[order], return_index=True)
            pick = order[first]
            moved = score[pick] > a0[w]
            self.walkers = N[pick[moved]]
            self.walker_budget = self.walker_budget[w[moved]]
        if not len(self.walkers):
            return None
        return self._neighbourhoods(limit)[0]

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
