"""Proxy adaptation: a latency predictor fitted on one proxy device, adapted to a target device from a
few (K) measured target samples; and the choice of which K archs to measure.

Methods (``adapt(proxy, archs, latencies, method=...)``):

``adaproxy`` (Lu et al. 2021, with shrinkage). The proxy predictor is operator-level linear,
    ``l_p = w_p . x``. On the target, ``y = x . (w_p * (a + b)) + c`` (global scale ``a``, per-operator
    correction ``b``, bias ``c``), penalty ``lam * |b|^2``. ``lam`` is chosen by the leave-one-out
    SRCC of the K samples over a grid that includes ``lam = inf`` (pure scale + bias, i.e. the proxy's
    ranking); a finite ``lam`` is kept only if it beats ``inf`` by a margin, otherwise the proxy ranking
    is kept. Measured (benchmarks/proxy_adaptation.py, NB201 pixel3): the leave-one-out SRCC of 5-20
    samples is too noisy a judge, and multiplicative corrections cannot give cost to operators that are
    free on the proxy (skip/none on a phone vs kernel launches on a GPU): it stays near the proxy
    (mean 0.74-0.78 at K=5-20) and still drops below it on many targets; ``bayes`` fixes both.
``adaproxy_plain``: the same model with ``lam`` picked on a held-out third of the K samples, no
    ``inf`` option and no fallback: the straightforward version (kept to show why shrinkage matters).
``bayes`` (default): empirical-Bayes hierarchical correction. ``y = c + a * l_p(x) + delta(x)`` where
    ``delta`` is a zero-mean Gaussian correction with a sum of linear kernels:
    ``physics``: the arch's physical totals (1x1-conv MACs, other MACs, activations, operator launches,
    weights; :func:`hwnas.predictors.linear.cost_table`), a device-agnostic roofline basis of 5 terms
    that a few samples can estimate; ``counts``: per-operator-type counts ("number of 3x3 convolutions");
    MobileNet spaces add ``macro``: (r/224)^2, number of layers, and their product. Optional:
    ``stage_counts``, ``operators`` (AdaProxy's per-operator terms ``x * w_p``), ``onehot``.
    Kernel variances come from a grid, weighted by the restricted marginal likelihood of the K samples
    (with a weak prior toward 0, i.e. toward the proxy) and averaged (``average=True``; False keeps
    the most probable); with zero variance the model is the proxy's ranking. A negative proxy scale is
    not allowed; with K >= 10 samples the proxy term may be dropped (at an evidence penalty) when the
    correction alone explains the samples (e.g. a batch-1 GPU proxy for a batch-64 target, where cost
    follows input size, not layer count).
    Guard (``guard=0.5``; ``None`` disables): leave-pair-out validation. For every pair of samples, both
    are left out and predicted by one fit of the most probable correction; the correction is kept only
    if it orders the pairs better than the proxy by more than ``guard`` standard errors (of the paired
    U-statistic); otherwise the proxy's ranking is returned. Leave-one-out predictions (each from a
    different fit) were tried first and judged good corrections worse than the proxy (NB201 pixel2).
    Measured (benchmarks/proxy_adaptation.py, random samples, 5 seeds): ``guard`` trades the worst
    target against drops below the proxy: 0.5 gives NB201 K=10 worst 0.853 with no target below the
    proxy at any K, and one OFA batch-1 GPU target 0.01 below at K=20; 0.75 removes that one and
    lowers NB201's worst target to 0.83.
``multiproxy``: several source devices (``sources={name: predictor}``); target = a nonnegative
    combination of their standardised predictions + bias (ridge-NNLS), kept only when its
    leave-one-out SRCC beats the main proxy's.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls
from scipy.stats import spearmanr

from .base import Predictor
from .linear import LinearLatencyPredictor, cost_table, feature_groups, feature_stages, latency_features

METHODS = ("bayes", "adaproxy", "adaproxy_plain", "multiproxy", "proxy")


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return -1.0
    return float(spearmanr(a, b)[0])


def _as_linear(proxy: Any) -> LinearLatencyPredictor:
    if not isinstance(proxy, LinearLatencyPredictor) or proxy.weights is None:
        raise TypeError(
            "proxy: adaptation needs a fitted LinearLatencyPredictor (fit it on the proxy device's "
            f"measurements first); got {type(proxy).__name__}"
        )
    return proxy


# ============================================================================ adapted predictors
class AdaptedPredictor(Predictor):
    """``predict(archs) = c + a * proxy(archs) + sum_j coef_j * Z_j(archs)`` (Z: correction features)."""

    metric = "latency_ms"

    def __init__(self, proxy: LinearLatencyPredictor, method: str, info: dict | None = None) -> None:
        self.proxy = proxy
        self.space = proxy.space
        self.method = method
        self.info = info or {}
        self.a = 1.0
        self.c = 0.0
        self.coef: np.ndarray | None = None  # on correction features
        self._corr = None  # callable archs -> Z (n, m), or None

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        X = latency_features(self.space, archs)
        p = X @ self.proxy.weights + self.proxy.bias
        out = self.c + self.a * p
        if self.coef is not None and self._corr is not None:
            out = out + self._corr(X) @ self.coef
        return out


class MultiProxyPredictor(Predictor):
    metric = "latency_ms"

    def __init__(self, sources: Sequence[Any], coef: np.ndarray, bias: float, mu: np.ndarray, sd: np.ndarray, info: dict) -> None:
        self.sources = list(sources)
        self.coef, self.bias, self.mu, self.sd, self.info = coef, bias, mu, sd, info
        self.space = getattr(self.sources[0], "space", None)
        self.method = "multiproxy"

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        P = np.stack([np.asarray(s.predict(archs), dtype=float) for s in self.sources], axis=1)
        return self.bias + ((P - self.mu) / self.sd) @ self.coef


# ============================================================================ linear algebra helpers
def _ridge_loo(Z: np.ndarray, y: np.ndarray, pen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with per-column penalties (0 = free): coefficients and exact leave-one-out predictions."""
    A = Z.T @ Z + np.diag(pen) + 1e-10 * np.eye(Z.shape[1])
    Ai = np.linalg.pinv(A)
    coef = Ai @ Z.T @ y
    h = np.einsum("ij,jk,ik->i", Z, Ai, Z)
    r = y - Z @ coef
    loo = y - r / np.clip(1.0 - h, 1e-6, None)
    return coef, loo


