"""Which K archs to measure on the target.

* ``auto`` (the default): the selection the space asks for (its ``adapt_selection`` attribute), else
  ``stratified``. MBConv spaces (OFA-MBv3, ProxylessNAS) ask for ``kmeans``: on the OFA design devices
  of ``benchmarks/proxy_adaptation.py`` k-means samples adapted best (K=5: 0.949 against 0.899 for
  stratified), on NAS-Bench-201 and FBNet stratified ones did (K=5: 0.947-0.980 against 0.843-0.948).
* ``stratified``: the candidates are cut into K strata of predicted latency (by the
  proxy when one is given, else by the space's physical totals -- MACs and memory traffic), and from
  each stratum the arch that adds the most information about the per-position model is taken (greedy
  D-optimal design: the largest posterior variance under the adaptation's prior kernels, updated after
  every pick). The samples therefore span the latency range -- fast and slow archs -- and cover the
  positions and operators the basis needs.
* ``kmeans``: k-means on the space's encodings, each cluster's own member nearest its centroid.
* ``random``: uniform without replacement.

Selections register themselves in :data:`SELECTIONS` like the methods do.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from hwnas.spaces.errors import UserError

from .basis import basis_for, proxy_direction


class SelectionError(UserError, ValueError):
    """An unknown selection or an impossible K; one line naming the value and the choices (a
    ``ValueError`` too, as it was before)."""


SELECTIONS: dict[str, Callable[..., np.ndarray]] = {}


def register_selection(name: str) -> Callable:
    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in SELECTIONS:
            raise ValueError(f"selection {name!r} is registered twice")
        SELECTIONS[name] = fn
        return fn

    return deco


def auto_selection(space: Any) -> str:
    """The selection ``auto`` stands for on ``space``: its ``adapt_selection``, else ``stratified``."""
    return str(getattr(space, "adapt_selection", "stratified"))


def select_samples(space: Any, archs: Sequence[Any], k: int, method: str = "auto",
                   rng: np.random.Generator | int | None = 0, proxy: Any = None) -> np.ndarray:
    """Sorted indices of ``k`` distinct archs of ``archs`` to measure on the target.

    ``proxy``: a latency predictor whose predictions define the strata of ``stratified`` (optional)."""
    from hwnas.spaces.checks import is_whole

    n = len(archs)
    if not is_whole(k) or not 1 <= k <= n:  # (2.5 was taken as 2, "5" was a TypeError)
        raise SelectionError(f"k={k!r} target samples requested from {n} candidate archs; need an integer 1 <= k <= {n}")
    if method == "auto":
        method = auto_selection(space)
    if method not in SELECTIONS:
        raise SelectionError(f"selection={method!r} is unknown; choose from {['auto'] + sorted(SELECTIONS)}")
    rng = np.random.default_rng(rng)
    idx = np.asarray(SELECTIONS[method](space, list(archs), int(k), rng, proxy), dtype=int)
    return np.sort(idx)


@register_selection("random")
def _random(space: Any, archs: list, k: int, rng: np.random.Generator, proxy: Any) -> np.ndarray:
    return rng.choice(len(archs), k, replace=False)


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
            idx.append(int(rng.choice(n, p=d2 / d2.sum())) if d2.sum() > 0 else int(rng.integers(n)))
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


@register_selection("kmeans")
def _kmeans(space: Any, archs: list, k: int, rng: np.random.Generator, proxy: Any) -> np.ndarray:
    X = np.asarray(space.features(archs), dtype=float)
    centres, labels = kmeans(X, k, rng=rng)
    chosen: list[int] = []
    taken = np.zeros(len(archs), dtype=bool)
    for c in range(k):
        # the member of cluster c nearest its centroid (nearest among *all* archs favours small
        # networks, whose sparse encodings sit near every averaged centroid)
        members = np.flatnonzero((labels == c) & ~taken)
        if len(members) == 0:
            members = np.flatnonzero(~taken)
        j = int(members[int(np.argmin(((X[members] - centres[c]) ** 2).sum(1)))])
        taken[j] = True
        chosen.append(j)
    return np.array(chosen)


def _size_score(basis: Any, Xc: np.ndarray, proxy: Any) -> np.ndarray:
    """What the strata are cut along: the proxy's predicted latency, else the physical totals' main
    direction over the pool (MACs and memory traffic), else the features' first principal direction."""
    if proxy is not None:
        return Xc @ proxy_direction(basis, proxy).w
    S = basis.kernels.get("physics")
    if S is None:
        S = basis.pool_X.T @ basis.pool_X
    vals, vecs = np.linalg.eigh(S)
    v = vecs[:, -1]
    s = Xc @ v
    # orient it so that larger means more work (positively related to the feature count)
    return s if np.corrcoef(s, np.abs(Xc).sum(1))[0, 1] >= 0 or len(s) < 3 else -s


@register_selection("stratified")
def _stratified(space: Any, archs: list, k: int, rng: np.random.Generator, proxy: Any) -> np.ndarray:
    basis = basis_for(space)
    Xc = basis.features(archs)
    n = len(archs)
    # distinct archs only (equal rows are the same network)
    _, first = np.unique(np.round(Xc, 9), axis=0, return_index=True)
    uniq = np.sort(first)
    if len(uniq) < k:
        uniq = np.arange(n)
    score = _size_score(basis, Xc[uniq], proxy) + 1e-9 * rng.standard_normal(len(uniq))
    order = uniq[np.argsort(score)]
    strata = np.array_split(order, k)
    # prior over the per-position weights: the adaptation's kernels (unit spread over the population)
    S = sum(basis.kernels[name] for name in ("physics", "counts", "onehot") if name in basis.kernels)
    noise = 0.05
    chosen: list[int] = []
    # visit the strata from the extremes inwards, so the fastest and slowest archs are informed first
    visit = [i for pair in zip(range(k), range(k - 1, -1, -1)) for i in pair][:k]
    seen: set[int] = set()
    for si in visit:
        if si in seen:
            continue
        seen.add(si)
        cand = strata[si]
        Z = Xc[cand]
        var = np.einsum("ij,jk,ik->i", Z, S, Z)
        j = int(np.argmax(var + 1e-12 * rng.random(len(var))))
        x = Z[j]
        chosen.append(int(cand[j]))
        Sx = S @ x
        S = S - np.outer(Sx, Sx) / (noise + float(x @ Sx))  # posterior after observing x
    return np.array(chosen)
