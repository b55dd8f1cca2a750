"""``bayes`` (the default): a hierarchical Bayesian per-position model of the target device.

The target's latency is linear in the per-position features (:mod:`.basis`),
``y = scale * (c + x . w) + noise``, and the prior on the weights ``w`` says what devices look like:

* **a mixture of candidate directions** ``w = v_j + deviation``: the proxy's direction (prior weight 2),
  the MACs direction (weight 1: a compute-bound device nobody measured before, such as a CPU, ranks by
  MACs, and the adapted model must never do worse than counting MACs), and, when a device library is
  available (:mod:`.library`), every library device's direction (weight 1, shared among near-duplicates)
  and the library's mean direction. A new device "behaves like one of these, up to a deviation"; the K
  samples weigh the candidates.
* **a structured deviation** ``N(0, tau^2 v v^T + sum_k theta_k S_k)``: a rescaling of the candidate
  direction, plus kernels from coarse to fine -- the library's covariance (how devices differ from each
  other), the physical totals of the space's geometry (MACs, activations, launches, weights), and a free
  per-position term (``onehot``); without a library, per-operator-type ``counts`` replace the library
  covariance. With few samples the coarse terms explain what the candidates miss; as K grows the
  per-position term takes over and the model reaches the device's ceiling (a per-position linear model).
* **units fixed by the population, not by the samples**: directions and kernels are scaled to unit
  spread over 2,000 random archs, and the target's scale is ``cv0 * mean(y) * s`` with ``cv0`` the
  typical coefficient of variation of the known devices and ``s`` on a log-spaced grid. Samples with
  little spread therefore mean "small differences", not "noise to be blown up".

Hyperparameters (the kernel amplitudes ``theta``, the noise, the scale ``s``, the candidate) are
integrated over grids by their (tempered) evidence with a penalty ``hyperprior * sum(log1p(theta))``:
Bayesian model averaging, in closed form. Guards: samples whose relative spread is far below any known
device's (``spread`` x the smallest coefficient of variation) cannot overturn the proxy -- its ranking
is returned, scaled, with a warning; and the evidence is tempered (``temperature=2`` with a library), so
that five samples cannot make one of 26 candidates a certainty.

Every default was chosen on the *design* devices of ``benchmarks/proxy_adaptation.py`` (families of
devices left out of the library, design and evaluation folds), never on the devices it reports.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

import numpy as np

from .basis import basis_for, proxy_direction
from .core import AdaptedPredictor, register_method
from .library import resolve_library

log = logging.getLogger("hwnas.adapt")

THETA_GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
NOISE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SCALE_GRID = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
#: above this many samples the evidence grid is skipped for a direct per-position fit (the grid's cost
#: grows as K^3 per grid point; with this many samples the data decide anyway)
DIRECT_FIT_K = 200


def _settings(has_library: bool) -> dict:
    """Defaults chosen on the design devices (benchmarks/proxy_adaptation.py)."""
    if has_library:
        return {"kernels": ("library", "physics", "onehot"), "temperature": 2.0, "hyperprior": 3.0}
    return {"kernels": ("physics", "counts", "onehot"), "temperature": 1.0, "hyperprior": 1.0}


def _scaled_proxy(basis, pdir, y: np.ndarray, Xs: np.ndarray, info: dict, proxy: Any) -> AdaptedPredictor:
    """The proxy's ranking, affine to the samples (a positive slope)."""
    p = (Xs + basis.mean) @ pdir.w + pdir.b
    a, c = (np.polyfit(p, y, 1) if np.std(p) > 0 else (0.0, 0.0))
    if not a > 0:
        a, c = float(np.mean(y) / max(np.mean(p), 1e-12)), 0.0
    return AdaptedPredictor(basis.space, a * pdir.w, a * pdir.b + c, "bayes", info,
                            None if pdir.linear else proxy, 0.0 if pdir.linear else a, pdir.w, pdir.b)