def _check_samples(archs: Sequence[Any], y: Sequence[float]) -> np.ndarray:
    y = np.asarray(y, dtype=float).reshape(-1)
    if len(y) != len(archs):
        raise ValueError(f"target samples: {len(archs)} archs but {len(y)} latencies; give one per arch")
    if len(y) < 3:
        raise ValueError(f"target samples: got {len(y)}; adaptation needs at least 3 measured target archs")
    if not np.isfinite(y).all():
        raise ValueError("target samples: latencies contain NaN/inf")
    return y


# ============================================================================ methods
def _standardised(proxy: LinearLatencyPredictor, archs, y):
    """Features, proxy weights and predictions on the samples, and the standardised targets, with the
    (mean, std) of the targets and of the proxy predictions."""
    X = latency_features(proxy.space, archs)
    w = proxy.weights
    p = X @ w + proxy.bias
    ym, ysd = y.mean(), y.std() + 1e-12
    pm, psd = p.mean(), p.std() + 1e-12
    return X, w, p, (y - ym) / ysd, (ym, ysd), (pm, psd)


def _adaproxy(proxy: LinearLatencyPredictor, archs, y, plain: bool = False, margin: float = 0.05,
              lams: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0), rng=None) -> AdaptedPredictor:
    X, w, p, ys, (ym, ysd), (pm, psd) = _standardised(proxy, archs, y)
    K = len(y)
    # columns: 1, proxy (standardised), x_j * w_j (per-operator corrections, scaled like the proxy)
    M = (X * w) / psd
    used = np.flatnonzero(np.abs(M).sum(0) > 0)
    Z = np.c_[np.ones(K), (p - pm) / psd, M[:, used]]
    free = np.zeros(2)
    res = {}
    if plain:
        rng = np.random.default_rng(rng)
        perm = rng.permutation(K)
        n_val = max(2, K // 3)
        val, tr = perm[:n_val], perm[n_val:]
        best = None
        for lam in lams:
            pen = np.r_[free, np.full(len(used), lam)]
            coef, _ = _ridge_loo(Z[tr], ys[tr], pen)
            s = _srcc(Z[val] @ coef, ys[val])
            if best is None or s > best[0]:
                best = (s, lam)
        lam = best[1]
    else:
        _, loo_inf = _ridge_loo(Z[:, :2], ys, free)
        base = _srcc(loo_inf, ys)
        lam, best = np.inf, base + margin
        for l_ in lams:
            _, loo = _ridge_loo(Z, ys, np.r_[free, np.full(len(used), l_)])
            s = _srcc(loo, ys)
            res[l_] = s
            if s > best:
                lam, best = l_, s
        res["inf"] = base
    out = AdaptedPredictor(proxy, "adaproxy_plain" if plain else "adaproxy", {"lam": lam, "loo_srcc": res})
    if np.isinf(lam):
        coef, _ = _ridge_loo(Z[:, :2], ys, free)
        coef = np.r_[coef, np.zeros(len(used))]
    else:
        coef, _ = _ridge_loo(Z, ys, np.r_[free, np.full(len(used), lam)])
    if coef[1] <= 0 and not plain:  # negative proxy scale: the samples are too few/noisy to trust
        coef = np.r_[0.0, 1.0, np.zeros(len(used))]
        out.info["fallback"] = "negative scale"
    # back to latency units: y = ym + ysd * (c0 + c1 (p - pm)/psd + M b)
    out.a = ysd * coef[1] / psd
    out.c = ym + ysd * coef[0] - out.a * pm
    b = coef[2:] * ysd
    out.coef = b
    out._corr = lambda Xn, used=used, w=w, psd=psd: ((Xn * w) / psd)[:, used]
    return out


def _gp_lpo_gain(C: np.ndarray, H: np.ndarray, y: np.ndarray, ref: np.ndarray,
                 max_pairs: int = 600) -> tuple[float, float, float, int]:
    """Leave-pair-out comparison of the model ``y = H beta + f + noise`` (kernel fixed, ``beta``
    refitted) with a fixed reference ranking ``ref`` (the proxy). For each pair of samples with different
    ``y``, both are left out and predicted by the *same* fit (pairs of leave-one-out predictions come from
    different fits, which penalises the model for the folds' disagreement rather than for its errors).
    Returns (model concordance, reference concordance, standard error of their difference, #pairs).
    The standard error is that of a paired U-statistic, ``2 sd(h) / sqrt(K)`` with ``h_k`` the mean
    difference over the pairs of sample ``k``: it is small when the two rankings mostly agree. At most
    ``max_pairs`` pairs (a fixed subset) are used."""
    K = len(y)
    i_all, j_all = np.triu_indices(K, 1)
    keep = y[i_all] != y[j_all]
    i_all, j_all = i_all[keep], j_all[keep]
    if len(i_all) > max_pairs:
        sel = np.sort(np.random.default_rng(0).choice(len(i_all), max_pairs, replace=False))
        i_all, j_all = i_all[sel], j_all[sel]
    n = len(i_all)
    if n == 0:
        return 0.5, 0.5, np.inf, 0
    V = np.eye(K) + C
    good = np.empty(n)
    rng_k = np.arange(K)
    for t, (i, j) in enumerate(zip(i_all, j_all)):
        idx = rng_k[(rng_k != i) & (rng_k != j)]
        Vi = np.linalg.inv(V[np.ix_(idx, idx)])
        Hi = H[idx]
        beta = np.linalg.lstsq(Hi.T @ Vi @ Hi, Hi.T @ Vi @ y[idx], rcond=None)[0]
        res = Vi @ (y[idx] - Hi @ beta)
        pij = H[[i, j]] @ beta + C[np.ix_([i, j], idx)] @ res
        good[t] = 0.5 * (1 + np.sign(pij[0] - pij[1]) * np.sign(y[i] - y[j]))
    dy = np.sign(y[i_all] - y[j_all])
    ref_good = 0.5 * (1 + np.sign(ref[i_all] - ref[j_all]) * dy)
    d = good - ref_good
    h = np.zeros(K)
    cnt = np.zeros(K)
    np.add.at(h, i_all, d)
    np.add.at(h, j_all, d)
    np.add.at(cnt, i_all, 1)
    np.add.at(cnt, j_all, 1)
    h = h[cnt > 0] / cnt[cnt > 0]
    se = 2.0 * float(np.std(h, ddof=1)) / np.sqrt(len(h)) if len(h) > 1 else np.inf
    return float(good.mean()), float(ref_good.mean()), se, n


def _mbconv_macro(space: Any):
    """For MobileNet spaces: features ``[(r/224)^2, n_layers, n_layers * (r/224)^2]`` read back from
    the latency features (scaled block columns sum to ``n_layers * (r/224)^2``)."""
    if not (hasattr(space, "all_block_choices") and hasattr(space, "n_slots")):
        return None
    nb = space.n_slots * len(space.all_block_choices)
    r2 = (np.asarray(space.resolutions, dtype=float) / 224.0) ** 2

    def macro(Xn: np.ndarray) -> np.ndarray:
        scaled = Xn[:, :nb].sum(1)
        layers = Xn[:, nb : 2 * nb].sum(1)
        rr = Xn[:, 2 * nb :] @ r2
        return np.stack([rr, layers, scaled], axis=1)

    return macro


def _bayes(proxy: LinearLatencyPredictor, archs, y, kernels: Sequence[str] | None = None,
           grid: Sequence[float] = (0.0, 0.01, 0.1, 1.0, 10.0), prior: float = 1.0,
           drop_penalty: float = 3.0, guard: float | None = 0.5, average: bool = True) -> AdaptedPredictor:
    space = proxy.space
    X, w, p, ys, (ym, ysd), (pm, psd) = _standardised(proxy, archs, y)
    K = len(y)
    H = np.c_[np.ones(K), (p - pm) / psd]
    groups, _ = feature_groups(space)
    G = np.zeros((X.shape[1], groups.max() + 1))
    G[np.arange(X.shape[1]), groups] = 1.0
    stages = feature_stages(space)
    ng = groups.max() + 1
    GS = np.zeros((X.shape[1], ng * (stages.max() + 1)))
    GS[np.arange(X.shape[1]), stages * ng + groups] = 1.0
    makers = {
        "counts": lambda Xn: Xn @ G,  # per operator type: how many positions use it
        "stage_counts": lambda Xn: Xn @ GS,  # per (stage, operator type)
        "operators": lambda Xn: Xn * w,  # AdaProxy's per-(position, operator) multiplicative terms
        "onehot": lambda Xn: Xn,  # free per-(position, operator) additive terms
    }
    T = cost_table(space)
    if T is not None:
        # physical totals (MACs, activations, launches, weights), each column on the samples' scale
        Tn = T / (np.std(X @ T, axis=0) + 1e-12 * np.abs(T).max(0) + 1e-30)
        makers["physics"] = lambda Xn, Tn=Tn: Xn @ Tn
    if _mbconv_macro(space) is not None:
        makers["macro"] = _mbconv_macro(space)  # input size / depth terms of MobileNet spaces
    if kernels is None:
        kernels = tuple(k for k in ("counts", "physics", "macro") if k in makers)
    for k in kernels:
        if k not in makers:
            raise ValueError(f"kernels entry {k!r} is unknown; choose from {sorted(makers)}")
    blocks, centers, scales = [], [], []
    for k in kernels:
        Zk = makers[k](X)
        mu = Zk.mean(0)
        Zc = Zk - mu
        s = np.sqrt(np.sum(Zc * Zc) / K) + 1e-12  # kernel trace normalised to K
        blocks.append(Zc / s)
        centers.append(mu)
        scales.append(s)
    Kmats = [B @ B.T for B in blocks]
    cands = []  # (log evidence, theta, beta, alpha, H used)
    for th in itertools.product(grid, repeat=len(blocks)):
        V = np.eye(K) + sum(t * Km for t, Km in zip(th, Kmats))
        Vi = np.linalg.inv(V)
        for Hq in (H, H[:, :1]):
            A = Hq.T @ Vi @ Hq
            beta = np.linalg.solve(A, Hq.T @ Vi @ ys)
            r = ys - Hq @ beta
            q = Hq.shape[1]
            s2 = max(float(r @ Vi @ r) / max(K - q, 1), 1e-12)
            ll = -0.5 * ((K - q) * np.log(s2) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1])
            ll -= prior * sum(np.log1p(t) for t in th)
            if q == 2 and beta[1] > 0:
                break
            if q == 1 and any(t > 0 for t in th) and K >= 10:
                # the samples contradict the proxy's ranking: drop it, keep the correction alone
                # (at a cost in evidence: the proxy is the prior we trust by default)
                beta = np.r_[beta, 0.0]
                ll -= drop_penalty
                break
        else:
            continue
        cands.append((ll, th, beta, Vi @ r, Hq))
    out = AdaptedPredictor(proxy, "bayes", {"kernels": list(kernels)})
    proxy_affine = (ysd / psd, ym - ysd * pm / psd)  # the proxy's ranking, affine to the samples
    if not cands:
        out.a, out.c = proxy_affine
        out.info["fallback"] = "negative scale"
        return out
    lls = np.array([c[0] for c in cands])
    if average:
        # Bayesian model averaging over the variance grid (weights = normalised evidence)
        wts = np.exp(lls - lls.max())
        wts[wts < 1e-3 * wts.max()] = 0.0
    else:
        wts = (np.arange(len(cands)) == int(np.argmax(lls))).astype(float)
    wts /= wts.sum()
    used = np.flatnonzero(wts)
    top = cands[int(np.argmax(lls))]
    out.info.update({"theta": dict(zip(kernels, top[1])), "log_evidence": float(top[0]),
                     "models": int(len(used))})
    if guard is not None and any(any(t > 0 for t in cands[i][1]) for i in used):
        # keep the correction only when, leaving pairs of samples out, the most probable correction
        # orders them better than the proxy by more than ``guard`` standard errors; otherwise return
        # the proxy's ranking (affine to the samples)
        C = sum(t * Km for t, Km in zip(top[1], Kmats))
        c_corr, c_prox, se, npairs = _gp_lpo_gain(C, top[4], ys, p)
        out.info["guard"] = {"lpo_concordance": c_corr, "proxy_concordance": c_prox, "se": se, "pairs": npairs}
        if npairs == 0 or c_corr - c_prox <= guard * se:
            out.a, out.c = proxy_affine
            out.info["fallback"] = "guard: correction not supported by the samples"
            return out
    b0 = sum(wts[i] * cands[i][2][0] for i in used)
    b1 = sum(wts[i] * cands[i][2][1] for i in used)
    out.a = ysd * b1 / psd
    out.c = ym + ysd * b0 - out.a * pm
    # posterior mean of the correction: sum_k th_k * B_k(x) B_k(train)^T alpha  -> linear in B_k(x)
    coefs = [sum(wts[i] * cands[i][1][j] * (B.T @ cands[i][3]) for i in used) * ysd for j, B in enumerate(blocks)]
    if any(np.any(c != 0) for c in coefs):
        mk = [makers[k] for k in kernels]

        def corr(Xn, mk=mk, centers=centers, scales=scales):
            return np.concatenate([(m(Xn) - c) / s for m, c, s in zip(mk, centers, scales)], axis=1)

        out.coef = np.concatenate(coefs)
        out._corr = corr
    return out


