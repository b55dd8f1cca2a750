"""``search.engine=pymoo``: pymoo's own NSGA-II (:class:`pymoo.algorithms.moo.nsga2.NSGA2`) on the
search's problem, with hwnas's operators as pymoo operator classes.

* :class:`PymooArchProblem` -- the :class:`~hwnas.search.problem.ArchProblem` as a vectorised pymoo
  ``Problem``: objectives ``(-accuracy, latency)``, one constraint ``latency - max_latency <= 0``;
  every batch goes through the archive (each distinct arch is predicted once);
* :class:`GenomeSampling`, :class:`GenomeCrossover`, :class:`GenomeMutation`,
  :class:`CanonicalRepair`, :class:`GenomeDuplicates` -- :mod:`hwnas.search.operators` as pymoo's
  ``Sampling``, ``Crossover``, ``Mutation``, ``Repair`` and ``DuplicateElimination`` (duplicates are
  equal networks: equal canonical genomes);
* :class:`PymooNSGA2` -- one run, a generation per :meth:`~PymooNSGA2.step`, with the interface of
  :class:`hwnas.search.nsga.NSGA2`, so the rest of the search (restarts, refinement, checkpoints) is
  the same for both engines.

The default engine (:class:`hwnas.search.nsga.NSGA2`) selects, mates and survives as pymoo's NSGA-II
does, on arrays (tests/test_search.py checks its survival against pymoo's ``RankAndCrowding``); this
module is the way to run pymoo itself, or another pymoo algorithm with the same operators::

    problem = ArchProblem(space, accuracy, latency, max_latency=25)
    ops = pymoo_operators(problem, ArchSampling(space, 0.25), ArchCrossover(space, "unit", 0.9),
                          ArchMutation(space, None, 0.5))
    pymoo.optimize.minimize(PymooArchProblem(problem), SPEA2(pop_size=100, **ops), ("n_gen", 40), seed=0)
    problem.front_indices()  # the front of everything evaluated, as after run_search

pymoo is imported here only, so a search with the default engine never imports it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from .nsga import objectives
from .operators import ArchCrossover, ArchMutation, ArchSampling, GenomeLayout, row_keys
from .problem import ArchProblem


class PymooArchProblem(Problem):
    """An :class:`ArchProblem` as a vectorised pymoo problem. ``limit()`` is how many archs the
    archive does not hold may still be evaluated (None: no limit); archs past it are not predicted and
    come back infeasible with an infinite violation, so they never enter the archive or the front."""

    def __init__(self, problem: ArchProblem, limit: Callable[[], int | None] = lambda: None) -> None:
        sizes = np.asarray(problem.layout.sizes)
        super().__init__(n_var=problem.n_var, n_obj=2, n_ieq_constr=1, xl=np.zeros(len(sizes)), xu=sizes - 1,
                         vtype=int)
        self.arch_problem = problem
        self.limit = limit

    def _evaluate(self, x: np.ndarray, out: dict, *args: Any, **kwargs: Any) -> None:
        problem = self.arch_problem
        X = problem.canonical(x)
        ok = np.ones(len(X), dtype=bool)
        limit = self.limit()
        if limit is not None:
            new = problem.is_new(X)
            ok = ~new | (np.cumsum(new) <= limit)
        F = np.full((len(X), 2), np.inf)
        G = np.full((len(X), 1), np.inf)
        acc, lat = problem.predict(X[ok])
        F[ok] = objectives(acc, lat)
        m = problem.max_latency
        G[ok, 0] = lat - m if m is not None else -1.0
        out["F"], out["G"] = F, G


class GenomeSampling(Sampling):
    """:class:`ArchSampling` as a pymoo sampling."""

    def __init__(self, sampling: ArchSampling) -> None:
        super().__init__()
        self.sampling = sampling

    def _do(self, problem: Any, n_samples: int, *args: Any, random_state: np.random.Generator, **kwargs: Any) -> np.ndarray:
        return self.sampling(n_samples, random_state)


class GenomeCrossover(Crossover):
    """:class:`ArchCrossover` as a pymoo crossover (two parents, two children; pymoo applies ``prob``)."""

    def __init__(self, crossover: ArchCrossover) -> None:
        super().__init__(2, 2, prob=crossover.prob)
        self.crossover = crossover

    def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: np.random.Generator, **kwargs: Any) -> np.ndarray:
        return self.crossover.recombine(X, random_state)


class GenomeMutation(Mutation):
    """:class:`ArchMutation` as a pymoo mutation (every child is mutated; the rate is per gene)."""

    def __init__(self, mutation: ArchMutation) -> None:
        super().__init__(prob=1.0)
        self.mutation = mutation

    def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: np.random.Generator, **kwargs: Any) -> np.ndarray:
        return self.mutation(X, random_state)


class CanonicalRepair(Repair):
    """Inactive genes to 0 (:meth:`GenomeLayout.canonical`), so equal networks have equal genomes."""

    def __init__(self, layout: GenomeLayout) -> None:
        super().__init__()
        self.layout = layout

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.layout.canonical(X)


class GenomeDuplicates(DuplicateElimination):
    """Duplicates are equal (canonical) genomes: found by hashing rows, in linear time."""

    def _do(self, pop: Population, other: Population | None, is_duplicate: np.ndarray) -> np.ndarray:
        keys = row_keys(pop.get("X"))
        if other is None:
            seen: set[bytes] = set()
            for i, k in enumerate(keys):
                is_duplicate[i] = k in seen
                seen.add(k)
        else:
            known = set(row_keys(other.get("X")))
            is_duplicate[:] = [k in known for k in keys]
        return is_duplicate


def pymoo_operators(problem: ArchProblem, sampling: ArchSampling, crossover: ArchCrossover,
                    mutation: ArchMutation) -> dict[str, Any]:
    """hwnas's operators as the keyword arguments of a pymoo genetic algorithm (``sampling``,
    ``crossover``, ``mutation``, ``repair``, ``eliminate_duplicates``)."""
    return {"sampling": GenomeSampling(sampling), "crossover": GenomeCrossover(crossover),
            "mutation": GenomeMutation(mutation), "repair": CanonicalRepair(problem.layout),
            "eliminate_duplicates": GenomeDuplicates()}


class PymooNSGA2:
    """One run of pymoo's NSGA-II with hwnas's operators; the interface of :class:`hwnas.search.nsga.NSGA2`
    (``start``, ``step``, ``gen``, ``X``, ``crowd``, ``rng``, ``set_population``). pymoo draws every random
    number from ``rng``, so a run is reproducible and resumes from a saved population, its crowding
    distances and ``rng``'s state."""

    def __init__(self, problem: ArchProblem, pop_size: int, sampling: ArchSampling, crossover: ArchCrossover,
                 mutation: ArchMutation, rng: np.random.Generator) -> None:
        self.problem = problem
        self._limit: int | None = None
        self.pymoo_problem = PymooArchProblem(problem, lambda: self._limit)
        self.algorithm = NSGA2(pop_size=int(pop_size), **pymoo_operators(problem, sampling, crossover, mutation))
        # the generations are counted by the search, so pymoo's own termination never comes
        self.algorithm.setup(self.pymoo_problem, termination=("n_gen", 2**31), verbose=False)
        self.algorithm.random_state = rng
        self.gen = 0

    @property
    def rng(self) -> np.random.Generator:
        return self.algorithm.random_state

    @property
    def X(self) -> np.ndarray:
        return self.algorithm.pop.get("X").astype(int)

    @property
    def crowd(self) -> np.ndarray:
        """Crowding distances (NaN for infeasible members, which pymoo does not rank)."""
        return np.array([np.nan if c is None else c for c in self.algorithm.pop.get("crowding")], dtype=float)

    def _next(self, limit: int | None) -> None:
        self._limit = limit
        self.algorithm.next()
        # evaluations past the limit leave the population (pymoo keeps infeasible ones to fill it)
        pop = self.algorithm.pop
        self.algorithm.pop = pop[np.isfinite(pop.get("CV")[:, 0])]

    def start(self, limit: int | None = None) -> None:
        self._next(limit)

    def step(self, limit: int | None = None) -> None:
        self._next(limit)
        self.gen += 1

    def set_population(self, X: np.ndarray, crowd: np.ndarray) -> None:
        """Put back a saved population with its crowding distances, as pymoo's state after generation
        ``gen`` (the archive serves the objectives)."""
        crowd = np.asarray(crowd, dtype=float)
        if crowd.shape != (len(X),):
            raise ValueError(f"{len(crowd)} crowding distances for a population of {len(X)}")
        algo = self.algorithm
        pop = Population.new("X", np.asarray(X, dtype=int))
        algo.evaluator.eval(self.pymoo_problem, pop, algorithm=algo)
        pop.set("crowding", crowd)
        algo.pop = pop
        algo.is_initialized = True
        algo.n_iter = self.gen + 2  # pymoo's counter after the initial population and ``gen`` generations
