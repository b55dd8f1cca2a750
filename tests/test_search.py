"""NSGA-II search: operators, problem, reproducibility, validity of the front, history, results files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hwnas.search.nsga import crowding_distance, nondominated_rank, run_search
from hwnas.search.operators import ArchCrossover, ArchMutation, ArchSampling, GenomeLayout, row_keys, structured_genomes
from hwnas.search.problem import ArchProblem, hypervolume, pareto_mask
from hwnas.search.refine import neighbour_matrix, neighbour_moves, combo_moves
from hwnas.search.results import load_front, write_results
from hwnas.spaces import create_space

NOTE10_RES = [160, 176, 192, 208, 224]


class ToyAccuracy:
    """Deterministic stand-in: concave in the amount of compute, with per-slot kernel/expand weights."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        ks = np.array([a.ks for a in archs], float)
        e = np.array([a.e for a in archs], float)
        d = np.array([a.d for a in archs], float)
        r = np.array([a.r for a in archs], float)
        mask = np.array([[s in set(a.active_slots()) for s in range(len(a.ks))] for a in archs])
        w = np.linspace(1.0, 2.0, ks.shape[1])
        cap = ((np.log(ks) + 0.6 * np.log(e)) * w * mask).sum(1) + 0.3 * d.sum(1)
        return 0.55 + 0.25 * (1 - np.exp(-cap / 40.0)) + 0.0004 * (r - 160)


class ToyLatency:
    """Deterministic stand-in: sum over active slots of k^2 * e (slot-dependent cost) times (r/224)^2."""

    def __init__(self, space=None):
        self.space = space
        self.calls = 0

    def predict(self, archs):
        self.calls += 1
        out = []
        for a in archs:
            c = sum(a.ks[s] ** 2 * a.e[s] * (1.0 + 0.05 * (s % 4)) for s in a.active_slots())
            out.append(2.0 + c * (a.r / 224.0) ** 2 / 60.0)
        return np.array(out)


class CountingAccuracy(ToyAccuracy):
    """ToyAccuracy that records the size of every batch it predicts."""

    def __init__(self, space=None):
        super().__init__(space)
        self.calls: list[int] = []

    def predict(self, archs):
        self.calls.append(len(archs))
        return super().predict(archs)


@pytest.fixture(scope="module")
def space():
    return create_space("ofa_mbv3_w12", resolutions=NOTE10_RES)


def small_search(space, **kw):
    args = dict(pop_size=24, n_gen=6, seed=1, budgets=[14, 20], refine=1, refine_members=8, verbose=False)
    args.update(kw)
    return run_search(space, ToyAccuracy(space), ToyLatency(space), **args)


# ---------------------------------------------------------------------------------------------- operators
def test_layout_canonical_ignores_inactive_genes(space):
    lay = GenomeLayout(space)
    g = space.sample_genomes(50, 0)
    c = lay.canonical(g)
    np.testing.assert_array_equal(c, space.canonical_genome(g))
    # changing an inactive slot gene does not change the canonical genome
    g2 = g.copy()
    g2[:, space.n_slots :] = 0  # all depths = 2 -> slots 2, 3 of every unit inactive
    g3 = g2.copy()
    g3[:, 3] = (g3[:, 3] + 1) % space.genome_sizes[3]
    np.testing.assert_array_equal(lay.canonical(g2), lay.canonical(g3))


def test_structured_sampling_includes_extremes_and_is_seeded(space):
    S = structured_genomes(space)
    lo, hi = space.bounds
    assert (S[0] == lo).all()
    assert (S[1] == hi).all()
    assert len({r.tobytes() for r in S}) == len(S)
    samp = ArchSampling(space, structured=0.25)
    X1 = samp(40, np.random.default_rng(3))
    X2 = samp(40, np.random.default_rng(3))
    np.testing.assert_array_equal(X1, X2)
    assert X1.shape == (40, space.n_var)
    assert (X1 >= lo).all() and (X1 <= hi).all()
    assert any((x == lo).all() for x in X1) and any((x == hi).all() for x in X1)
    np.testing.assert_array_equal(X1, space.canonical_genome(X1))


def test_unit_crossover_moves_whole_units(space):
    cx = ArchCrossover(space, mode="unit", prob=1.0)
    rng = np.random.default_rng(0)
    X = np.stack([space.sample_genomes(30, 1), space.sample_genomes(30, 2)])
    Q = cx(X, rng)
    lay = GenomeLayout(space)
    for child, other in ((Q[0], Q[1]),):
        for i in range(30):
            from_b = child[i] != X[0, i]
            for grp in range(lay.n_groups):
                genes = lay.group == grp
                same_a = (child[i, genes] == X[0, i, genes]).all()
                same_b = (child[i, genes] == X[1, i, genes]).all()
                assert same_a or same_b
            # the two children are complementary
            np.testing.assert_array_equal(np.where(from_b, X[0, i], X[1, i]), np.where(from_b, other[i], other[i]))


