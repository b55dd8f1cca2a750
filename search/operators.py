"""Genetic operators for the integer genome of an :class:`hwnas.spaces.SearchSpace`.

The genome of an MBConv space is ``[block per slot] + [depth per unit] + [resolution]``; every gene is
an index into that gene's allowed choices, so any integer vector within the bounds decodes to a valid
arch. Genes of inactive slots (beyond a unit's depth) do not change the network. The operators here
use that structure:

* :class:`ArchSampling` -- uniform genomes, optionally seeded with structured archs (the smallest, the
  largest, and "homogeneous" archs using one block, one depth and one resolution everywhere), which
  span the latency range from the first generation on;
* :class:`ArchCrossover` -- unit-wise (a child takes each unit -- its blocks *and* its depth -- whole
  from one parent) or gene-wise uniform crossover;
* :class:`ArchMutation` -- per-gene resampling at a rate over the genes that matter (active slots,
  depths, resolution), with neighbour moves (one step up or down) on ordered genes;
* :meth:`GenomeLayout.canonical` -- inactive genes set to 0, so equal networks have equal genomes;
  duplicates are found by hashing canonical rows (:func:`row_keys`, linear time).

Each operator works on a whole genome matrix at once and draws from the ``numpy.random.Generator`` it
is given, so a seeded run is reproducible.
"""

from __future__ import annotations


import numpy as np

from hwnas.spaces import SearchSpace


class GenomeLayout:
    """Which genes of a space's genome are blocks, depths, resolution (MBConv layout), with helpers.

    Spaces without an MBConv layout are treated as a flat genome (every gene independent, unordered).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.sizes = np.asarray(space.genome_sizes, dtype=int)
        self.n_var = len(self.sizes)
        self.mbconv = all(hasattr(space, a) for a in ("n_slots", "n_units", "slot_unit", "slot_pos", "depth_choices"))
        if self.mbconv:
            ns, nu = int(space.n_slots), int(space.n_units)
            self.n_slots, self.n_units = ns, nu
            self.slot_unit = np.asarray(space.slot_unit)
            self.slot_pos = np.asarray(space.slot_pos)
            self.depth_genes = np.arange(ns, ns + nu)
            self.res_gene = ns + nu
            # a "group" is what unit-wise crossover moves together: unit u = its slots + its depth gene;
            # the resolution is its own group
            self.group = np.concatenate([self.slot_unit, np.arange(nu), [nu]])
            self.n_groups = nu + 1
            ordered = np.zeros(self.n_var, dtype=bool)
            ordered[self.depth_genes] = True
            ordered[self.res_gene] = True
            self.ordered = ordered
            self.depth_values = [np.asarray(c) for c in space.depth_choices]
            # block-gene "grid" neighbours: same kernel with the next/previous expand, or same expand
            # with the next/previous kernel (within the slot's allowed block choices)
            self.block_grid = []
            kc, ec = list(space.kernel_choices), list(space.expand_choices)
            for s in range(ns):
                choices = list(space.block_choices[int(self.slot_unit[s])])
                pos = {b: i for i, b in enumerate(choices)}
                nb = []
                for k, e in choices:
                    ki, ei = kc.index(k), ec.index(e)
                    cand = []
                    for dk, de in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        if 0 <= ki + dk < len(kc) and 0 <= ei + de < len(ec):
                            b = (kc[ki + dk], ec[ei + de])
                            if b in pos:
                                cand.append(pos[b])
                    nb.append(cand)
                self.block_grid.append(nb)
            # is_grid_nbr[s][v, u]: value v is a grid neighbour of value u at slot s
            self.is_grid_nbr = []
            for s in range(ns):
                n = int(self.sizes[s])
                m = np.zeros((n, n), dtype=bool)
                for u, cand in enumerate(self.block_grid[s]):
                    m[cand, u] = True
                self.is_grid_nbr.append(m)
        else:
            self.group = np.arange(self.n_var)
            self.n_groups = self.n_var
            self.ordered = np.zeros(self.n_var, dtype=bool)

    def active(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask ``(n, n_var)`` of the genes that change the network."""
        X = np.atleast_2d(X)
        if not self.mbconv:
            return np.ones(X.shape, dtype=bool)
        mask = np.ones(X.shape, dtype=bool)
        d = np.stack([self.depth_values[u][X[:, self.n_slots + u]] for u in range(self.n_units)], axis=1)
        mask[:, : self.n_slots] = self.slot_pos[None, :] < d[:, self.slot_unit]
        return mask & (self.sizes[None, :] > 1)

    def canonical(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X)).astype(int)
        if self.mbconv:
            return np.where(self.active(X) | (np.arange(self.n_var) >= self.n_slots)[None, :], X, 0)
        return X


def row_keys(X: np.ndarray) -> list[bytes]:
    """Hashable keys of integer rows (for duplicate detection)."""
    X = np.ascontiguousarray(np.atleast_2d(X), dtype=np.int16)
    return [r.tobytes() for r in X]


