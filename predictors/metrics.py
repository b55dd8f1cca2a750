"""Rank agreement between latency predictions and measurements (what NAS cares about: the order)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata


def srcc(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two sequences (NaN with fewer than 3 points or a constant input)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def standard_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks standardised to mean 0 and variance 1: ``srcc(a, b) == mean(standard_ranks(a) * standard_ranks(b))``.
    Rank a reference once and score many predictions against it cheaply."""
    r = rankdata(np.asarray(x, dtype=float))
    return (r - r.mean()) / (r.std() + 1e-300)
