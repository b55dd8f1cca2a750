"""NSGA-II search over a space with an accuracy and a latency predictor, plus local refinement of the
front. Entry point: :func:`run_search`.

The search

1. runs pymoo's NSGA-II on :class:`~hwnas.search.problem.ArchProblem` with the genome-aware operators
   of :mod:`hwnas.search.operators` (structured + uniform sampling, unit-wise crossover, effective-gene
   mutation, canonical repair, hashed duplicate elimination), budgets as one constraint
   ``latency <= max(budgets)``;
2. refines the front by Pareto local search: every front member's single-gene neighbours (one block,
   one depth step, one resolution step) are evaluated in one batch, the front is recomputed, and the
   new members are expanded in turn, until the front stops changing or after ``refine`` passes;
3. returns the non-dominated set of every arch evaluated (within the constraint) as a
   :class:`SearchResult`, with a per-generation history (evaluations, hypervolume w.r.t. a fixed
   reference point, best accuracy under each budget).

Same seed, same predictors -> the same front.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.termination import get_termination

from hwnas.spaces import SearchSpace

from .operators import (
    ArchCrossover,
    ArchMutation,
    ArchSampling,
    CanonicalDuplicateElimination,
    CanonicalRepair,
    GenomeLayout,
)
from .problem import ArchProblem, as_budgets, best_under, hypervolume


# ============================================================================ result
@dataclass
class SearchResult:
    """The front (sorted by latency) and the run's record."""

    space: SearchSpace
    genomes: np.ndarray
    accuracy: np.ndarray
    latency: np.ndarray
    budgets: list[float]
    history: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    n_evals: int = 0
    seed: int | None = None
    hv_ref: tuple[float, float] = (0.0, 0.0)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

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
        parts = [f"front {len(self)} archs", f"{self.n_evals} evals", f"{self.wall_time:.2f} s" + (f" (cpu {self.timings['cpu_s']:.2f} s)" if "cpu_s" in self.timings else ""), f"hv {self.hypervolume:.4f}"]
        for b, best in self.best_at_budgets().items():
            parts.append(f"@{b:g}: " + ("-" if best is None else f"{_fmt_acc(best[1])} ({best[2]:.2f})"))
        return " | ".join(parts)


def _fmt_acc(a: float) -> str:
    return f"{100 * a:.2f}%" if abs(a) <= 1.0 else f"{a:.3f}"


# ============================================================================ refinement
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


def refine_front(
    problem: ArchProblem,
    iterations: int = 10,
    window: tuple[float, float] | None = None,
    max_members: int | None = None,
    moves: str = "all",
    on_pass: Callable[[int, int], None] | None = None,
) -> int:
    """Pareto local search on the problem's feasible archive front (single-gene moves, see
    :func:`neighbour_matrix`). Each pass evaluates the
    neighbours of the front members not expanded yet, in one batch. ``window``: only expand members
    with latency in ``[lo, hi]``. Returns the number of passes run."""
    layout = problem.layout
    expanded: set[bytes] = set()

    passes = 0
    for it in range(int(iterations)):
        X, acc, lat = problem.archive()
        front = problem.front_indices()
        if window is not None:
            front = front[(lat[front] >= window[0]) & (lat[front] <= window[1])]
        keys = [k for k in _keys(X[front])]
        todo = [i for i, k in zip(front, keys) if k not in expanded]
        if not todo:
            break
        if max_members is not None and len(todo) > max_members:
            # spread the expanded members evenly over the latency range of the candidates
            order = np.array(todo)[np.argsort(lat[todo], kind="stable")]
            pick = np.unique(np.linspace(0, len(order) - 1, int(max_members)).round().astype(int))
            todo = list(order[pick])
        expanded.update(_keys(X[todo]))
        N = neighbour_matrix(layout, X[todo], moves)
        problem.predict(N)
        passes += 1
        if on_pass is not None:
            on_pass(passes, len(todo))
    return passes


def _keys(X: np.ndarray) -> list[bytes]:
    from .operators import row_keys

    return row_keys(X)


# ============================================================================ threads
@contextmanager
def limit_threads(n: int | None):
    """Run with at most ``n`` intra-op threads in torch and the BLAS libraries (restored afterwards).
    The search evaluates small batches (one population) many times; on a small or shared machine
    thread start-up and contention cost more than they save (measured: 1 thread is 20x faster than
    2 on a loaded 2-core box for batches of 100 through the OFA MLP)."""
    if not n:
        yield
        return
    n = int(n)
    restore = None
    torch = sys.modules.get("torch")
    if torch is not None:
        restore = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits

            ctx = threadpool_limits(limits=n)
        except Exception:  # threadpoolctl missing or failing: torch alone
            ctx = nullcontext()
        with ctx:
            yield
    finally:
        if torch is not None and restore is not None:
            torch.set_num_threads(restore)