def _multiproxy(proxy: Any, sources: Mapping[str, Any] | Sequence[Any], archs, y, ridge: float = 1.0) -> Predictor:
    srcs = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    names = list(sources.keys()) if isinstance(sources, Mapping) else [str(i) for i in range(len(srcs))]
    if proxy is not None and all(s is not proxy for s in srcs):
        srcs, names = [proxy] + srcs, ["proxy"] + names
    if not srcs:
        raise ValueError("multiproxy: give sources={device: fitted predictor, ...}")
    P = np.stack([np.asarray(s.predict(archs), dtype=float) for s in srcs], axis=1)
    K = len(y)
    mu, sd = P.mean(0), P.std(0) + 1e-12
    Pz = (P - mu) / sd
    ym, ysd = y.mean(), y.std() + 1e-12
    ys = (y - ym) / ysd
    # ridge-NNLS via augmentation: min |Pz c - ys|^2 + ridge |c|^2, c >= 0
    def fit(idx):
        A = np.r_[Pz[idx] - Pz[idx].mean(0), np.sqrt(ridge) * np.eye(P.shape[1])]
        b = np.r_[ys[idx] - ys[idx].mean(), np.zeros(P.shape[1])]
        c, _ = nnls(A, b)
        return c, ys[idx].mean() - Pz[idx].mean(0) @ c

    loo = np.empty(K)
    for i in range(K):
        idx = np.r_[0:i, i + 1 : K]
        c, b0 = fit(idx)
        loo[i] = b0 + Pz[i] @ c
    c, b0 = fit(np.arange(K))
    s_multi, s_proxy = _srcc(loo, ys), _srcc(Pz[:, 0], ys)
    info = {"weights": dict(zip(names, (c * ysd).tolist())), "loo_srcc": s_multi, "proxy_srcc": s_proxy}
    if s_multi < s_proxy or not np.any(c > 0):
        c = np.zeros(P.shape[1])
        c[0] = 1.0 * ysd  # proxy ranking
        info["fallback"] = "proxy"
        return MultiProxyPredictor(srcs, c, ym, mu, sd * 1.0, info)
    return MultiProxyPredictor(srcs, c * ysd, ym + ysd * b0, mu, sd, info)