@register_method("bayes")
def fit_bayes(proxy: Any, archs: Sequence[Any], y: np.ndarray, *, library: Any = "auto", exclude: Sequence[str] = (),
              kernels: Sequence[str] | None = None, temperature: float | None = None, hyperprior: float | None = None,
              tau: float = 0.5, proxy_weight: float = 2.0, macs_weight: float = 1.0, spread: float = 0.25, theta_grid: Sequence[float] = THETA_GRID,
              noise_grid: Sequence[float] = NOISE_GRID, scale_grid: Sequence[float] = SCALE_GRID, mirror: str | None = None,
              max_models: int = 256) -> AdaptedPredictor:
    space = getattr(proxy, "space", None)
    if space is None:
        raise TypeError("proxy: the predictor has no .space; adaptation needs to know the search space")
    basis = basis_for(space)
    pdir = proxy_direction(basis, proxy)
    Xs = basis.features(archs)
    K = len(y)
    lib = resolve_library(library, space, exclude, mirror)
    cfg = _settings(lib is not None)
    kernels = tuple(kernels or cfg["kernels"])
    temperature = float(temperature or cfg["temperature"])
    hyperprior = float(cfg["hyperprior"] if hyperprior is None else hyperprior)

    names, V, weights = ["proxy"], [pdir.unit], [proxy_weight]
    cvs = [basis.cv(pdir.w, pdir.b)]
    info: dict[str, Any] = {"library": f"{lib.source} ({len(lib)} devices)" if lib else "none (one-proxy prior)"}
    if not pdir.linear:
        info["proxy_linear_fidelity"] = pdir.fidelity
    S_lib = None
    if lib is not None:
        lnames, LV, lcvs, lw = lib.directions(basis)
        names += lnames + ["library mean"]
        V += list(LV) + [LV.mean(0)]
        weights += list(lw) + [1.0]
        cvs += list(lcvs)
        if len(LV) > 1:
            S_lib = basis.unit_kernel(np.cov(LV.T))
    if basis.macs is not None and macs_weight > 0:
        names.append("MACs")
        V.append(basis.macs)
        weights.append(macs_weight)
    cvs = np.array([c for c in cvs if np.isfinite(c) and c > 0])
    cv0 = float(np.exp(np.mean(np.log(cvs)))) if len(cvs) else 0.3

    # ------------------------------------------------------------------ guard: too little spread
    cv_y = float(np.std(y) / np.mean(y))
    floor = spread * (float(cvs.min()) if lib is not None and len(cvs) else cv0 / 3.0)
    info["sample_spread"] = {"cv": cv_y, "floor": floor}
    if cv_y < floor:
        info["fallback"] = (f"the samples' latencies spread too little ({float(y.min()):.3g}-{float(y.max()):.3g} ms, "
                            f"relative spread {cv_y:.3f} < {floor:.3f}) to change the proxy's ranking; measure faster and "
                            "slower archs (selection='stratified' spreads them)")
        log.warning("adapt: %s", info["fallback"])
        return _scaled_proxy(basis, pdir, y, Xs, info, proxy)

    Ss = []
    for k in kernels:
        if k == "library":
            if S_lib is not None:
                Ss.append((k, S_lib))
        elif k in basis.kernels:
            Ss.append((k, basis.kernels[k]))
        else:
            raise ValueError(f"kernels entry {k!r} is unknown; choose from {['library'] + sorted(basis.kernels)}")
    info["kernels"] = [k for k, _ in Ss]

    if K > DIRECT_FIT_K:
        log.warning("adapt: K=%d samples (more than %d): a direct per-position fit replaces the evidence grid", K, DIRECT_FIT_K)
        info["fallback"] = f"direct per-position fit (K={K} > {DIRECT_FIT_K})"
        return _direct_fit(basis, pdir, Xs, y, info, proxy)

    V = np.stack(V)
    Zc = Xs @ V.T  # every candidate's prediction on the samples, in units of its spread over the pool
    if not pdir.linear:  # the proxy's own predictions, not its linear fit (same mean and scale over the pool)
        sd = float(np.std(basis.pool_X @ pdir.w))
        Zc[:, 0] = (np.asarray(proxy.predict(archs), dtype=float) - (pdir.b + float(basis.mean @ pdir.w))) / sd
    fit = _mixture(Xs, y / (cv0 * float(np.mean(y))), V, Zc, np.log(np.asarray(weights, dtype=float)), [S for _, S in Ss],
                   theta_grid, noise_grid, scale_grid, tau, hyperprior, temperature, max_models)
    a0 = cv0 * float(np.mean(y))
    W = np.zeros(len(basis.mean))
    c0 = 0.0
    gamma = 0.0
    post: dict[str, float] = {}
    for m in fit:
        W += m["w"] * m["b"] * m["weights"]
        c0 += m["w"] * m["b"] * m["c"]
        post[names[m["comp"]]] = post.get(names[m["comp"]], 0.0) + m["w"]
        if m["comp"] == 0:
            gamma += m["w"] * m["b"] * m["proxy_coef"]
    W *= a0
    top = fit[0]
    info.update({
        "posterior": dict(sorted(((k, round(v, 4)) for k, v in post.items() if v >= 0.01), key=lambda t: -t[1])),
        "top": {"candidate": names[top["comp"]], "theta": dict(zip(info["kernels"], top["theta"])), "noise": top["noise"],
                "scale": top["b"]},
        "models": len(fit), "cv0": cv0,
    })
    bias = a0 * c0 - float(basis.mean @ W)
    if pdir.linear:
        return AdaptedPredictor(space, W, bias, "bayes", info)
    # a non-linear proxy: keep its own detail beyond its linear fit, at the weight the posterior gives it
    g = a0 * gamma / float(np.std(basis.pool_X @ pdir.w))
    return AdaptedPredictor(space, W, bias, "bayes", info, proxy, g, pdir.w, pdir.b)