def test_mutation_changes_an_effective_gene_within_bounds(space):
    mut = ArchMutation(space, prob_var=None, neighbour=0.5)
    X = space.canonical_genome(space.sample_genomes(200, 4))
    Y = mut(X, np.random.default_rng(0))
    lo, hi = space.bounds
    assert (Y >= lo).all() and (Y <= hi).all()
    cx, cy = space.canonical_genome(X), space.canonical_genome(Y)
    assert (cx != cy).any(1).all()  # every individual changed as a network
    # ordered genes moved by neighbour steps at least sometimes
    dg = np.abs(Y[:, space.n_slots :] - X[:, space.n_slots :])
    assert (dg == 1).sum() > 0


def test_crossover_without_mating_copies_the_parents(space):
    X = np.stack([space.sample_genomes(20, 1), space.sample_genomes(20, 2)])
    np.testing.assert_array_equal(ArchCrossover(space, mode="uniform", prob=0.0)(X, np.random.default_rng(0)), X)


def test_canonical_keys_find_duplicates(space):
    g = space.sample_genomes(1, 5)
    g[0, space.n_slots : space.n_slots + 5] = 0  # depth 2 everywhere
    twin = g.copy()
    twin[0, 2] = (twin[0, 2] + 1) % space.genome_sizes[2]  # inactive slot differs
    lay = GenomeLayout(space)
    np.testing.assert_array_equal(lay.canonical(twin), space.canonical_genome(g))
    assert row_keys(lay.canonical(twin)) == row_keys(lay.canonical(g))
    assert row_keys(lay.canonical(space.sample_genomes(1, 6))) != row_keys(lay.canonical(g))


def test_neighbour_matrix_is_one_effective_move(space):
    lay = GenomeLayout(space)
    x = lay.canonical(space.sample_genomes(1, 7))
    N = neighbour_matrix(lay, x)
    diff = (N != x).sum(1)
    # one gene differs, except depth moves that also reset the genes of slots that became inactive
    assert (diff >= 1).all()
    archs = space.decode(N)
    assert len(set(archs)) == len(archs) or len(set(archs)) > 0.9 * len(archs)
    assert space.decode(x)[0] not in set(archs)
    n_expected = sum(int(space.genome_sizes[g]) - 1 for g in np.flatnonzero(lay.active(x)[0]))
    assert len(N) == n_expected


@pytest.mark.parametrize("size", [2, 3])
def test_combo_moves_change_blocks_and_fit_the_budget_best_estimate_first(space, size):
    from hwnas.predictors.lut import LookupTableLatency

    lat = LookupTableLatency(space)  # additive: a combination's latency is exactly x's plus the single effects
    prob = ArchProblem(space, ToyAccuracy(space), lat)
    lay = prob.layout
    x = lay.canonical(space.sample_genomes(1, 11))[0]
    Y, _, genes, values = neighbour_moves(lay, x[None], "all")
    block = genes < lay.n_slots
    Y, genes, values = Y[block], genes[block], values[block]
    a0, l0 = prob.predict(x[None])
    a, l = prob.predict(Y)
    budget = float(l0[0]) + 0.5
    P = combo_moves(x, a0[0], l0[0], genes, values, a, l, budget, 50, size=size)
    assert len(P) == 50 and len({p.tobytes() for p in P}) == 50
    assert ((P != x).sum(1) == size).all()
    _, pl = prob.predict(P)
    assert (pl <= budget + 1e-9).all()
    est = a0[0] + np.array([sum(a[(genes == g) & (values == p[g])][0] - a0[0] for g in np.flatnonzero(p != x)) for p in P])
    assert (np.diff(est) <= 1e-12).all()  # best estimated accuracy first
    if size == 2:  # every pair within the budget that is left out is estimated no better than the last one taken
        i, j = np.triu_indices(len(genes), 1)
        ok = (genes[i] != genes[j]) & (l0[0] + (l[i] - l0[0]) + (l[j] - l0[0]) <= budget)
        all_est = np.sort(a[i[ok]] + a[j[ok]] - a0[0])[::-1]
        np.testing.assert_allclose(est, all_est[:50])


