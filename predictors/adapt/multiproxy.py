"""``multiproxy``: several source devices. The target is a nonnegative combination of the sources'
standardised predictions plus a bias (ridge + non-negative least squares), kept only when its
leave-one-out SRCC on the samples beats the main proxy's. Needs ``sources={device: predictor}``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls

from .adaproxy import _srcc
from .basis import basis_for, proxy_direction
from .core import AdaptationError, AdaptedPredictor, register_method


@register_method("multiproxy")
def fit_multiproxy(proxy: Any, archs: Sequence[Any], y: np.ndarray, sources: Mapping[str, Any] | Sequence[Any] | None = None,
                   ridge: float = 1.0) -> AdaptedPredictor:
    if not sources:
        raise AdaptationError("method=multiproxy needs sources={device: fitted predictor, ...} (other devices' predictors); "
                              "method=bayes uses a whole device library instead (library=...)")
    srcs = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    names = list(sources.keys()) if isinstance(sources, Mapping) else [str(i) for i in range(len(srcs))]
    if all(s is not proxy for s in srcs):
        srcs, names = [proxy] + srcs, ["proxy"] + names
    basis = basis_for(proxy.space)
    dirs = [proxy_direction(basis, s) for s in srcs]
    X = basis.features(archs) + basis.mean
    P = np.stack([X @ d.w + d.b for d in dirs], axis=1)
    K = len(y)
    mu, sd = P.mean(0), P.std(0) + 1e-12
    Pz = (P - mu) / sd
    ym, ysd = float(y.mean()), float(y.std()) + 1e-12
    ys = (y - ym) / ysd

    def fit(idx: np.ndarray) -> tuple[np.ndarray, float]:  # ridge-NNLS: min |Pz c - ys|^2 + ridge |c|^2, c >= 0
        A = np.r_[Pz[idx] - Pz[idx].mean(0), np.sqrt(ridge) * np.eye(P.shape[1])]
        b = np.r_[ys[idx] - ys[idx].mean(), np.zeros(P.shape[1])]
        c, _ = nnls(A, b)
        return c, float(ys[idx].mean() - Pz[idx].mean(0) @ c)

    loo = np.empty(K)
    for i in range(K):
        c, b0 = fit(np.r_[0:i, i + 1:K])
        loo[i] = b0 + Pz[i] @ c
    c, b0 = fit(np.arange(K))
    s_multi, s_proxy = _srcc(loo, ys), _srcc(Pz[:, 0], ys)
    info: dict[str, Any] = {"weights": dict(zip(names, (c * ysd).tolist())), "loo_srcc": s_multi, "loo_srcc_proxy": s_proxy}
    if s_multi < s_proxy or not np.any(c > 0):
        c, b0 = np.zeros(P.shape[1]), 0.0
        c[0] = 1.0
        info["fallback"] = "proxy (the combination does not rank held-out samples better)"
    # y = ym + ysd (b0 + sum_j c_j (x . w_j + b_j - mu_j) / sd_j)
    k = ysd * c / sd
    W = sum(kj * d.w for kj, d in zip(k, dirs))
    bias = ym + ysd * b0 + float(sum(kj * (d.b - m) for kj, d, m in zip(k, dirs, mu)))
    return AdaptedPredictor(proxy.space, W, bias, "multiproxy", info)