def _direct_fit(basis, pdir, Xs: np.ndarray, y: np.ndarray, info: dict, proxy: Any) -> AdaptedPredictor:
    """Many samples: ridge regression of the latency on the proxy's prediction and the per-position
    features, the penalty chosen by generalised cross-validation. Cost O(K p^2), seconds at K=5,000."""
    p = Xs @ pdir.w
    A = np.c_[p - p.mean(), Xs - Xs.mean(0)]
    yc = y - y.mean()
    U, sv, Vt = np.linalg.svd(A, full_matrices=False)
    Uy = U.T @ yc
    best = None
    scale = float(np.mean(sv**2))
    for lam in scale * np.logspace(-6, 1, 15):
        f = sv**2 / (sv**2 + lam)
        res = yc - U @ (f * Uy)
        gcv = float(res @ res) / max(len(y) - f.sum(), 1.0) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, Vt.T @ (sv / (sv**2 + lam) * Uy), lam)
    coef = best[1]
    W = coef[0] * pdir.w + coef[1:]
    bias = float(y.mean() - coef[0] * p.mean() - (Xs.mean(0) @ coef[1:]) - basis.mean @ W)
    info["ridge"] = best[2]
    return AdaptedPredictor(basis.space, W, bias, "bayes", info, None if pdir.linear else proxy,
                            0.0 if pdir.linear else float(coef[0]), pdir.w, pdir.b)