# ---------------------------------------------------------------------------------------------- utilities
def test_nondominated_rank_and_crowding_by_hand():
    f1 = np.array([1.0, 2.0, 3.0, 2.0, 3.0, 1.0, 4.0])
    f2 = np.array([3.0, 2.0, 1.0, 3.0, 2.0, 3.0, 4.0])
    # fronts: {0, 1, 2, 5 (equal to 0)}, {3, 4}, {6}
    assert nondominated_rank(f1, f2).tolist() == [0, 0, 0, 1, 1, 0, 2]
    d = crowding_distance(np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0]]))
    assert d[0] == d[2] == np.inf and d[1] == pytest.approx(((4 - 1) / 3 + (4 - 1) / 3) / 2)
    # an objective with no spread adds nothing, not even infinity at its ends
    assert crowding_distance(np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])).tolist() == [np.inf, 0.5, np.inf]
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300)
    r = nondominated_rank(a, b)
    for k in range(r.max() + 1):  # no point of a front dominates another of it; each is dominated by the front before
        m = np.flatnonzero(r == k)
        dom = (a[m, None] <= a[None, m]) & (b[m, None] <= b[None, m]) & ((a[m, None] < a[None, m]) | (b[m, None] < b[None, m]))
        assert not dom.any()
        if k:
            p = np.flatnonzero(r == k - 1)
            assert ((a[p, None] <= a[None, m]) & (b[p, None] <= b[None, m])).any(0).all()


def _pymoo_survival(F, cv, n_survive, seed):
    """pymoo's NSGA-II survival on the same points: (survivor indices, rank, crowding per point)."""
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    pop = Population.new("F", F, "G", cv[:, None])
    problem = Problem(n_var=1, n_obj=2, n_ieq_constr=1)
    keep = RankAndCrowding().do(problem, pop, n_survive=n_survive, random_state=np.random.default_rng(seed),
                                return_indices=True)
    rank = np.array([-1 if r is None else r for r in pop.get("rank")])
    crowd = np.array([np.nan if c is None else c for c in pop.get("crowding")], dtype=float)
    return np.array(keep), rank, crowd


@pytest.mark.parametrize("tied", [False, True])
def test_survival_selects_what_pymoo_selects(tied):
    """NSGA-II's survival (fronts, crowding, feasibility split) equals pymoo's RankAndCrowding: the same
    ranks and crowding distances, and the same survivors -- exactly, where pymoo's choice does not depend
    on its random tie-break, otherwise the same (rank, crowding) / violation values."""
    from hwnas.search.nsga import survival

    rng = np.random.default_rng(0)
    exact = 0
    for trial in range(40):
        n = int(rng.integers(20, 80))
        if tied:  # a coarse grid: duplicate points, equal crowding distances, equal violations
            F = rng.integers(0, 6, (n, 2)).astype(float)
            cv = np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0).astype(float)
        else:
            F = rng.random((n, 2))
            cv = np.where(rng.random(n) < 0.3, rng.random(n), 0.0)
        n_survive = int(rng.integers(1, n + 1))
        keep, rank, crowd = survival(F, cv, n_survive, np.random.default_rng(trial))
        p_keep, p_rank, p_crowd = _pymoo_survival(F, cv, n_survive, trial)
        ranked = p_rank >= 0
        np.testing.assert_array_equal(rank[ranked], p_rank[ranked])
        np.testing.assert_array_equal(crowd[ranked], p_crowd[ranked])
        assert len(keep) == len(p_keep) == n_survive and len(set(keep.tolist())) == n_survive

        def keys(idx):  # what survival ranks by: front and crowding, or the violation
            return [(rank[i], -crowd[i]) if cv[i] <= 0 else (np.inf, cv[i]) for i in idx]

        assert sorted(keys(keep)) == sorted(keys(p_keep))
        dropped = np.setdiff1d(np.flatnonzero((rank >= 0) | (cv > 0)), keep)
        if not set(keys(keep)) & set(keys(dropped)):  # no tie at the cut: one possible selection
            assert set(keep.tolist()) == set(p_keep.tolist())
            exact += 1
    assert exact >= (10 if tied else 25)


def test_pareto_mask_and_hypervolume_by_hand():
    acc = np.array([0.70, 0.75, 0.74, 0.80, 0.80])
    lat = np.array([10.0, 12.0, 13.0, 20.0, 21.0])
    m = pareto_mask(acc, lat)
    assert m.tolist() == [True, True, False, True, False]
    # staircase w.r.t. (0.6, 30): 0.10*(12-10) + 0.15*(20-12) + 0.20*(30-20)
    assert hypervolume(acc, lat, 0.6, 30.0) == pytest.approx(0.2 + 1.2 + 2.0)
    assert hypervolume(acc, lat, 0.9, 30.0) == 0.0