def unique_rows(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` without repeats, first occurrence kept, order preserved."""
    seen: set[bytes] = set()
    keep = []
    for i, k in enumerate(row_keys(X)):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return X[keep]


# ============================================================================ sampling
def structured_genomes(space: SearchSpace) -> np.ndarray:
    """Smallest and largest genome plus every "homogeneous" genome (one block choice index, one depth
    index, one resolution index for all units), canonical and unique. Block indices follow the space's
    (kernel, expand) order, so index 0 is the cheapest block and the last one the most expensive."""
    lay = GenomeLayout(space)
    sizes = lay.sizes
    lo, hi = np.zeros_like(sizes), sizes - 1
    rows = [lo, hi]
    if lay.mbconv:
        nb = int(sizes[: lay.n_slots].max())
        nd = int(sizes[lay.depth_genes].max())
        nr = int(sizes[lay.res_gene])
        for b in range(nb):
            for d in range(nd):
                for r in range(nr):
                    g = np.empty_like(sizes)
                    g[: lay.n_slots] = np.minimum(b, sizes[: lay.n_slots] - 1)
                    g[lay.depth_genes] = np.minimum(d, sizes[lay.depth_genes] - 1)
                    g[lay.res_gene] = r
                    rows.append(g)
    return unique_rows(lay.canonical(np.array(rows)))


class ArchSampling:
    """Uniform random genomes; with ``structured > 0`` that fraction of the initial population is
    drawn from :func:`structured_genomes` (always including the smallest and the largest arch)."""

    def __init__(self, space: SearchSpace, structured: float) -> None:
        self.space = space
        self.structured = float(structured)
        self.layout = GenomeLayout(space)

    def __call__(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples`` distinct canonical genomes."""
        sizes = self.layout.sizes
        parts = []
        n_struct = int(round(self.structured * n_samples))
        if n_struct > 0:
            S = structured_genomes(self.space)
            if len(S) > n_struct:
                pick = np.concatenate([[0, 1], 2 + rng.choice(len(S) - 2, size=max(n_struct - 2, 0), replace=False)])
                S = S[pick[:n_struct]]
            parts.append(S)
        n_rand = n_samples - sum(len(p) for p in parts)
        # oversample the random part so duplicates can be dropped and still fill the population
        R = (rng.random((max(2 * n_rand, n_rand + 16), len(sizes))) * sizes).astype(int)
        parts.append(self.layout.canonical(R))
        X = unique_rows(np.concatenate(parts))[:n_samples]
        return X


# ============================================================================ crossover
class ArchCrossover:
    """Two parents -> two complementary children.

    ``mode="unit"``: each unit (its slot genes and its depth gene) and the resolution gene come whole
    from one parent, chosen with probability 1/2 -- a unit is a coherent building block, so this
    recombines working stages instead of shredding them. ``mode="uniform"``: every gene independently.
    ``mode="mixed"``: per mating, one of the two at random.
    """

    def __init__(self, space: SearchSpace, mode: str, prob: float) -> None:
        if mode not in ("unit", "uniform", "mixed"):
            raise ValueError(f"search.crossover.mode={mode!r} is unknown; allowed values: ['unit', 'uniform', 'mixed']")
        self.space = space
        self.mode = mode
        self.prob = float(prob)
        self.layout = GenomeLayout(space)

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Parents ``X`` of shape ``(2, n_matings, n_var)`` -> children of the same shape; a mating
        recombines with probability ``prob``, otherwise its children are copies of the parents."""
        mate = rng.random(X.shape[1]) < self.prob
        return np.where(mate[None, :, None], self.recombine(X, rng), X)

    def recombine(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Children of every mating of ``X`` (``(2, n_matings, n_var)``), ``prob`` aside."""
        _, n_matings, n_var = X.shape
        lay = self.layout
        unit_swap = rng.random((n_matings, lay.n_groups)) < 0.5
        M_unit = unit_swap[:, lay.group]
        M_gene = rng.random((n_matings, n_var)) < 0.5
        if self.mode == "unit":
            M = M_unit
        elif self.mode == "uniform":
            M = M_gene
        else:
            M = np.where((rng.random(n_matings) < 0.5)[:, None], M_unit, M_gene)
        a, b = X[0], X[1]
        return np.stack([np.where(M, b, a), np.where(M, a, b)])


# ============================================================================ mutation
class ArchMutation:
    """Mutate each effective gene (active slot, depth, resolution) with probability ``prob_var``
    (default ``1.5 / n_effective``; at least one gene always changes). A mutated ordered gene (depth,
    resolution) moves one step up or down with probability ``neighbour``, else it is resampled; block
    genes are resampled to a different value."""

    def __init__(self, space: SearchSpace, prob_var: float | None, neighbour: float) -> None:
        self.space = space
        self.rate = prob_var
        self.neighbour = float(neighbour)
        self.layout = GenomeLayout(space)

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lay = self.layout
        X = np.asarray(X).astype(int).copy()
        n, n_var = X.shape
        sizes = lay.sizes
        act = lay.active(X)
        n_act = np.maximum(act.sum(1, keepdims=True), 1)
        rate = (1.5 / n_act) if self.rate is None else np.full((n, 1), float(self.rate))
        hit = (rng.random((n, n_var)) < rate) & act
        # at least one effective gene per individual
        none = ~hit.any(1)
        if none.any():
            scores = rng.random((int(none.sum()), n_var)) * act[none]
            hit[np.flatnonzero(none), scores.argmax(1)] = True
        # resample to a different value: v' = (v + 1 + randint(size - 1)) % size
        shift = 1 + (rng.random((n, n_var)) * np.maximum(sizes - 1, 1)).astype(int)
        resampled = (X + shift) % sizes
        step = np.where(rng.random((n, n_var)) < 0.5, -1, 1)
        moved = X + step
        moved = np.where(moved < 0, 1, moved)
        moved = np.where(moved >= sizes, sizes - 2, moved)
        moved = np.clip(moved, 0, sizes - 1)
        use_step = lay.ordered[None, :] & (rng.random((n, n_var)) < self.neighbour)
        new = np.where(use_step, moved, resampled)
        X = np.where(hit & (sizes[None, :] > 1), new, X)
        return X