def _mixture(Zs: np.ndarray, y0: np.ndarray, V: np.ndarray, Zc: np.ndarray, logw: np.ndarray, kernels: list[np.ndarray],
             theta_grid: Sequence[float], noise_grid: Sequence[float], scale_grid: Sequence[float], tau: float,
             hyperprior: float, temperature: float, max_models: int) -> list[dict]:
    """Evidence-weighted models over (kernel amplitudes, noise, scale, candidate direction).

    ``y0 / s = c + z_j + e`` with ``z_j = Zc[:, j]`` (candidate ``j``'s unit direction ``V[j]`` on the samples),
    ``e ~ N(0, tau^2 z_j z_j^T + sum theta_k Zs S_k Zs^T + noise I)``, flat
    intercept ``c`` (integrated out). Per amplitude tuple one eigendecomposition serves every noise
    level, scale and candidate (the candidate's rank-one term by Sherman-Morrison). Returns the models
    carrying the evidence (weight ``w``), each with its posterior-mean weight vector (``weights``)."""
    K = len(y0)
    one = np.ones(K)
    Kk = [Zs @ S @ Zs.T for S in kernels]
    noise = np.asarray(noise_grid, dtype=float)
    sc = np.asarray(scale_grid, dtype=float)
    t2 = tau * tau
    grid = list(itertools.product(theta_grid, repeat=len(Kk))) if Kk else [()]
    lls, eig = [], []
    for th in grid:
        C = sum(t * k for t, k in zip(th, Kk)) if Kk else np.zeros((K, K))
        lam, U = np.linalg.eigh(C)
        lam = np.maximum(lam, 0.0)
        eig.append((lam, U))
        U1, Uy, UZ = U.T @ one, U.T @ y0, U.T @ Zc
        d = lam[None, :] + noise[:, None]  # N x K
        D = 1.0 / d
        zDz = D @ (UZ * UZ)  # N x C
        den = 1.0 + t2 * zDz
        logdet = np.log(d).sum(1)[:, None] + np.log(den)
        oDo, oDz = D @ (U1 * U1), D @ (U1[:, None] * UZ)
        yDy, yDz, yDo = D @ (Uy * Uy), D @ (Uy[:, None] * UZ), D @ (Uy * U1)
        ib = (1.0 / sc)[None, :, None]  # residual r = y0 / s - z
        rDr = yDy[:, None, None] * ib**2 - 2 * yDz[:, None, :] * ib + zDz[:, None, :]
        rDo = yDo[:, None, None] * ib - oDz[:, None, :]
        rDz = yDz[:, None, :] * ib - zDz[:, None, :]
        dn = den[:, None, :]
        rVr = rDr - t2 * rDz**2 / dn
        oVo = oDo[:, None, None] - t2 * oDz[:, None, :] ** 2 / dn
        rVo = rDo - t2 * rDz * oDz[:, None, :] / dn
        loglik = -0.5 * (rVr - rVo**2 / oVo + logdet[:, None, :] + np.log(oVo)) - K * np.log(sc)[None, :, None]
        ll = (loglik + logw[None, None, :]) / temperature - hyperprior * sum(np.log1p(t) for t in th)
        lls.append((ll, rVo / oVo))
    allll = np.stack([a for a, _ in lls])  # T x N x S x C
    flat = allll.ravel()
    order = np.argsort(flat)[::-1][:max_models]
    w = np.exp(flat[order] - flat[order[0]])
    keep = w >= 1e-3
    order, w = order[keep], w[keep] / w[keep].sum()
    out = []
    for wi, f in zip(w, order):
        ti, ni, si, ci = np.unravel_index(f, allll.shape)
        lam, U = eig[ti]
        c = float(lls[ti][1][ni, si, ci])
        s, z, v = float(sc[si]), Zc[:, ci], V[ci]
        d = lam + noise[ni]
        r = y0 / s - z - c
        Ur, Uz = U.T @ r, U.T @ z
        # V^-1 r with V = U diag(d) U^T + tau^2 z z^T
        alpha = U @ (Ur / d - t2 * (Uz / d) * float((Uz / d) @ Ur) / (1.0 + t2 * float((Uz / d) @ Uz)))
        za = Zs.T @ alpha
        coef = 1.0 + t2 * float(v @ za)
        wpost = coef * v + sum(t * (S @ za) for t, S in zip(grid[ti], kernels))
        out.append({"w": float(wi), "b": s, "c": c, "comp": int(ci), "weights": wpost, "theta": grid[ti],
                    "noise": float(noise[ni]), "proxy_coef": coef})
    return out