# ============================================================================ search
def run_search(
    space: SearchSpace,
    accuracy: Any,
    latency: Any,
    *,
    pop_size: int = 100,
    n_gen: int = 40,
    seed: int | None = 0,
    budgets: Sequence[float] | float | None = None,
    constraint: bool = True,
    max_latency: float | None = None,
    hv_ref: dict | Sequence[float | None] | None = None,
    structured: float = 0.25,
    crossover: str = "unit",
    crossover_prob: float = 0.9,
    mutation_rate: float | None = None,
    neighbour: float = 0.5,
    refine: int = 20,
    refine_members: int | None = 60,
    refine_moves: str = "grid",
    threads: int | None = 1,
    verbose: bool = True,
    log: Callable[[str], None] | None = None,
    callback: Callable[[dict], None] | None = None,
    checkpoint: Any = None,
) -> SearchResult:
    """Bi-objective NSGA-II (max accuracy, min latency) over ``space``.

    ``budgets``: latency budgets the front is judged at (history and summary report the best accuracy
    under each); with ``constraint`` the search is constrained to ``latency <= max(budgets)``
    (or ``max_latency`` when given). ``hv_ref``: hypervolume reference point ``(accuracy, latency)``
    (``None`` entries: accuracy = worst accuracy of the initial population, latency = max budget or
    the initial population's worst latency). ``refine``: passes of Pareto local search after NSGA-II
    (0 = plain NSGA-II), each expanding at most ``refine_members`` front members (spread over the
    latency range) with ``refine_moves`` ("grid" or "all", see :func:`neighbour_matrix`).
    ``threads``: intra-op threads for the predictors during the search (None: leave as is). ``verbose``: one line per generation through ``log`` (default: stderr).
    ``checkpoint``: optional object with ``restore(algo, problem) -> dict | None`` (called once before the
    first generation; a dict ``{"gen", "history", "hv_ref"}`` resumes from it) and
    ``save(algo, problem, gen, history, hv_ref)`` (called after every generation), e.g.
    :class:`hwnas.search.checkpoint.SearchCheckpoint`.
    """
    with limit_threads(threads):
        return _run_search(**{k: v for k, v in locals().items() if k != "threads"})