def test_problem_batches_and_caches(space):
    lat = ToyLatency(space)
    prob = ArchProblem(space, ToyAccuracy(space), lat, max_latency=20.0)
    X = space.sample_genomes(30, 8)
    a, l = prob.predict(X)
    archs = space.decode(X)
    ok = l <= 20
    np.testing.assert_allclose(a[ok], ToyAccuracy().predict(archs)[ok])  # over the limit: not predicted (NaN)
    np.testing.assert_allclose(l, ToyLatency().predict(archs))
    calls, n = lat.calls, prob.n_evals
    a2, l2 = prob.predict(np.concatenate([X, X]))  # all known: served from the archive
    assert lat.calls == calls and prob.n_evals == n
    np.testing.assert_array_equal(a2, np.concatenate([a, a]))
    # the front: feasible (<= 20) and non-dominated among everything evaluated
    f = prob.front_indices()
    assert set(map(tuple, prob.archive()[0][f])) == set(map(tuple, prob.canonical(X)[ok][pareto_mask(a[ok], l[ok])]))
    A, L = prob.archive()[1:]
    prob.load_archive(prob.archive()[0][:10], A[:10], L[:10])  # back to the first 10 evaluations
    assert prob.n_evals == 10 and prob.is_new(prob.canonical(X[10:])).all() and not prob.is_new(prob.canonical(X[:10])).any()


def test_accuracy_is_not_predicted_over_the_latency_limit(space):
    counting = CountingAccuracy(space)
    calls = counting.calls
    prob = ArchProblem(space, counting, ToyLatency(space), max_latency=20.0)
    X = prob.canonical(space.sample_genomes(200, 3))
    a, l = prob.predict(X)
    over = l > 20
    assert over.any() and (~over).any() and sum(calls) == (~over).sum()
    assert np.isnan(a[over]).all() and np.isfinite(a[~over]).all()
    a2, _ = prob.predict(X, full=True)  # filled in on request (pair estimates need them), then kept
    np.testing.assert_allclose(a2, ToyAccuracy().predict(space.decode(X)))
    assert sum(calls) == len(X) and prob.missing(X, full=True) == 0


# ---------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("restarts", [1, 2])
def test_same_seed_same_front(space, restarts):
    a, b = small_search(space, seed=7, restarts=restarts), small_search(space, seed=7, restarts=restarts)
    assert [h["phase"] for h in a.history].count("gen") == 6 * restarts
    np.testing.assert_array_equal(a.genomes, b.genomes)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.latency, b.latency)
    assert [h["hypervolume"] for h in a.history] == [h["hypervolume"] for h in b.history]
    c = small_search(space, seed=8, restarts=restarts)
    assert not (len(c.genomes) == len(a.genomes) and (c.genomes == a.genomes).all())


def test_front_valid_nondominated_unique_and_within_budget(space):
    res = small_search(space, budgets=[14, 20])
    assert len(res) > 5
    archs = res.archs
    for a in archs:
        assert space.validate(a) == a
    assert (res.latency <= 20.0 + 1e-12).all()
    # objectives are the predictors' values
    np.testing.assert_allclose(res.accuracy, ToyAccuracy().predict(archs))
    np.testing.assert_allclose(res.latency, ToyLatency().predict(archs))
    # unique networks
    assert len(set(archs)) == len(archs)
    assert len({r.tobytes() for r in space.canonical_genome(res.genomes)}) == len(res)
    # non-dominated: no member is at least as good in both and better in one
    A, L = res.accuracy, res.latency
    dom = (A[:, None] >= A[None, :]) & (L[:, None] <= L[None, :]) & ((A[:, None] > A[None, :]) | (L[:, None] < L[None, :]))
    assert not dom.any()
    # best under each budget is on the front and feasible
    for b, item in res.best_at_budgets().items():
        arch, acc, lat = item
        assert lat <= b and acc == A[L <= b].max()


def test_unconstrained_front_may_exceed_budget(space):
    res = small_search(space, constraint=False, budgets=[14])
    assert res.latency.max() > 14.0
    assert res.best_under(14)[2] <= 14.0


