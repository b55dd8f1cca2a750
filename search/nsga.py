"""NSGA-II search over a space with an accuracy and a latency predictor, plus refinement of the front.
Entry point: :func:`run_search`.

The search

1. runs NSGA-II, ``restarts`` runs of ``n_gen`` generations sharing one archive of evaluations, with
   the genome-aware operators of :mod:`hwnas.search.operators`. Budgets give one constraint,
   ``latency <= max(budgets)``. ``engine="numpy"`` (the default) is :class:`NSGA2` here: pymoo's
   NSGA-II -- the binary tournament of ``pymoo.algorithms.moo.nsga2`` (constraint violation, then
   Pareto dominance, then crowding distance), its mating loop (crossover, mutation, repair, duplicate
   elimination) and its ``RankAndCrowding`` survival with the feasibility split -- on a population
   held as numpy arrays, so a generation costs the predictor calls and little else
   (tests/test_search.py checks the survival against pymoo's). ``engine="pymoo"`` runs
   ``pymoo.algorithms.moo.nsga2.NSGA2`` itself (:mod:`hwnas.search.pymoo_nsga`, the only module that
   imports pymoo);
2. refines the front (:mod:`hwnas.search.refine`): Pareto local search and budget walkers;
3. returns the non-dominated set of every arch evaluated (within the constraint) as a
   :class:`SearchResult`, with a per-step history (evaluations, hypervolume w.r.t. a fixed reference
   point, best accuracy under each budget).

Same seed, same predictors -> the same front. The state between two steps is plain arrays (the
archive, the population and its crowding distances), a few counters and the random generators'
states, which :class:`hwnas.search.checkpoint.SearchCheckpoint` saves, so a run resumed after a kill ends with the front of an uninterrupted run. Ctrl-C (or SIGTERM
turned into :class:`SearchInterrupted` by the caller) goes back to the last completed step, saves the
checkpoint and raises :class:`SearchInterrupted` carrying the front found so far.
"""

from __future__ import annotations

import math
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.predictors.base import provenance
from hwnas.predictors.threads import limit_threads
from hwnas.spaces import SearchSpace
from hwnas.spaces.errors import Terminated, UserError, is_plugin

from .operators import ArchCrossover, ArchMutation, ArchSampling, row_keys
from .problem import ArchProblem, as_budgets, best_under, hypervolume
from .refine import Refiner, neighbour_matrix  # noqa: F401  (neighbour_matrix re-exported)


# ============================================================================ result
@dataclass
class SearchResult:
    """The front (sorted by latency) and the run's record. ``partial``: the search was interrupted."""

    space: SearchSpace
    genomes: np.ndarray
    accuracy: np.ndarray
    latency: np.ndarray
    budgets: list[float]
    history: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    n_evals: int = 0
    seed: int | None = None
    #: with ``seed=None``: the seed drawn (``search.seed=<it>`` repeats the search)
    seed_drawn: int | None = None
    hv_ref: tuple[float, float] = (0.0, 0.0)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    #: what the objectives' values are: ``{"accuracy": {"kind", "by"}, "latency": {"kind", "by", "device"}}``
    #: (:func:`hwnas.predictors.base.provenance`)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def archs(self) -> list:
        return self.space.decode(self.genomes)

    def __len__(self) -> int:
        return len(self.genomes)

    def best_under(self, budget: float) -> tuple[Any, float, float] | None:
        """(arch, accuracy, latency) of the most accurate front member within ``budget``, or None."""
        i = best_under(self.accuracy, self.latency, budget)
        if i < 0:
            return None
        return self.space.decode(self.genomes[i : i + 1])[0], float(self.accuracy[i]), float(self.latency[i])

    def best_at_budgets(self) -> dict[float, tuple[Any, float, float] | None]:
        return {b: self.best_under(b) for b in self.budgets}

    @property
    def hypervolume(self) -> float:
        return hypervolume(self.accuracy, self.latency, *self.hv_ref)

    def rows(self) -> list[dict]:
        """One dict per front member: arch (dict), compact string, objectives."""
        out = []
        for a, acc, lat in zip(self.archs, self.accuracy, self.latency):
            out.append({"arch": a.to_dict() if hasattr(a, "to_dict") else a, "arch_str": str(a), "accuracy": float(acc), "latency": float(lat)})
        return out

    def summary(self) -> str:
        cpu = f" (cpu {self.timings['cpu_s']:.2f} s)" if "cpu_s" in self.timings else ""
        parts = [f"front {len(self)} archs", f"{self.n_evals} evals", f"{self.wall_time:.2f} s{cpu}", f"hv {self.hypervolume:.4f}"]
        for b, best in self.best_at_budgets().items():
            parts.append(f"@{b:g}: " + ("-" if best is None else f"{_fmt_acc(best[1])} ({best[2]:.4g})"))
        return ("PARTIAL | " if self.partial else "") + " | ".join(parts)