def adapt(proxy: Any, target_archs: Sequence[Any], target_latencies: Sequence[float], method: str = "bayes",
          sources: Mapping[str, Any] | None = None, **kwargs: Any) -> Predictor:
    """Adapt a proxy predictor to a target device from K measured target samples.

    ``proxy``: a fitted :class:`LinearLatencyPredictor` (for ``multiproxy``: any predictor, plus
    ``sources={device: predictor}``). Returns a predictor of target latency (ms).
    """
    y = _check_samples(target_archs, target_latencies)
    if method == "bayes":
        return _bayes(_as_linear(proxy), target_archs, y, **kwargs)
    if method == "adaproxy":
        return _adaproxy(_as_linear(proxy), target_archs, y, **kwargs)
    if method == "adaproxy_plain":
        return _adaproxy(_as_linear(proxy), target_archs, y, plain=True, **kwargs)
    if method == "multiproxy":
        return _multiproxy(proxy, sources or {}, target_archs, y, **kwargs)
    if method == "proxy":
        return _bayes(_as_linear(proxy), target_archs, y, kernels=(), **kwargs)
    raise ValueError(f"method={method!r} is unknown; choose from {list(METHODS)}")


# ============================================================================ sample selection
def select_samples(space: Any, archs: Sequence[Any], k: int, method: str = "kmeans",
                   rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Indices of ``k`` distinct archs of ``archs`` to measure on the target.

    ``random``: uniform without replacement. ``kmeans``: k-means (k clusters) on the space's encodings
    (``space.features``), then from each cluster its member nearest the centroid (diverse, representative
    samples).
    """
    n = len(archs)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} target samples requested from {n} candidate archs; need 1 <= k <= {n}")
    rng = np.random.default_rng(rng)
    if method == "random":
        return np.sort(rng.choice(n, k, replace=False))
    if method != "kmeans":
        raise ValueError(f"selection={method!r} is unknown; choose 'random' or 'kmeans'")
    X = np.asarray(space.features(archs), dtype=float)
    centres, labels = kmeans(X, k, rng=rng)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for c in range(k):
        # the member of cluster c nearest its centroid (nearest among *all* archs would favour small
        # networks, whose sparse encodings sit near every averaged centroid)
        members = np.flatnonzero((labels == c) & ~taken)
        if len(members) == 0:
            members = np.flatnonzero(~taken)
        d = ((X[members] - centres[c]) ** 2).sum(1)
        j = int(members[int(np.argmin(d))])
        taken[j] = True
        chosen.append(j)
    return np.array(sorted(chosen))


def kmeans(X: np.ndarray, k: int, rng: np.random.Generator | int | None = None, n_init: int = 3,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init`` starts: ``(centres (k, d), labels (n,))``."""
    rng = np.random.default_rng(rng)
    X = np.asarray(X, dtype=float)
    n = len(X)
    sq = (X**2).sum(1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        idx = [int(rng.integers(n))]
        d2 = ((X - X[idx[0]]) ** 2).sum(1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            idx.append(int(rng.choice(n, p=p)))
            d2 = np.minimum(d2, ((X - X[idx[-1]]) ** 2).sum(1))
        C = X[idx].copy()
        labels = np.full(n, -1)
        for _ in range(max_iter):
            D = sq[:, None] - 2 * X @ C.T + (C**2).sum(1)[None, :]
            new = D.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                m = labels == c
                if m.any():
                    C[c] = X[m].mean(0)
        inertia = float(np.maximum(D[np.arange(n), labels], 0).sum())
        if best is None or inertia < best[0]:
            best = (inertia, C, labels)
    return best[1], best[2]


# ============================================================================ config-driven predictor
class AdaptedLatency(Predictor):
    """Latency on a target device from a proxy predictor adapted with K target samples (``latency=adapted``).

    proxy: a latency dataset (builtin name or CSV) with ``proxy_device``; the proxy predictor is the
        linear predictor fitted on all its rows (or pass a fitted ``LinearLatencyPredictor``).
    target_samples: a CSV/dataset with the target measurements in column ``target_device``. Rows with
        a value are the K samples; if ``k`` is set and more rows are available, ``k`` of them are picked by
        ``selection`` (``kmeans``/``random``) — that is how the benchmarks simulate measuring K archs.
    """

    metric = "latency_ms"

    def __init__(
        self,
        space: Any,
        proxy: Any = "nasbench201",
        proxy_device: str = "pixel3",
        target_samples: Any = None,
        target_device: str | None = None,
        k: int | None = 10,
        selection: str = "kmeans",
        method: str = "bayes",
        sources: Sequence[str] | None = None,
        seed: int = 0,
        mirror: str | None = None,
        **method_kwargs: Any,
    ) -> None:
        from hwnas.spaces import create_space

        from .data import load_dataset

        self.space = create_space(space) if isinstance(space, str) else space
        if isinstance(proxy, LinearLatencyPredictor):
            self.proxy = proxy
            pdata = None
        else:
            pdata = load_dataset(str(proxy), space=self.space, mirror=mirror)
            self._check_space(pdata, "proxy")
            y = pdata[proxy_device]
            ok = np.isfinite(y)
            self.proxy = LinearLatencyPredictor(self.space).fit([a for a, o in zip(pdata.archs, ok) if o], y[ok])
        if target_samples is None:
            raise ValueError("target_samples: give a CSV (or dataset name) with the measured target latencies")
        if not target_device:
            raise ValueError("target_device: name the column of target_samples that holds the target latencies")
        tdata = load_dataset(os.fspath(target_samples), space=self.space, mirror=mirror)
        self._check_space(tdata, "target_samples")
        yt = tdata[target_device]
        rows = np.flatnonzero(np.isfinite(yt))
        if k is not None and len(rows) > int(k):
            pick = select_samples(self.space, [tdata.archs[i] for i in rows], int(k), selection, seed)
            rows = rows[pick]
        self.sample_archs = [tdata.archs[i] for i in rows]
        self.sample_latencies = yt[rows]
        srcs = None
        if method == "multiproxy":
            if pdata is None or not sources:
                raise ValueError("method=multiproxy needs proxy=<dataset> and sources=[device, ...] in it")
            srcs = {}
            for dev in sources:
                ys = pdata[dev]
                ok = np.isfinite(ys)
                srcs[dev] = LinearLatencyPredictor(self.space).fit([a for a, o in zip(pdata.archs, ok) if o], ys[ok])
        self.model = adapt(self.proxy, self.sample_archs, self.sample_latencies, method=method, sources=srcs, **method_kwargs)

    def _check_space(self, ds: Any, field: str) -> None:
        if getattr(ds.space, "name", None) != getattr(self.space, "name", None):
            raise ValueError(f"{field}: dataset space {ds.space.name!r} differs from the search space {self.space.name!r}")

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        return self.model.predict(archs)