def test_history_hypervolume_non_decreasing_and_refine_helps(space):
    res = small_search(space, n_gen=8, refine=3, refine_members=10)
    hv = np.array([h["hypervolume"] for h in res.history])
    assert (np.diff(hv) >= -1e-12).all()
    assert [h["phase"] for h in res.history].count("gen") == 8
    evals = [h["n_evals"] for h in res.history]
    assert evals == sorted(evals)
    plain = small_search(space, n_gen=8, refine=0)
    np.testing.assert_array_equal(plain.history[-1]["hypervolume"], res.history[7]["hypervolume"])
    assert res.hypervolume >= plain.hypervolume
    assert res.hv_ref == plain.hv_ref


def test_walkers_try_triples_once_at_a_local_optimum(space):
    """A budget walker that no single or pair move improves stays for one step with triples in its
    neighbourhood, then stops; one that improves moves and goes back to pairs."""
    from hwnas.search.refine import Refiner

    prob = ArchProblem(space, ToyAccuracy(space), ToyLatency(space), max_latency=20.0)
    prob.predict(space.sample_genomes(300, 2))
    ref = Refiner(prob, members=4, moves="grid", pairs=20, starts=3, budgets=[14.0, 20.0])
    seen = {2: 0, 3: 0}
    for _ in range(60):
        before = {w.tobytes(): s for w, s in zip(ref.walkers, ref.walker_size)}
        N = ref.candidates()
        if ref.seeded and not len(ref.walkers):
            break
        after = {w.tobytes(): s for w, s in zip(ref.walkers, ref.walker_size)}
        for key, size in after.items():
            seen[int(size)] += 1
            if size == 3:  # stayed in place after a step at size 2; its neighbourhood holds triples
                assert before.get(key) == 2
                w = np.frombuffer(key, dtype=ref.walkers.dtype)
                changed = ((N != w) & (np.arange(prob.n_var) < prob.layout.n_slots)).sum(1)
                assert (changed == 3).sum() > 0
        assert all(before.get(k) != 3 for k in after)  # nobody stays at size 3 without moving
        prob.predict(N)
    assert ref.seeded and not len(ref.walkers) and seen[2] > 0 and seen[3] > 0  # every walker stopped


def test_members_near_a_budget_get_every_move(space):
    """Pareto local search: front members within ``band`` below a budget are expanded with every
    move (as ``moves="all"``), the others with grid moves; ``band=0`` is grid moves for all."""
    from hwnas.search.refine import Refiner

    def expansions(band):
        prob = ArchProblem(space, ToyAccuracy(space), ToyLatency(space), max_latency=30.0)
        prob.predict(space.sample_genomes(300, 2))
        X, _, lat = prob.archive()
        front = prob.front_indices()
        budget = float(np.median(lat[front]))
        ref = Refiner(prob, members=None, moves="grid", pairs=0, starts=0, budgets=[budget], band=band)
        return X[front], lat[front], budget, ref.candidates()

    F, L, b, N = expansions(0.2)
    near = (L <= b) & (L >= 0.8 * b)
    assert near.any() and (~near).any()
    lay = GenomeLayout(space)
    want = np.concatenate([neighbour_matrix(lay, F[near], "all"), neighbour_matrix(lay, F[~near], "grid")])
    assert sorted(row_keys(N)) == sorted(row_keys(want))
    _, _, _, N0 = expansions(0.0)
    assert sorted(row_keys(N0)) == sorted(row_keys(neighbour_matrix(lay, F, "grid")))
    assert len(N) > len(N0)


def test_bad_settings_raise_clear_errors(space):
    with pytest.raises(ValueError, match="pop_size"):
        small_search(space, pop_size=2)
    with pytest.raises(ValueError, match="budgets"):
        small_search(space, budgets=["fast"])
    with pytest.raises(ValueError, match="crossover.mode"):
        small_search(space, crossover="onepoint")
    with pytest.raises(TypeError, match="predict"):
        run_search(space, object(), ToyLatency(space), pop_size=8, n_gen=1, verbose=False)
    from hwnas.predictors.build import ConfigError
    from hwnas.search.settings import search_kwargs

    with pytest.raises(ConfigError, match=r"search.engine='deap' is unknown; allowed values: \['numpy', 'pymoo'\]"):
        search_kwargs({"engine": "deap"})
    with pytest.raises(ConfigError, match=r"search.refine.budget_band=1.5 must be a fraction in \[0, 1\); e.g. search.refine.budget_band=0.1"):
        search_kwargs({"refine": {"budget_band": 1.5}})
    assert search_kwargs({"refine": {"budget_band": 0}})["refine_band"] == 0.0


