"""AdaProxy (Lu et al. 2021, *One Proxy Device Is Enough*), and the plain proxy.

The proxy predictor is operator-level linear, ``l_p = w_p . x``. On the target,
``y = x . (w_p * (a + b)) + c``: a global scale ``a``, a per-operator correction ``b`` and a bias ``c``,
with a ridge penalty ``lam * |b|^2``.

* ``adaproxy``: ``lam`` by the leave-one-out SRCC of the K samples over a grid that includes
  ``lam = inf`` (scale + bias only: the proxy's ranking); a finite ``lam`` is kept only when it beats
  ``inf`` by ``margin``.
* ``adaproxy_plain``: ``lam`` picked on a held-out third of the samples (seeded by ``rng``, 0 by
  default, so the same call gives the same model), no ``inf`` option: the paper's straightforward form,
  kept to show why shrinkage matters (it drops below the proxy on many targets at K=10).
* ``proxy``: the proxy's ranking, affine to the samples.

A proxy that is not a linear predictor is read through its linear fit (:func:`.basis.proxy_direction`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..metrics import srcc
from .basis import basis_for, proxy_direction
from .core import AdaptedPredictor, register_method


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    s = srcc(a, b)
    return -1.0 if np.isnan(s) else s  # a constant prediction ranks nothing


def ridge_loo(Z: np.ndarray, y: np.ndarray, pen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with per-column penalties (0 = free): coefficients and exact leave-one-out predictions."""
    A = Z.T @ Z + np.diag(pen) + 1e-10 * np.eye(Z.shape[1])
    Ai = np.linalg.pinv(A)
    coef = Ai @ Z.T @ y
    h = np.einsum("ij,jk,ik->i", Z, Ai, Z)
    r = y - Z @ coef
    return coef, y - r / np.clip(1.0 - h, 1e-6, None)


def _adaproxy(proxy: Any, archs: Sequence[Any], y: np.ndarray, plain: bool, margin: float = 0.05,
              lams: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0), rng: Any = 0) -> AdaptedPredictor:
    basis = basis_for(proxy.space)
    pd = proxy_direction(basis, proxy)
    X = basis.features(archs) + basis.mean
    w = pd.w
    p = X @ w + pd.b
    K = len(y)
    ym, ysd = float(y.mean()), float(y.std()) + 1e-12
    pm, psd = float(p.mean()), float(p.std()) + 1e-12
    ys = (y - ym) / ysd
    M = (X * w) / psd  # per-operator corrections, scaled like the proxy
    used = np.flatnonzero(np.abs(M).sum(0) > 0)
    Z = np.c_[np.ones(K), (p - pm) / psd, M[:, used]]
    free = np.zeros(2)
    info: dict[str, Any] = {}
    if plain:
        perm = np.random.default_rng(rng).permutation(K)
        n_val = max(2, K // 3)
        val, tr = perm[:n_val], perm[n_val:]
        scores = {lam: _srcc(Z[val] @ ridge_loo(Z[tr], ys[tr], np.r_[free, np.full(len(used), lam)])[0], ys[val]) for lam in lams}
        lam = max(scores, key=scores.get)
    else:
        base = _srcc(ridge_loo(Z[:, :2], ys, free)[1], ys)
        lam, best, scores = np.inf, base + margin, {"inf": base}
        for l_ in lams:
            s = scores[l_] = _srcc(ridge_loo(Z, ys, np.r_[free, np.full(len(used), l_)])[1], ys)
            if s > best:
                lam, best = l_, s
    info.update(lam=float(lam), loo_srcc={str(k): v for k, v in scores.items()})
    if np.isinf(lam):
        coef = np.r_[ridge_loo(Z[:, :2], ys, free)[0], np.zeros(len(used))]
    else:
        coef = ridge_loo(Z, ys, np.r_[free, np.full(len(used), lam)])[0]
    if coef[1] <= 0 and not plain:  # a negative proxy scale: too few or too noisy samples to trust
        coef = np.r_[0.0, 1.0, np.zeros(len(used))]
        info["fallback"] = "negative scale"
    # y = ym + ysd (c0 + c1 (p - pm) / psd + M b), p = X . w + b_p
    a = ysd * coef[1] / psd
    b = np.zeros(len(w))
    b[used] = coef[2:]
    W = a * w + (ysd / psd) * b * w
    bias = ym + ysd * coef[0] + a * (pd.b - pm)
    return AdaptedPredictor(proxy.space, W, bias, "adaproxy_plain" if plain else "adaproxy", info,
                            None if pd.linear else proxy, 0.0 if pd.linear else a, w, pd.b)


@register_method("adaproxy")
def fit_adaproxy(proxy: Any, archs: Sequence[Any], y: np.ndarray, **kwargs: Any) -> AdaptedPredictor:
    return _adaproxy(proxy, archs, y, plain=False, **kwargs)


@register_method("adaproxy_plain")
def fit_adaproxy_plain(proxy: Any, archs: Sequence[Any], y: np.ndarray, **kwargs: Any) -> AdaptedPredictor:
    return _adaproxy(proxy, archs, y, plain=True, **kwargs)


@register_method("proxy")
def fit_proxy(proxy: Any, archs: Sequence[Any], y: np.ndarray) -> AdaptedPredictor:
    from .bayes import _scaled_proxy

    basis = basis_for(proxy.space)
    pd = proxy_direction(basis, proxy)
    m = _scaled_proxy(basis, pd, y, basis.features(archs), {}, proxy)
    m.method = "proxy"
    return m