#: signals that asked the running search to stop (:func:`request_stop`); checked after every step
_STOP: list[str] = []


def request_stop(signal: str = "SIGINT") -> None:
    """Ask the running search to stop after its current step, as if ``signal`` had interrupted it. A
    signal handler calls this besides raising: if the exception is swallowed where it lands (a
    library's callback that ignores exceptions), the search still stops, at the next step."""
    _STOP.append(signal)


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped (Ctrl-C, or a signal the caller turned into this); ``result`` holds the
    front found up to the last completed step (``partial=True``), ``signal`` the signal's name."""

    def __init__(self, result: SearchResult | None = None, signal: str = "SIGINT") -> None:
        super().__init__(signal)
        self.result = result
        self.signal = signal


def _fmt_acc(a: float) -> str:
    return f"{100 * a:.2f}%" if abs(a) <= 1.0 else f"{a:.3f}"


# ============================================================================ NSGA-II
def nondominated_rank(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """Non-domination rank (0 = the front) of points minimising ``(f1, f2)``; equal points share a
    rank. O(n log n): after sorting by ``f1``, a point joins the first front whose best ``f2`` so far
    is worse than its own."""
    n = len(f1)
    rank = np.empty(n, dtype=np.int64)
    tails: list[float] = []
    prev = -1
    for i in np.lexsort((f2, f1)):
        if prev >= 0 and f1[i] == f1[prev] and f2[i] == f2[prev]:
            rank[i] = rank[prev]
            continue
        k = bisect_right(tails, f2[i])
        if k == len(tails):
            tails.append(f2[i])
        else:
            tails[k] = f2[i]
        rank[i] = k
        prev = i
    return rank


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """Crowding distance of the points ``F`` (n, n_obj) of one front, as pymoo's ``"cd"`` computes it:
    per objective, the gap between a point's neighbours over the objective's span, averaged over the
    objectives; the boundary points of an objective get infinity, an objective with zero span adds
    nothing; fronts of one or two points are all infinity."""
    F = np.asarray(F, dtype=float)
    n, m = F.shape
    if n <= 2:
        return np.full(n, np.inf)
    order = np.argsort(F, axis=0, kind="stable")
    S = np.take_along_axis(F, order, axis=0)
    span = S[-1] - S[0]
    gap = np.vstack([S, np.full(m, np.inf)]) - np.vstack([np.full(m, -np.inf), S])
    with np.errstate(invalid="ignore", divide="ignore"):
        to_last, to_next = gap[:-1] / span, gap[1:] / span
    to_last[:, span == 0] = 0.0
    to_next[:, span == 0] = 0.0
    d = np.empty((n, m))
    cols = np.arange(m)
    d[order, cols] = to_last + to_next
    return d.sum(axis=1) / m


def survival(F: np.ndarray, cv: np.ndarray, n_survive: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NSGA-II survival, as pymoo's ``RankAndCrowding`` with its feasibility split selects: feasible
    points (``cv <= 0``) front by front; the front that does not fit whole keeps its most crowded-apart
    points (ties in random order); then infeasible points by increasing violation. Returns
    ``(survivors, rank, crowding)``: survivor indices in that order, and each point's front rank and
    crowding distance within its front (-1 / NaN for points not ranked: infeasible ones and fronts
    after the last one needed)."""
    n = len(cv)
    n_survive = min(int(n_survive), n)
    rank = np.full(n, -1, dtype=np.int64)
    crowd = np.full(n, np.nan)
    feas = np.flatnonzero(cv <= 0)
    infeas = np.flatnonzero(cv > 0)
    infeas = infeas[np.argsort(cv[infeas], kind="stable")]
    keep: list[np.ndarray] = []
    n_keep = min(len(feas), n_survive)
    if n_keep:
        r = nondominated_rank(F[feas, 0], F[feas, 1])
        count = 0
        for k in range(int(r.max()) + 1):
            front = feas[r == k]
            c = crowding_distance(F[front])
            rank[front], crowd[front] = k, c
            if count + len(front) > n_keep:
                p = rng.permutation(len(front))
                front = front[p[np.argsort(-c[p], kind="stable")][: n_keep - count]]
            keep.append(front)
            count += len(front)
            if count >= n_keep:
                break
    keep.append(infeas[: n_survive - n_keep])
    return np.concatenate(keep), rank, crowd


def binary_tournament(F: np.ndarray, cv: np.ndarray, crowd: np.ndarray, n_matings: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Parents ``(n_matings, 2)`` by pymoo NSGA-II's binary tournament: competitors drawn from
    concatenated random permutations of the population; if either is infeasible the smaller violation
    wins, else the one that dominates the other, else the larger crowding distance; ties at random."""
    n = len(cv)
    n_random = 4 * n_matings
    P = np.concatenate([rng.permutation(n) for _ in range(math.ceil(n_random / n))])[:n_random].reshape(-1, 2)
    a, b = P[:, 0], P[:, 1]
    coin = rng.random(len(a)) < 0.5
    fa, fb = F[a], F[b]
    a_dom = (fa <= fb).all(1) & (fa < fb).any(1)
    b_dom = (fb <= fa).all(1) & (fb < fa).any(1)
    a_wins = np.where(a_dom | b_dom, a_dom, (crowd[a] > crowd[b]) | ((crowd[a] == crowd[b]) & coin))
    infeasible = (cv[a] > 0) | (cv[b] > 0)
    a_wins = np.where(infeasible, (cv[a] < cv[b]) | ((cv[a] == cv[b]) & coin), a_wins)
    return np.where(a_wins, a, b).reshape(n_matings, 2)


def objectives(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """``(n, 2)`` objectives to minimise: ``(-accuracy, latency)``; an accuracy that was not predicted
    (NaN: over the latency limit) counts as the worst."""
    return np.column_stack([np.where(np.isnan(acc), np.inf, -acc), lat])


class NSGA2:
    """One NSGA-II run on an :class:`ArchProblem`: pymoo's NSGA-II (:func:`binary_tournament`, its
    mating loop with duplicate elimination, :func:`survival`) on a population held as arrays."""

    def __init__(self, problem: ArchProblem, pop_size: int, sampling: ArchSampling, crossover: ArchCrossover,
                 mutation: ArchMutation, rng: np.random.Generator) -> None:
        self.problem = problem
        self.pop_size = int(pop_size)
        self.sampling, self.crossover, self.mutation = sampling, crossover, mutation
        self.rng = rng
        self.gen = 0
        self.X = np.zeros((0, problem.n_var), dtype=int)
        self.F = np.zeros((0, 2))
        self.cv = self.crowd = np.zeros(0)

    def _cv(self, lat: np.ndarray) -> np.ndarray:
        m = self.problem.max_latency
        return np.zeros(len(lat)) if m is None else np.maximum(lat - m, 0.0)

    def _evaluate(self, X: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, F, cv)`` of canonical genomes ``X``, keeping at most ``limit`` archs the archive does
        not hold."""
        if limit is not None:
            new = self.problem.is_new(X)
            X = X[~new | (np.cumsum(new) <= limit)]
        acc, lat = self.problem.predict(X)
        return X, objectives(acc, lat), self._cv(lat)

    def _survive(self, X: np.ndarray, F: np.ndarray, cv: np.ndarray, n: int) -> None:
        keep, _, crowd = survival(F, cv, n, self.rng)
        self.X, self.F, self.cv, self.crowd = X[keep], F[keep], cv[keep], crowd[keep]

    def start(self, limit: int | None = None) -> None:
        """The initial population, ranked as pymoo does (a survival of all of it)."""
        X, F, cv = self._evaluate(self.problem.canonical(self.sampling(self.pop_size, self.rng)), limit)
        self._survive(X, F, cv, len(X))

    def set_population(self, X: np.ndarray, crowd: np.ndarray) -> None:
        """Put back a saved population (archs known to the archive) with its crowding distances."""
        self.X, self.F, self.cv = self._evaluate(np.asarray(X, dtype=int), None)
        crowd = np.asarray(crowd, dtype=float)
        if crowd.shape != (len(self.X),):
            raise ValueError(f"{len(crowd)} crowding distances for a population of {len(self.X)}")
        self.crowd = crowd

    def offspring(self) -> np.ndarray:
        """``pop_size`` canonical children, distinct from each other and from the population (pymoo's
        mating loop: tournament, crossover, mutation, repair, duplicate elimination, at most 100 rounds)."""
        n_off = self.pop_size
        seen = set(row_keys(self.X))
        out: list[np.ndarray] = []
        count = 0
        for _ in range(100):
            n_mat = math.ceil((n_off - count) / 2)
            parents = binary_tournament(self.F, self.cv, self.crowd, n_mat, self.rng)
            kids = self.crossover(self.X[parents.T], self.rng).reshape(2 * n_mat, -1)
            kids = self.problem.canonical(self.mutation(kids, self.rng))
            keep = []
            for i, k in enumerate(row_keys(kids)):
                if k not in seen:
                    seen.add(k)
                    keep.append(i)
            keep = keep[: n_off - count]
            out.append(kids[keep])
            count += len(keep)
            if count >= n_off:
                break
        return np.concatenate(out)

    def step(self, limit: int | None = None) -> None:
        """One generation (at most ``limit`` new evaluations)."""
        Y, FY, cvY = self._evaluate(self.offspring(), limit)
        self._survive(np.concatenate([self.X, Y]), np.concatenate([self.F, FY]), np.concatenate([self.cv, cvY]),
                      self.pop_size)
        self.gen += 1


# ============================================================================ search
_FROM_CONFIG = object()  # run_search's seed default: the config's (None is a valid seed: a random one)
_SETTINGS = ("engine", "pop_size", "n_gen", "restarts", "seed", "budgets", "constraint", "max_latency", "max_evals", "hv_ref",
             "structured", "crossover", "crossover_prob", "mutation_rate", "neighbour", "refine", "refine_members",
             "refine_moves", "refine_pairs", "refine_starts", "refine_band", "threads", "verbose")


def run_search(
    space: SearchSpace,
    accuracy: Any,
    latency: Any,
    *,
    engine: str | None = None,
    pop_size: int | None = None,
    n_gen: int | None = None,
    restarts: int | None = None,
    seed: Any = _FROM_CONFIG,
    budgets: Sequence[float] | float | None = None,
    constraint: bool | None = None,
    max_latency: float | None = None,
    max_evals: int | None = None,
    hv_ref: dict | Sequence[float | None] | None = None,
    structured: float | None = None,
    crossover: str | None = None,
    crossover_prob: float | None = None,
    mutation_rate: float | None = None,
    neighbour: float | None = None,
    refine: int | None = None,
    refine_members: int | None = None,
    refine_moves: str | None = None,
    refine_pairs: int | None = None,
    refine_starts: int | None = None,
    refine_band: float | None = None,
    threads: int | None = None,
    verbose: bool | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[dict], None] | None = None,
    checkpoint: Any = None,
) -> SearchResult:
    """Bi-objective NSGA-II (max accuracy, min latency) over ``space``, then refinement of the front.

    Every setting left out (``None``) takes its value from ``conf/search/nsga2.yaml`` (see
    :mod:`hwnas.search.settings`; ``seed=None`` means a random seed). ``engine``: ``"numpy"`` (pymoo's
    NSGA-II on arrays) or ``"pymoo"`` (pymoo's ``NSGA2`` class; see the module doc). ``budgets``: latency budgets the
    front is judged at; with ``constraint`` the search keeps to ``latency <= max(budgets)`` (or
    ``max_latency``). Budgets are checked against the latency of the initial population (random
    archs plus the smallest and largest) before the first generation; without budgets, quantiles of
    that sample are reported. ``max_evals``: stop after that many distinct evaluations (for expensive
    predictors). ``refine``: passes of Pareto local search (0 = plain NSGA-II), each expanding at most
    ``refine_members`` front members with ``refine_moves`` single moves (every move for those within
    ``refine_band`` below a budget), and walks from the best arch
    of the ``refine_starts`` best (depth, resolution) classes under each budget by single and
    ``refine_pairs`` pair moves, and as many triples at a local optimum (see :mod:`hwnas.search.refine`).
    ``verbose``: one line per step through ``log`` (default: stderr); ``callback(row)`` gets each history
    row.

    ``checkpoint``: an object with ``restore(engine, problem) -> dict | None`` (called once; a dict
    resumes the run) and ``save(engine, problem, gen, history, hv_ref)`` (called after every step),
    and optionally ``save_population`` (same arguments; called after each initial population), e.g.
    :class:`hwnas.search.checkpoint.SearchCheckpoint`.
    """
    from .settings import check_kwargs, defaults, search_kwargs

    given = {k: v for k, v in locals().items() if k in _SETTINGS and v is not None and v is not _FROM_CONFIG}
    if seed is None:  # a random seed
        given["seed"] = None
    s = {**search_kwargs(defaults()), **check_kwargs(given)}
    if isinstance(space, str):  # a registered name, as the predictors take it
        from hwnas.spaces import create_space

        space = create_space(space)
    with limit_threads(s["threads"]):
        return _Search(space, accuracy, latency, s, log, callback, checkpoint).run()


class SpaceDecodeError(UserError, ValueError):
    """A space of your own decodes genomes into archs its own ``validate`` refuses."""


def check_decode(space: SearchSpace, n: int = 8) -> None:
    """A space of your own: ``decode`` of a few random genomes gives archs its ``validate`` takes (an arch of
    another shape went through the search into the results, silently)."""
    genomes = space.sample_genomes(n, np.random.default_rng(0))
    for g, arch in zip(genomes, space.decode(genomes)):
        try:
            space.validate(arch)
        except Exception as exc:  # noqa: BLE001 - whatever validate raises: the plug-in's two methods disagree
            raise SpaceDecodeError(
                f"space ({type(space).__module__}.{type(space).__name__}): decode() of genome {g.tolist()} gives {arch!r}, "
                f"which its validate() refuses ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "decode must give archs of the space") from None


def _parse_ref(hv_ref: Any) -> tuple[float | None, float | None]:
    """``hv_ref`` -> (accuracy, latency); a wrong form is one ConfigError (a ValueError) naming
    search.hv_ref and the accepted forms (:func:`hwnas.search.settings.parse_hv_ref`)."""
    from .settings import parse_hv_ref

    return parse_hv_ref(hv_ref)


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _rng_from_state(state: dict) -> np.random.Generator:
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError("random generator state is not a PCG64 state")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


class _Search:
    """The steps of one :func:`run_search` call: phases ``start`` (initial population of restart
    ``r``), ``nsga`` (its generations), ``refine`` (passes), ``done``. After each step the state is
    committed (and offered to the checkpoint), and so it is after each initial population (offered to
    the checkpoint's ``save_population``); an interrupt goes back to the last commit."""

    def __init__(self, space: SearchSpace, accuracy: Any, latency: Any, s: dict, log: Any, callback: Any,
                 checkpoint: Any) -> None:
        self.space, self.s = space, s
        if is_plugin(space):
            check_decode(space)
        self.values = {"accuracy": provenance(accuracy), "latency": provenance(latency)}
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.callback, self.checkpoint = callback, checkpoint
        self.budgets = as_budgets(s["budgets"])
        self.user_budgets = bool(self.budgets)
        max_latency = s["max_latency"]
        if max_latency is None and s["constraint"] and self.budgets:
            max_latency = max(self.budgets)
        if not s["constraint"]:
            max_latency = None
        self.ref_acc, self.ref_lat = _parse_ref(s["hv_ref"])
        self.problem = ArchProblem(space, accuracy, latency, max_latency=max_latency)
        self.sampling = ArchSampling(space, s["structured"])
        self.crossover = ArchCrossover(space, s["crossover"], s["crossover_prob"])
        self.mutation = ArchMutation(space, s["mutation_rate"], s["neighbour"])
        self.refiner = Refiner(self.problem, s["refine_members"], s["refine_moves"], s["refine_pairs"],
                               s["refine_starts"], self.budgets, s["refine_band"])
        seq = np.random.SeedSequence(s["seed"])
        self.entropy = seq.entropy
        self.seeds = seq.spawn(int(s["restarts"]))
        self.phase, self.restart, self.step_no = "start", 0, 0
        self.nsga: Any = None
        self.history: list[dict] = []
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        self.nsga_s = 0.0
        self.resumed_from: int | None = None

    # ------------------------------------------------------------------ steps
    def _limit(self) -> int | None:
        m = self.s["max_evals"]
        return None if m is None else max(int(m) - self.problem.n_evals, 0)

    def _engine(self, rng: np.random.Generator) -> Any:
        """An NSGA-II run of ``search.engine``: :class:`NSGA2` (numpy) or pymoo's
        (:class:`hwnas.search.pymoo_nsga.PymooNSGA2`, imported only then)."""
        args = (self.problem, self.s["pop_size"], self.sampling, self.crossover, self.mutation, rng)
        if self.s["engine"] == "pymoo":
            from .pymoo_nsga import PymooNSGA2

            return PymooNSGA2(*args)
        return NSGA2(*args)

    def _new_run(self) -> Any:
        return self._engine(np.random.default_rng(self.seeds[self.restart]))

    def _advance(self) -> str | None:
        """One step; returns the history phase to record ("gen", "refine") or None."""
        limit = self._limit()
        if limit == 0 and self.phase != "done":
            self.log(f"search.max_evals={self.s['max_evals']} reached: stopping")
            self.phase = "done"
            return None
        if self.phase == "start":
            self.nsga = self._new_run()
            self.nsga.start(limit)
            if self.restart == 0:
                self._check_budgets()
            self.phase = "nsga"
            return None
        if self.phase == "nsga":
            assert self.nsga is not None
            self.nsga.step(limit)
            if self.nsga.gen >= self.s["n_gen"]:
                self.restart += 1
                self.phase = "start" if self.restart < self.s["restarts"] else "refine"
                if self.phase == "refine":
                    self.nsga_s = time.perf_counter() - self.t0
                    self._check_front()
                    if not self.s["refine"]:
                        self.phase = "done"
            return "gen"
        if self.phase == "refine":
            N = self.refiner.candidates(limit)
            limit = self._limit()
            if self.refiner.converged:
                self.phase = "done"
                return None
            if limit is not None:
                new = self.problem.is_new(N)
                N = N[~new | (np.cumsum(new) <= limit)]
            self.problem.predict(N)
            self.refiner.passes += 1
            if self.refiner.passes >= self.s["refine"]:
                self.phase = "done"
            return "refine"
        raise AssertionError(self.phase)

    def _check_budgets(self) -> None:
        """Budgets against the latency of the initial population (a random sample plus the smallest
        and the largest arch); without budgets, report quantiles of it."""
        self._check_units()
        self._check_cost()
        _, _, lat = self.problem.archive()
        lo, hi = float(lat.min()), float(lat.max())
        cap = self.problem.max_latency
        fit = lat[lat <= cap] if cap is not None and (lat <= cap).sum() >= 2 else lat  # search.max_latency: below it
        q = [float(f"{v:.3g}") for v in np.quantile(fit, [0.2, 0.4, 0.6, 0.8])]
        unit = "in the latency predictor's unit"
        if not self.budgets:
            self.budgets = q
            self.refiner.budgets = q
            below = f" (those {len(fit)} below search.max_latency={cap:g})" if len(fit) < len(lat) else ""
            if not self.s["verbose"]:  # (information, not a warning: verbose=False is quiet)
                return
            self.log(f"search.budgets not given: reporting the best archs at {q}, the 20/40/60/80% quantiles of the "
                     f"latency of {len(lat)} sampled archs{below} ({lo:.4g}-{hi:.4g}, {unit}); set search.budgets=[...] "
                     "to choose")
            return
        low = [b for b in self.budgets if b < lo]
        if low or min(self.budgets) > hi:
            what = (f"search.budgets={_fmt_list(self.budgets)}: {_fmt_list(low)} below the fastest" if low else
                    f"search.budgets={_fmt_list(self.budgets)} are all above the slowest")
            raise ValueError(
                f"{what} of {len(lat)} sampled archs (latency {lo:.4g}-{hi:.4g}, {unit}, smallest and largest arch "
                f"included); the budgets may be for another device, or in another unit than the predictor's (ms, not s or "
                f"µs). Set budgets in that range, e.g. "
                f"search.budgets={_fmt_list(q)}, or search.constraint=false"
            )
        high = [b for b in self.budgets if b > hi]
        if high:
            self.log(f"search.budgets {_fmt_list(high)} are above the slowest sampled arch ({hi:.4g}): every arch fits them")

    def _check_cost(self) -> None:
        """One hint when the predictors are slow (an expensive objective without search.max_evals): the
        refinement evaluates far more archs than NSGA-II, and the ETA of the generations does not show it."""
        n, secs = self.problem.n_evals, self.problem.predict_s
        if self.s["max_evals"] is not None or not self.s["refine"] or n < 8 or secs <= 0:
            return
        rate = n / secs
        if rate >= 2000:
            return
        nsga = int(self.s["pop_size"]) * (int(self.s["n_gen"]) + 1) * int(self.s["restarts"])
        t = nsga / rate
        took = f"{t:.1f} s" if t < 60 else _fmt_s(t)
        self.log(f"note: the predictors take {1e3 / rate:.3g} ms per arch ({rate:.0f} archs/s): NSGA-II's {nsga:,} "
                 f"evaluations take about {took}, and the refinement after it often 10-20x as many (the README's main "
                 "search: 4k, then 80k). For an expensive objective set search.max_evals=<N> (a total), or "
                 "search.refine.passes=0, or spread it with evaluator=dask")

    def _check_units(self) -> None:
        """A plug-in latency whose values imply a throughput no device has (seconds or microseconds read as
        ms) gets one warning; the search itself works in any unit. From the initial population: no extra
        evaluation (a plug-in may measure a device)."""
        inner = getattr(self.problem.latency, "__wrapped__", self.problem.latency)
        if not is_plugin(inner):
            return
        from hwnas.predictors.measure.plan import unit_warning

        X, _, lat = self.problem.archive()
        n = min(len(lat), 64)
        note = unit_warning(self.space, self.space.decode(np.asarray(X[:n], dtype=int)), lat[:n],
                            f"latency ({type(inner).__name__})")
        if note:
            self.log(f"warning: {note}")

    def _check_front(self) -> None:
        if self.problem.max_latency is not None and len(self.problem.front_indices()) == 0:
            _, _, lat = self.problem.archive()
            raise ValueError(
                f"search.budgets: no arch met the latency budget {self.problem.max_latency:g} (the largest budget) in "
                f"{self.problem.n_evals} evaluations; the fastest one evaluated has latency {lat.min():.4g}. Set larger "
                f"budgets or search.constraint=false"
            )

    # ------------------------------------------------------------------ record
    def _record(self, phase: str) -> None:
        X, acc, lat = self.problem.archive()
        if self.ref_acc is None:
            self.ref_acc = float(np.nanmin(acc)) if np.isfinite(acc).any() else 0.0
        if self.ref_lat is None:
            m = self.problem.max_latency
            self.ref_lat = float(m if m is not None else (lat.max() if len(lat) else 1.0))
        f = self.problem.front_indices()
        a, l = acc[f], lat[f]
        row: dict[str, Any] = {
            "gen": self.step_no,
            "phase": phase,
            "n_evals": self.problem.n_evals,
            "front_size": int(len(f)),
            "hypervolume": hypervolume(a, l, self.ref_acc, self.ref_lat),
            "time_s": time.perf_counter() - self.t0,
            "done": self._done(),
        }
        for b in self.budgets:
            i = best_under(a, l, b)
            row[f"best_acc@{b:g}"] = float(a[i]) if i >= 0 else float("nan")
        self.history.append(row)
        if self.callback is not None:
            self.callback(row)
        if self.s["verbose"]:
            no = self.refiner.passes if phase == "refine" else self.step_no  # (refinement passes count from 1)
            bits = [f"{phase} {no:3d}", f"evals {row['n_evals']:6d}", f"front {row['front_size']:3d}",
                    f"hv {row['hypervolume']:.4f}"]
            for b in self.budgets:
                v = row[f"best_acc@{b:g}"]
                bits.append(f"@{b:g} " + ("-" if math.isnan(v) else _fmt_acc(v)))
            bits.append(f"{row['time_s']:.2f}s")
            eta = self._eta(row["time_s"])
            if eta is not None:
                bits.append(f"eta {_fmt_s(eta)}")
            self.log(" | ".join(bits))

    def _done(self) -> float:
        """Fraction of the planned work done: of the evaluation budget when there is one, else of the
        planned steps (refinement may converge before its last pass)."""
        s = self.s
        if self.phase == "done":
            return 1.0
        if s["max_evals"]:
            return min(self.problem.n_evals / s["max_evals"], 1.0)
        planned = s["restarts"] * s["n_gen"] + s["refine"]
        gens = sum(1 for h in self.history if h["phase"] == "gen")
        return min((gens + self.refiner.passes) / max(planned, 1), 1.0)

    def _eta(self, elapsed: float) -> float | None:
        """Seconds left (None when done or unknown)."""
        done = self._done()
        if self.phase == "done" or done <= 0:
            return None
        return elapsed * (1 - done) / done

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict, dict]:
        """(arrays, meta) of the committed state: what a checkpoint holds."""
        X, acc, lat = self.problem.archive()
        arrays = {"archive_X": X, "archive_acc": acc, "archive_lat": lat, **self.refiner.state()}
        meta: dict[str, Any] = {
            "phase": self.phase, "restart": self.restart, "step": self.step_no, "budgets": self.budgets,
            "max_latency": self.problem.max_latency, "hv_ref": [self.ref_acc, self.ref_lat],
            "history": list(self.history), "entropy": str(self.entropy), "refine_passes": self.refiner.passes,
            "refine_converged": self.refiner.converged, "refine_seeded": self.refiner.seeded, "predict_s": self.problem.predict_s,
            "elapsed_s": time.perf_counter() - self.t0,
        }
        if self.nsga is not None and self.phase == "nsga":
            arrays["pop_X"] = self.nsga.X.astype(np.int16)
            arrays["pop_crowd"] = self.nsga.crowd
            meta["gen"] = self.nsga.gen
            meta["rng"] = _rng_state(self.nsga.rng)
        return arrays, meta

    def load(self, arrays: dict, meta: dict, resume: bool = True) -> None:
        """Put a saved state back (``resume``: from a checkpoint of an earlier process; otherwise a
        state committed earlier in this one)."""
        self.problem.max_latency = meta["max_latency"]
        self.problem.load_archive(arrays["archive_X"], arrays["archive_acc"], arrays["archive_lat"])
        if resume:
            self.problem.predict_s = float(meta["predict_s"])
        self.phase, self.restart, self.step_no = meta["phase"], int(meta["restart"]), int(meta["step"])
        self.budgets = [float(b) for b in meta["budgets"]]
        self.refiner.budgets = self.budgets
        self.ref_acc, self.ref_lat = meta["hv_ref"]
        self.history = list(meta["history"])
        self.refiner.load_state(arrays, meta)
        self.entropy = int(meta["entropy"])  # a random seed (seed=None) stays the one the run started with
        self.seeds = np.random.SeedSequence(self.entropy).spawn(int(self.s["restarts"]))
        if self.phase == "nsga":
            self.nsga = self._engine(_rng_from_state(meta["rng"]))
            self.nsga.gen = int(meta["gen"])
            self.nsga.set_population(arrays["pop_X"], arrays["pop_crowd"])
        if resume:
            self.t0 -= float(meta["elapsed_s"])
            self.resumed_from = self.step_no

    def _commit(self) -> None:
        self._committed = self.state()  # arrays are replaced, never changed in place: no copy needed

    def _rollback(self) -> None:
        self.load(*self._committed, resume=False)

    # ------------------------------------------------------------------ run
    def run(self) -> SearchResult:
        ck = self.checkpoint
        if ck is not None:
            restored = ck.restore(self, self.problem)
            if restored is not None:
                where = (f" (after the initial population of restart {self.restart})"
                         if self.phase == "nsga" and self.nsga is not None and self.nsga.gen == 0 else "")
                self.log(f"resuming the search from step {self.step_no}{where} ({self.problem.n_evals} evaluations)")
        self._commit()
        _STOP.clear()  # a request left over from an earlier search of this process is not for this one
        try:
            while self.phase != "done":
                started = self.phase == "start"
                phase = self._advance()
                if phase is not None:
                    self.step_no += 1
                    self._record(phase)
                self._commit()
                if phase is not None and ck is not None:
                    ck.save(self, self.problem, self.step_no, self.history, (self.ref_acc, self.ref_lat))
                elif started and self.phase == "nsga" and callable(getattr(ck, "save_population", None)):
                    # An initial population is not a step (no history row) but, with an expensive
                    # objective, the costliest part of a restart: offered to the checkpoint too, so a
                    # kill during the first generation does not throw every evaluation of it away.
                    ck.save_population(self, self.problem, self.step_no, self.history, (self.ref_acc, self.ref_lat))
                if _STOP:  # a signal whose exception was swallowed where it landed
                    raise SearchInterrupted(None, _STOP[-1])
        except KeyboardInterrupt as exc:
            _STOP.clear()
            self._rollback()
            if ck is not None:
                ck.save(self, self.problem, self.step_no, self.history, (self.ref_acc, self.ref_lat), force=True)
            signal = (exc.signal if isinstance(exc, SearchInterrupted) else "SIGTERM" if isinstance(exc, Terminated)
                      else "SIGINT")
            raise SearchInterrupted(self.result(partial=True), signal) from None
        if not self.history:  # search.max_evals spent inside the initial population: still one recorded step,
            self.step_no += 1  # with the run's own reference (the largest budget), not the worst sampled latency
            self._record("initial")
        res = self.result()
        if self.s["verbose"]:
            self.log(res.summary())
        return res

    def result(self, partial: bool = False) -> SearchResult:
        X, acc, lat = self.problem.archive()
        idx = self.problem.front_indices()
        ref_acc, ref_lat = self.ref_acc, self.ref_lat
        # before the first step (an interrupt, the partial results of an initial population): local
        # values, as the run's own reference is fixed by its first recorded step, so writing partial
        # results does not change the history that follows
        if ref_acc is None:
            ref_acc = float(np.nanmin(acc)) if np.isfinite(acc).any() else 0.0
        if ref_lat is None:
            m = self.problem.max_latency
            ref_lat = float(m if m is not None else (lat.max() if len(lat) else 1.0))
        t_total = time.perf_counter() - self.t0
        s = self.s
        return SearchResult(
            space=self.space,
            genomes=X[idx].astype(int),
            accuracy=acc[idx].copy(),
            latency=lat[idx].copy(),
            budgets=list(self.budgets),
            history=list(self.history),
            wall_time=t_total,
            n_evals=self.problem.n_evals,
            seed=s["seed"],
            seed_drawn=None if s["seed"] is not None else int(self.entropy),
            hv_ref=(float(ref_acc), float(ref_lat)),
            timings={"nsga2_s": self.nsga_s, "refine_s": t_total - self.nsga_s if self.nsga_s else 0.0,
                     "refine_passes": self.refiner.passes, "cpu_s": time.process_time() - self.c0,
                     "predict_s": self.problem.predict_s},
            settings={**{k: s[k] for k in _SETTINGS}, "budgets": list(self.budgets),
                      "max_latency": self.problem.max_latency},
            partial=partial,
            values=self.values,
        )


def _fmt_list(v: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:g}" for x in v) + "]"


def _fmt_s(sec: float) -> str:
    sec = int(round(sec))
    return f"{sec // 60}m{sec % 60:02d}s" if sec >= 60 else f"{sec}s"