def test_budgets_checked_against_the_initial_population_before_searching(space):
    """Budgets of another device fail after the initial population, not after the generations."""
    lat = ToyLatency(space)  # >= 2 ms for every arch
    seen = []
    with pytest.raises(ValueError, match=r"search\.budgets=\[0\.5,1\]: \[0\.5,1\] below the fastest of 24 sampled archs") as err:
        run_search(space, ToyAccuracy(space), lat, pop_size=24, n_gen=6, budgets=[0.5, 1.0], verbose=False,
                   callback=seen.append)
    assert seen == [] and lat.calls == 1  # one batch: the initial population
    lo, hi = map(float, str(err.value).split("(latency ")[1].split(",")[0].split("-"))
    q = [float(v) for v in str(err.value).split("e.g. search.budgets=[")[1].split("]")[0].split(",")]
    assert 2.0 <= lo < q[0] < q[-1] < hi  # the suggestion lies within the sampled range
    with pytest.raises(ValueError, match=r"are all above the slowest"):
        small_search(space, budgets=[1e6])


def test_run_search_takes_a_space_name():
    space = create_space("ofa_mbv3_w12")
    res = run_search("ofa_mbv3_w12", ToyAccuracy(space), ToyLatency(space), pop_size=16, n_gen=2, refine=0, seed=0,
                     verbose=False, budgets=[20])
    ref = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=16, n_gen=2, refine=0, seed=0, verbose=False,
                     budgets=[20])
    assert res.space.name == space.name and np.array_equal(res.genomes, ref.genomes)


def test_without_budgets_quantiles_of_the_sample_are_reported(space):
    lines = []
    res = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=24, n_gen=3, refine=0, log=lines.append)
    assert len(res.budgets) == 4 and res.budgets == sorted(res.budgets)
    assert any("search.budgets not given" in ln and "20/40/60/80% quantiles" in ln for ln in lines)
    quiet: list = []
    run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=24, n_gen=3, refine=0, log=quiet.append, verbose=False)
    assert quiet == []  # verbose=False: the note is information, not a warning
    assert res.settings["max_latency"] is None  # reported only: the search is not constrained by them
    assert all(res.best_under(b) is not None for b in res.budgets)
    # the progress lines number generations and refinement passes each from 1
    lines = []
    run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=24, n_gen=3, refine=2, budgets=[20], seed=0,
               log=lines.append, verbose=True)
    steps = [ln.split(" |")[0].split() for ln in lines if ln.startswith(("gen ", "refine "))]
    assert steps == [["gen", "1"], ["gen", "2"], ["gen", "3"], ["refine", "1"], ["refine", "2"]], lines


@pytest.mark.parametrize("engine", ["numpy", "pymoo"])
def test_max_evals_is_respected_by_nsga_and_refinement(space, engine):
    for m in (30, 100, 400):
        counting = CountingAccuracy(space)
        calls = counting.calls
        res = run_search(space, counting, ToyLatency(space), pop_size=24, n_gen=50, budgets=[14, 20], refine=20,
                         refine_members=8, max_evals=m, verbose=False, engine=engine)
        assert sum(calls) <= res.n_evals <= m  # over-limit archs skip the accuracy predictor
        assert res.n_evals >= m - 24  # the budget is used, not abandoned early


def test_pymoo_engine_runs_pymoos_nsga2_with_the_same_results_contract(space):
    """search.engine=pymoo: pymoo's NSGA2 class runs hwnas's operators; the front keeps to the budget,
    holds the predictors' values, is reproducible, and is as good as the default engine's."""
    import sys

    from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2Class

    runs = []
    original = PymooNSGA2Class.next
    PymooNSGA2Class.next = lambda self: (runs.append(type(self)), original(self))[1]
    try:
        res = small_search(space, engine="pymoo", seed=3)
    finally:
        PymooNSGA2Class.next = original
    assert runs == [PymooNSGA2Class] * 7  # the initial population and 6 generations, all by pymoo
    assert (res.latency <= 20.0 + 1e-12).all() and len(res) > 5
    np.testing.assert_allclose(res.accuracy, ToyAccuracy().predict(res.archs))
    np.testing.assert_allclose(res.latency, ToyLatency().predict(res.archs))
    again = small_search(space, engine="pymoo", seed=3)
    np.testing.assert_array_equal(res.genomes, again.genomes)
    assert "pymoo" in sys.modules
    # plain NSGA-II, both engines: hypervolumes within a few percent (measured 0.98-1.03 per seed)
    ratios = []
    for seed in range(4):
        hv = [run_search(space, ToyAccuracy(space), ToyLatency(space), engine=e, pop_size=32, n_gen=10, seed=seed,
                         budgets=[14, 20], refine=0, verbose=False, hv_ref=(0.6, 20)).hypervolume for e in ("pymoo", "numpy")]
        ratios.append(hv[0] / hv[1])
    assert 0.94 < min(ratios) and max(ratios) < 1.06 and 0.97 < np.mean(ratios) < 1.03