def _run_search(
    space: SearchSpace,
    accuracy: Any,
    latency: Any,
    *,
    pop_size: int,
    n_gen: int,
    seed: int | None,
    budgets: Any,
    constraint: bool,
    max_latency: float | None,
    hv_ref: Any,
    structured: float,
    crossover: str,
    crossover_prob: float,
    mutation_rate: float | None,
    neighbour: float,
    refine: int,
    refine_members: int | None,
    refine_moves: str,
    verbose: bool,
    log: Callable[[str], None] | None,
    callback: Callable[[dict], None] | None,
    checkpoint: Any = None,
) -> SearchResult:
    if pop_size < 4:
        raise ValueError(f"search.pop_size={pop_size} is too small; use at least 4 (e.g. 100)")
    if n_gen < 1:
        raise ValueError(f"search.n_gen={n_gen} must be >= 1")
    budgets = as_budgets(budgets)
    if max_latency is None and constraint and budgets:
        max_latency = max(budgets)
    if not constraint:
        max_latency = None
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    ref_acc, ref_lat = _parse_ref(hv_ref)

    t0 = time.perf_counter()
    c0 = time.process_time()
    problem = ArchProblem(space, accuracy, latency, max_latency=max_latency)
    algo = NSGA2(
        pop_size=int(pop_size),
        sampling=ArchSampling(space, structured=structured),
        crossover=ArchCrossover(space, mode=crossover, prob=crossover_prob),
        mutation=ArchMutation(space, prob_var=mutation_rate, neighbour=neighbour),
        repair=CanonicalRepair(space),
        eliminate_duplicates=CanonicalDuplicateElimination(space),
    )
    algo.setup(problem, termination=get_termination("n_gen", int(n_gen)), seed=seed, verbose=False)

    history: list[dict] = []

    def record(gen: int, phase: str) -> None:
        nonlocal ref_acc, ref_lat
        X, acc, lat = problem.archive()
        if ref_acc is None:
            ref_acc = float(acc.min()) if len(acc) else 0.0
        if ref_lat is None:
            ref_lat = float(max_latency if max_latency is not None else (lat.max() if len(lat) else 1.0))
        f = problem.front_indices()
        a, l = acc[f], lat[f]
        row: dict[str, Any] = {
            "gen": gen,
            "phase": phase,
            "n_evals": problem.n_evals,
            "front_size": int(len(f)),
            "hypervolume": hypervolume(a, l, ref_acc, ref_lat),
            "time_s": time.perf_counter() - t0,
        }
        for b in budgets:
            i = best_under(a, l, b)
            row[f"best_acc@{b:g}"] = float(a[i]) if i >= 0 else float("nan")
        history.append(row)
        if callback is not None:
            callback(row)
        if verbose:
            bits = [f"{phase} {gen:3d}", f"evals {row['n_evals']:6d}", f"front {row['front_size']:3d}", f"hv {row['hypervolume']:.4f}"]
            for b in budgets:
                v = row[f"best_acc@{b:g}"]
                bits.append(f"@{b:g} " + ("-" if math.isnan(v) else _fmt_acc(v)))
            bits.append(f"{row['time_s']:.2f}s")
            log(" | ".join(bits))

    gen = 0
    if checkpoint is not None:
        restored = checkpoint.restore(algo, problem)
        if restored is not None:
            gen = int(restored["gen"])
            history.extend(restored.get("history", []))
            ref_acc, ref_lat = restored.get("hv_ref", (ref_acc, ref_lat))
    while algo.has_next():
        algo.next()
        gen += 1
        record(gen, "gen")
        if checkpoint is not None:
            checkpoint.save(algo, problem, gen, history, (ref_acc, ref_lat))
    t_nsga = time.perf_counter() - t0
    predict_nsga = problem.predict_s
    if max_latency is not None and len(problem.front_indices()) == 0:
        _, _, lat_all = problem.archive()
        first = lat_all[: int(pop_size)]  # the initial population: a sample of the space
        q = np.quantile(first, [0.1, 0.3, 0.5, 0.7])
        raise ValueError(
            f"search.budgets: no arch met the latency budget {max_latency:g} (the largest budget) in "
            f"{problem.n_evals} evaluations; the fastest one evaluated has latency {lat_all.min():.4g}, the "
            f"initial population spans {first.min():.4g}-{first.max():.4g} (in the latency predictor's "
            f"unit). Set budgets in that range, e.g. search.budgets=[{','.join(f'{v:.3g}' for v in q)}], "
            f"or search.constraint=false"
        )

    passes = 0
    if refine and refine > 0:
        passes = refine_front(
            problem, iterations=int(refine), max_members=refine_members, moves=refine_moves,
            on_pass=lambda p, n: record(p, "refine"),
        )
    t_total = time.perf_counter() - t0

    X, acc, lat = problem.archive()
    idx = problem.front_indices()
    res = SearchResult(
        space=space,
        genomes=X[idx].copy(),
        accuracy=acc[idx].copy(),
        latency=lat[idx].copy(),
        budgets=budgets,
        history=history,
        wall_time=t_total,
        n_evals=problem.n_evals,
        seed=seed,
        hv_ref=(float(ref_acc), float(ref_lat)),
        timings={"nsga2_s": t_nsga, "refine_s": t_total - t_nsga, "refine_passes": passes, "cpu_s": time.process_time() - c0,
                 "nsga2_predict_s": predict_nsga, "nsga2_overhead_per_gen_s": (t_nsga - predict_nsga) / max(gen, 1),
                 "predict_s": problem.predict_s},
        settings={
            "pop_size": pop_size, "n_gen": n_gen, "seed": seed, "budgets": budgets, "max_latency": max_latency,
            "structured": structured, "crossover": crossover, "mutation_rate": mutation_rate,
            "neighbour": neighbour, "refine": refine, "refine_members": refine_members, "refine_moves": refine_moves,
        },
    )
    if verbose:
        log(res.summary())
    return res


def _parse_ref(hv_ref: Any) -> tuple[float | None, float | None]:
    if hv_ref is None:
        return None, None
    if hasattr(hv_ref, "get") and not isinstance(hv_ref, (list, tuple)):
        a, l = hv_ref.get("accuracy"), hv_ref.get("latency")
    else:
        vals = list(hv_ref)
        if len(vals) != 2:
            raise ValueError(f"search.hv_ref={hv_ref!r} must be (accuracy, latency) or {{accuracy: .., latency: ..}}")
        a, l = vals
    return (None if a is None else float(a)), (None if l is None else float(l))
