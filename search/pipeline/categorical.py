"""Space reduction for categorical spaces (NAS-Bench-201, FBNet): per position, drop the ops that
another op there beats on both latency and accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from hwnas.predictors.base import predict_array
from hwnas.spaces.restricted import RestrictedSpace


def reduce_categorical(space: Any, latency: Any, accuracy: Any, n_samples: int = 256, seed: int = 0,
                       latency_tol: float = 0.01, accuracy_tol: float = 0.0, min_choices: int = 2) -> tuple[RestrictedSpace, list[dict]]:
    """Per position ``p`` and op ``o``: mean latency and accuracy of ``n_samples`` random archs with
    ``p`` fixed to ``o`` (common random numbers: the same background archs for every cell). ``o`` is
    dropped at ``p`` when another op ``o'`` is not slower by more than ``latency_tol`` x mean latency,
    not less accurate by more than ``accuracy_tol``, and strictly better in one of them. At least
    ``min_choices`` ops are kept (fastest first among the dominated)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(space.genome_sizes)
    G0 = space.sample_genomes(n_samples, rng)
    cells = []
    for p in range(space.n_var):
        for v in range(int(sizes[p])):
            G = G0.copy()
            G[:, p] = v
            cells.append(G)
    batch = space.batch(np.concatenate(cells))
    L = predict_array(latency, batch, "latency", positive=True).reshape(len(cells), n_samples)
    A = predict_array(accuracy, batch, "accuracy").reshape(len(cells), n_samples)
    tau_L = latency_tol * float(L.mean())
    allowed, rows = [], []
    k = 0
    for p in range(space.n_var):
        n = int(sizes[p])
        lm, am = L[k:k + n].mean(1), A[k:k + n].mean(1)
        ops = [space.choices[v] for v in range(n)]
        dominated = np.zeros(n, dtype=bool)
        for i in range(n):
            for j in range(n):
                if i != j and lm[j] <= lm[i] + tau_L and am[j] >= am[i] - accuracy_tol and (lm[j] < lm[i] - tau_L or am[j] > am[i] + accuracy_tol):
                    dominated[i] = True
        keep = list(np.flatnonzero(~dominated))
        for i in np.argsort(lm):
            if len(keep) >= min_choices:
                break
            if i not in keep:
                keep.append(int(i))
        keep = sorted(int(i) for i in keep)
        allowed.append([ops[i] for i in keep])
        rows += [{"position": p, "op": ops[i], "latency_mean": float(lm[i]), "accuracy_mean": float(am[i]), "kept": int(i in keep)}
                 for i in range(n)]
        k += n
    return RestrictedSpace(space, allowed), rows
