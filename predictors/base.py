"""The predictor protocol: anything that maps a batch of archs to one scalar each.

A predictor needs only ``predict(archs) -> np.ndarray`` (shape ``(n,)``, batched). Learned predictors
also implement ``fit(archs, values) -> self``. Custom predictors plug in through hydra's
``_target_`` (see the README); they may subclass :class:`Predictor` or just have the method.

``archs`` is any sequence of archs of one space. The search passes a :class:`hwnas.spaces.ArchBatch`,
which also carries the genomes and the space's vectorised decode (``batch.arrays``) for fast paths.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class PredictorProtocol(Protocol):
    def predict(self, archs: Sequence[Any]) -> np.ndarray: ...


class Predictor:
    """Convenience base class: ``__call__`` = ``predict``; ``fit`` raises for fixed predictors."""

    #: what the predictor returns, e.g. "top1" (fraction), "latency_ms"
    metric: str = "value"
    #: the space whose archs it takes (None = any)
    space: Any = None

    def predict(self, archs: Sequence[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, archs: Sequence[Any], values: Sequence[float]) -> "Predictor":
        raise NotImplementedError(f"{type(self).__name__} is not a learned predictor; it has no fit()")

    def __call__(self, archs: Sequence[Any]) -> np.ndarray:
        return self.predict(archs)


def as_predictor(obj: Any, field: str = "predictor") -> PredictorProtocol:
    """Check that ``obj`` has a callable ``predict``; raise one clear error otherwise."""
    if not callable(getattr(obj, "predict", None)):
        raise TypeError(
            f"{field}: {type(obj).__name__} has no predict(archs) method; a predictor must define "
            "predict(archs) -> np.ndarray (see hwnas.predictors.Predictor)"
        )
    return obj


def predict_array(pred: PredictorProtocol, archs: Sequence[Any], field: str = "predictor") -> np.ndarray:
    """Call ``pred.predict`` and check the result is a finite float vector of the right length."""
    out = np.asarray(pred.predict(archs), dtype=float).reshape(-1)
    if out.shape[0] != len(archs):
        raise ValueError(f"{field}: predict() returned {out.shape[0]} values for {len(archs)} archs; it must return one per arch")
    return out