def test_hwnas_operators_run_in_another_pymoo_algorithm(space):
    """The pymoo operator classes and problem plug into any pymoo genetic algorithm (here SPEA2)."""
    from pymoo.algorithms.moo.spea2 import SPEA2
    from pymoo.optimize import minimize

    from hwnas.search.pymoo_nsga import PymooArchProblem, pymoo_operators

    problem = ArchProblem(space, ToyAccuracy(space), ToyLatency(space), max_latency=14.0)
    ops = pymoo_operators(problem, ArchSampling(space, 0.25), ArchCrossover(space, "unit", 0.9), ArchMutation(space, None, 0.5))
    res = minimize(PymooArchProblem(problem), SPEA2(pop_size=24, **ops), ("n_gen", 5), seed=1)
    X, acc, lat = problem.archive()
    assert problem.n_evals == len(X) and len(X) > 24  # every arch SPEA2 evaluated went through the archive, once
    assert {r.tobytes() for r in problem.canonical(res.X).astype(np.int16)} <= set(row_keys(X))
    f = problem.front_indices()
    assert len(f) > 3 and (lat[f] <= 14.0).all()
    np.testing.assert_allclose(-res.F[:, 0], ToyAccuracy().predict(space.decode(problem.canonical(res.X))))


@pytest.mark.parametrize("engine, stop", [("numpy", 3), ("pymoo", 3), ("numpy", 14)])
def test_resumed_run_gives_the_uninterrupted_front(space, tmp_path, engine, stop):
    """A run stopped after step ``stop`` (generation 3 of NSGA-II, or the second refinement pass) and
    resumed from its checkpoint (a new process's view: arrays and JSON read back) ends with the front of
    the uninterrupted run, for both engines."""
    from hwnas.search.checkpoint import SearchCheckpoint

    class Stop(Exception):
        pass

    class StopAfter3(SearchCheckpoint):
        def save(self, engine_, problem, gen, *args, **kw):
            super().save(engine_, problem, gen, *args, **kw)
            if gen == stop:
                raise Stop

    args = dict(engine=engine, restarts=2, seed=5, refine=3, refine_starts=2)
    full = small_search(space, **args)
    with pytest.raises(Stop):
        small_search(space, checkpoint=StopAfter3(tmp_path / "ck.npz"), **args)
    ck = SearchCheckpoint(tmp_path / "ck.npz")
    resumed = small_search(space, checkpoint=ck, **args)
    assert ck.resumed_from == stop and [h["phase"] for h in full.history][stop - 1] == ("gen" if stop == 3 else "refine")
    np.testing.assert_array_equal(resumed.genomes, full.genomes)
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    assert resumed.n_evals == full.n_evals


def test_the_default_engine_never_imports_pymoo():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from hwnas.search import run_search\n"
        "from hwnas.spaces import create_space\n"
        "class Toy:\n"
        "    def __init__(self, k): self.k = k\n"
        "    def predict(self, archs): return np.array([sum(a.e) * self.k + a.r / 100 for a in archs], float)\n"
        "space = create_space('ofa_mbv3_w12')\n"
        "run_search(space, Toy(0.01), Toy(1.0), pop_size=8, n_gen=2, refine=1, budgets=[90], verbose=False)\n"
        "print('pymoo' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["False"]


