"""Proxy adaptation on real multi-device data (NAS-Bench-201, proxy pixel3) and sample selection."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from hwnas.predictors.adapt import AdaptedLatency, adapt, select_samples
from hwnas.predictors.data import load_dataset
from hwnas.predictors.linear import LinearLatencyPredictor


def _setup():
    ds = load_dataset("nasbench201")
    P = LinearLatencyPredictor(ds.space).fit(ds.archs, ds["pixel3"])
    return ds, P, P.predict(ds.archs)


# titan_rtx_1: the lowest proxy SRCC (0.58) of the file; pixel2: a noisy target (a linear model fitted on
# all its rows reaches only 0.905), the hardest at K=10. Measured K=10 (random, seeds 0-4):
# titan_rtx_1 mean 0.93, pixel2 mean 0.86 (worst seed 0.81 = the proxy).
@pytest.mark.parametrize("target, mean_bound", [("titan_rtx_1", 0.88), ("pixel2", 0.84)])
def test_bayes_k10_never_below_proxy(data_dir, target, mean_bound):
    ds, P, pp = _setup()
    y = ds[target]
    base = spearmanr(pp, y)[0]
    scores = []
    for seed in range(5):
        idx = np.random.default_rng(seed).choice(len(ds), 10, replace=False)
        m = adapt(P, [ds.archs[i] for i in idx], y[idx], method="bayes")
        s = spearmanr(m.predict(ds.archs), y)[0]
        assert s >= base - 1e-6, f"seed {seed}: adapted {s:.3f} below the unadapted proxy {base:.3f}"
        scores.append(s)
    assert np.mean(scores) > mean_bound


def test_guard_keeps_the_proxy_when_it_is_right(data_dir):
    # target = the proxy's own prediction + measurement noise: no correction can order held-out pairs
    # better, so the guard returns the proxy's ranking (measured: 8 of 8 seeds)
    ds, P, pp = _setup()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(ds), 20, replace=False)
        y = pp[idx] + rng.normal(0.0, 0.5, size=20)
        m = adapt(P, [ds.archs[i] for i in idx], y)
        assert spearmanr(m.predict(ds.archs), pp)[0] > 0.999, seed


def test_lpo_gain_prefers_the_true_model():
    from hwnas.predictors.adapt import _gp_lpo_gain

    rng = np.random.default_rng(0)
    K = 16
    z = rng.normal(size=K)
    y = 2.0 * z + 0.05 * rng.normal(size=K)
    C = 4.0 * np.outer(z, z)  # a kernel that contains the truth
    H = np.ones((K, 1))
    good, ref_good, se, n = _gp_lpo_gain(C, H, y, ref=rng.normal(size=K))
    assert n == K * (K - 1) // 2
    assert good > 0.95 and ref_good < 0.75 and (good - ref_good) > 2 * se


def test_fbnet_k20_beats_nasflat_range(data_dir):
    # NASFLAT (20 target samples, pretrained on many devices) reports SRCC 0.58-0.96 on FBNet tasks.
    # One proxy (pixel3) + 20 samples, measured seeds 0-4: eyeriss 0.99, gold_6226 0.96, titan_rtx_64 0.97.
    ds = load_dataset("fbnet")
    P = LinearLatencyPredictor(ds.space).fit(ds.archs, ds["pixel3"])
    pp = P.predict(ds.archs)
    for target, bound in (("gold_6226", 0.9), ("titan_rtx_64", 0.9)):
        y = ds[target]
        idx = np.random.default_rng(0).choice(len(ds), 20, replace=False)
        m = adapt(P, [ds.archs[i] for i in idx], y[idx])
        s = spearmanr(m.predict(ds.archs), y)[0]
        assert s > max(bound, spearmanr(pp, y)[0] + 0.1), (target, s)


def test_plain_adaproxy_is_worse_and_shrinkage_recovers(data_dir):
    ds, P, pp = _setup()
    y = ds["titan_rtx_1"]
    out = {}
    for method in ("adaproxy_plain", "bayes"):
        v = []
        for seed in range(3):
            idx = np.random.default_rng(seed).choice(len(ds), 10, replace=False)
            m = adapt(P, [ds.archs[i] for i in idx], y[idx], method=method, **({"rng": seed} if method == "adaproxy_plain" else {}))
            v.append(spearmanr(m.predict(ds.archs), y)[0])
        out[method] = np.mean(v)
    assert out["bayes"] > out["adaproxy_plain"] + 0.1


def test_adapt_input_errors(data_dir):
    ds, P, _ = _setup()
    with pytest.raises(ValueError, match="at least 3"):
        adapt(P, ds.archs[:2], [1.0, 2.0])
    with pytest.raises(ValueError, match="method='nope'"):
        adapt(P, ds.archs[:5], np.arange(5.0) + 1, method="nope")
    with pytest.raises(TypeError, match="fitted LinearLatencyPredictor"):
        adapt(object(), ds.archs[:5], np.arange(5.0) + 1)


def test_kmeans_selection_distinct(data_dir):
    ds = load_dataset("fbnet")
    pool = ds.archs[:1000]
    idx = select_samples(ds.space, pool, 20, "kmeans", rng=0)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and len({pool[i] for i in idx}) == 20
    assert idx.min() >= 0 and idx.max() < 1000
    r = select_samples(ds.space, pool, 20, "random", rng=0)
    assert len(set(r.tolist())) == 20
    with pytest.raises(ValueError, match="k=2000"):
        select_samples(ds.space, pool, 2000)


def test_adapted_latency_from_csv(tmp_path, data_dir):
    ds = load_dataset("nasbench201")
    rng = np.random.default_rng(1)
    idx = rng.choice(len(ds), 10, replace=False)
    target = ds.subset(idx).select_devices(["titanx_32"])
    path = target.to_csv(tmp_path / "target.csv")
    m = AdaptedLatency("nasbench201", proxy="nasbench201", proxy_device="pixel3", target_samples=str(path),
                       target_device="titanx_32", k=None)
    assert len(m.sample_archs) == 10
    s = spearmanr(m.predict(ds.archs), ds["titanx_32"])[0]
    assert s > 0.9
    g = ds.space.sample_genomes(7, 0)
    assert m.predict(ds.space.batch(g)).shape == (7,)
    with pytest.raises(ValueError, match="target_device"):
        AdaptedLatency("nasbench201", target_samples=str(path), target_device=None)


def test_ofa_batch1_proxy_to_batch64_target(data_dir):
    # OFA-MBv3: a launch-bound batch-1 proxy ranks batch-64 latency poorly (SRCC 0.26); the macro kernel
    # (input size, depth) fixes that with 10 samples. Measured seeds 0-4: mean 0.95, worst 0.95.
    ds = load_dataset("ofa_mbv3")
    P = LinearLatencyPredictor(ds.space).fit(ds.archs, ds["2080ti_1"])
    y = ds["titan_rtx_64"]
    base = spearmanr(P.predict(ds.archs), y)[0]
    for seed in range(2):
        idx = np.random.default_rng(seed).choice(len(ds), 10, replace=False)
        m = adapt(P, [ds.archs[i] for i in idx], y[idx])
        assert spearmanr(m.predict(ds.archs), y)[0] > max(base, 0.85)


def test_kmeans_samples_span_the_space_on_mobilenets(data_dir):
    # k-means picks each cluster's own member nearest its centroid; nearest among all archs picked the
    # smallest networks for every cluster on OFA-MBv3 (all at r128-144, bottom 5% of latency), and the
    # adapted predictor ranked titan_rtx_1 at SRCC ~0. Measured now: spread ratio ~1, r in 148-216.
    ds = load_dataset("ofa_mbv3")
    P = LinearLatencyPredictor(ds.space).fit(ds.archs, ds["2080ti_1"])
    pp = P.predict(ds.archs)
    idx = select_samples(ds.space, ds.archs, 10, "kmeans", rng=0)
    assert np.std(pp[idx]) > 0.5 * np.std(pp)
    assert len({ds.archs[i].r for i in idx}) >= 5
    y = ds["titan_rtx_1"]
    m = adapt(P, [ds.archs[i] for i in idx], y[idx])
    assert spearmanr(m.predict(ds.archs), y)[0] >= spearmanr(pp, y)[0] - 0.02