def test_results_files_round_trip(space, tmp_path):
    res = small_search(space)
    paths = write_results(res, tmp_path, config={"search": {"seed": 1}})
    for name in ("pareto.csv", "pareto.json", "history.csv", "pareto.svg", "config.yaml"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0
    rows = load_front(tmp_path)  # space rebuilt from the file
    assert [r["arch"] for r in rows] == res.archs
    assert [r["accuracy"] for r in rows] == res.accuracy.tolist()
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert data["best"]["20"]["latency"] <= 20
    assert data["front"][0]["arch_str"] == str(res.archs[0])
    hist = (tmp_path / "history.csv").read_text().splitlines()
    assert hist[0].startswith("gen,phase,n_evals,front_size,hypervolume")
    assert len(hist) == 1 + len(res.history)


def test_front_plot_is_valid_svg_with_every_budget_in_the_legend(space):
    """Budgets 0.1 apart: every label sits in the legend (one line each, none on the plot), every
    budget with a best arch gets its star, every front member its dot, and the file parses as XML."""
    import xml.etree.ElementTree as ET

    from hwnas.search.svgplot import front_svg

    res = small_search(space, budgets=[14.0, 14.1, 14.2, 14.3], constraint=False)
    root = ET.fromstring(front_svg(res))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(ns + "text")]
    legend = [t for t in texts if t.startswith("≤ ") or t.startswith("front (")]
    assert legend[0] == f"front ({len(res)} archs)" and len(legend) == 1 + 4
    best = res.best_at_budgets()
    for b, item in best.items():
        assert any(t.startswith(f"≤ {b:g}: {item[1] * 100:.2f}%") for t in legend)
    ys = [float(t.get("y")) for t in root.iter(ns + "text") if t.text in legend]
    assert len(set(ys)) == len(ys) and min(np.diff(sorted(ys))) >= 14  # one line each: no overlap
    assert len(list(root.iter(ns + "circle"))) == len(res) + 1  # the members and the legend's dot
    assert len(list(root.iter(ns + "polygon"))) == 2 * sum(v is not None for v in best.values())  # star + legend star


def test_nice_ticks():
    from hwnas.search.svgplot import nice_ticks

    assert nice_ticks(9.3, 30.4) == [10.0, 15.0, 20.0, 25.0, 30.0]
    assert nice_ticks(0.7512, 0.8331) == [0.76, 0.78, 0.8, 0.82]
    assert nice_ticks(3.0, 3.0) == [3.0]


def test_real_predictors_small_search(space, data_dir):
    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor

    acc, lat = OFAAccuracyPredictor(space=space), LookupTableLatency(space)
    res = run_search(space, acc, lat, pop_size=40, n_gen=10, seed=0, budgets=[20, 25], refine=2, refine_members=20, verbose=False)
    archs = res.archs
    np.testing.assert_allclose(res.accuracy, acc.predict(archs), rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.latency, lat.predict(archs), rtol=0, atol=1e-9)
    best = res.best_under(25)
    assert best is not None and 0.78 < best[1] < 0.85 and best[2] <= 25


def test_a_random_seed_is_recorded_and_repeats_the_search(tmp_path):
    """search.seed=null drew a seed and recorded none: the run could not be repeated."""
    import json

    from test_cli import ToyAccuracy, ToyLatency

    from hwnas.search import run_search, write_results
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")
    kw = dict(pop_size=16, n_gen=3, refine=1, budgets=[12], verbose=False)
    a = run_search(space, ToyAccuracy(space), ToyLatency(space), seed=None, **kw)
    assert a.seed is None and isinstance(a.seed_drawn, int)
    b = run_search(space, ToyAccuracy(space), ToyLatency(space), seed=a.seed_drawn, **kw)
    assert [x.to_str() for x in a.archs] == [x.to_str() for x in b.archs] and b.seed_drawn is None
    write_results(a, tmp_path, plot=False)
    assert int(json.loads((tmp_path / "pareto.json").read_text())["seed_drawn"]) == a.seed_drawn


def test_quantile_budgets_stay_below_max_latency():
    """search.budgets=[] with search.max_latency: the reported 'budgets' were quantiles of every sampled arch,
    all above max_latency (every one then showed the same arch)."""
    from test_cli import ToyAccuracy, ToyLatency

    from hwnas.search import run_search
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")
    free = run_search(space, ToyAccuracy(space), ToyLatency(space), budgets=[], pop_size=24, n_gen=2, refine=0, seed=0,
                      verbose=False)
    cap = float(np.quantile(free.latency, 0.3))
    capped = run_search(space, ToyAccuracy(space), ToyLatency(space), budgets=[], max_latency=cap, pop_size=24, n_gen=2,
                        refine=0, seed=0, verbose=False)
    assert capped.budgets and max(capped.budgets) <= cap


def test_max_evals_inside_the_initial_population_keeps_the_runs_reference(space):
    """search.max_evals <= pop_size ended before any step: no history row, and the hypervolume against the worst
    sampled latency (6.85 where a full run had 0.86), not the largest budget as every other run."""
    small = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=24, n_gen=5, budgets=[14, 20], refine=0,
                       max_evals=20, verbose=False)
    more = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=24, n_gen=5, budgets=[14, 20], refine=0,
                      max_evals=60, verbose=False)
    assert small.hv_ref[1] == more.hv_ref[1] == 20.0 and small.n_evals <= 20
    assert len(small.history) == 1 and small.history[0]["hypervolume"] <= more.history[-1]["hypervolume"]
