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

from hwnas.spaces.errors import PluginFailed, UserError, is_plugin


@runtime_checkable
class PredictorProtocol(Protocol):
    def predict(self, archs: Sequence[Any]) -> np.ndarray: ...


class Predictor:
    """Convenience base class: ``__call__`` = ``predict``; ``fit`` raises for fixed predictors."""

    #: what the predictor returns, e.g. "top1" (fraction), "latency_ms"
    metric: str = "value"
    #: the space whose archs it takes (None = any)
    space: Any = None
    #: what ``predict`` returns: "predicted" (a model's estimate) or "measured" (each arch timed or evaluated)
    kind: str = "predicted"
    #: the device whose latency the values are, where the predictor knows it (results and exports record it)
    device_name: str | None = None

    def predict(self, archs: Sequence[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, archs: Sequence[Any], values: Sequence[float]) -> "Predictor":
        raise NotImplementedError(f"{type(self).__name__} is not a learned predictor; it has no fit()")

    def __call__(self, archs: Sequence[Any]) -> np.ndarray:
        return self.predict(archs)


#: the kinds of value a predictor may declare (:attr:`Predictor.kind`)
KINDS = ("predicted", "measured")


def provenance(obj: Any) -> dict:
    """What ``obj``'s values are, for the results files and exports: ``{"kind": "predicted" | "measured",
    "by": <class name>}`` plus ``"device"`` where the predictor names one (:attr:`Predictor.kind`,
    :attr:`Predictor.device_name`). Wrappers (``__wrapped__``) are looked through; a plug-in that declares
    neither is "predicted"."""
    seen = 0
    while getattr(obj, "__wrapped__", None) is not None and seen < 8:
        obj, seen = obj.__wrapped__, seen + 1
    kind = getattr(obj, "kind", "predicted")
    out = {"kind": kind if kind in KINDS else "predicted", "by": type(obj).__name__}
    device = getattr(obj, "device_name", None)
    if isinstance(device, str) and device:
        out["device"] = device
    weights = getattr(obj, "weights_source", None)  # measured accuracies: the weights they are of (supernet)
    if isinstance(weights, dict):
        out["weights"] = weights
    return out


class NotAPredictor(UserError, TypeError):
    """An object given as a predictor has no ``predict(archs)`` method."""


def as_predictor(obj: Any, field: str = "predictor") -> PredictorProtocol:
    """Check that ``obj`` has a callable ``predict``; raise one clear error otherwise."""
    if not callable(getattr(obj, "predict", None)):
        raise NotAPredictor(
            f"{field}: {type(obj).__name__} has no predict(archs) method; a predictor must define "
            "predict(archs) -> np.ndarray (see hwnas.predictors.Predictor)"
        )
    return obj


class PredictionError(UserError, ValueError):
    """A predictor (or a measuring target) returned values that cannot be used: not one number per arch,
    NaN / infinite, or a latency <= 0. Nothing computed from them is kept."""


def arch_text(arch: Any, limit: int = 120) -> str:
    """An arch for an error message: its compact string where it has one, else ``str`` (shortened)."""
    to_str = getattr(arch, "to_str", None)
    try:
        text = to_str() if callable(to_str) else str(arch)
    except Exception:  # noqa: BLE001 - only a message
        text = repr(arch)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _arch_at(archs: Sequence[Any], i: int) -> str:
    """The text of ``archs[i]``; of an :class:`~hwnas.spaces.ArchBatch` only that row is decoded."""
    genomes, space = getattr(archs, "genomes", None), getattr(archs, "space", None)
    if genomes is not None and space is not None:
        return arch_text(space.decode(genomes[i : i + 1])[0])
    return arch_text(archs[i])


def check_values(values: Any, archs: Sequence[Any], field: str = "predictor", *, finite: bool = False,
                 positive: bool = False) -> np.ndarray:
    """``values`` (what ``predict(archs)`` returned) as a float vector of ``len(archs)``, checked: one number
    per arch; with ``finite``, no NaN or infinity; with ``positive`` (a latency), every value > 0. Anything
    else is one :class:`PredictionError` naming ``field`` (e.g. ``latency (MyLatency)``), what was wrong, how
    many values and an example arch -- raised before the caller stores or uses any of them."""
    n = len(archs)
    of = f"{n} arch" if n == 1 else f"{n} archs"
    if callable(getattr(values, "detach", None)) and callable(getattr(values, "cpu", None)):
        values = values.detach().cpu().numpy()  # a torch tensor, also one that requires grad (predict outside no_grad)
    kind = np.asarray(values).dtype.kind if isinstance(values, (np.ndarray, list, tuple, bool, str, bytes)) else None
    if kind in ("b", "U", "S"):  # True/False or text: numpy would read them as numbers (1.0 ms, or "3" as 3)
        what = "booleans" if kind == "b" else "text"
        raise PredictionError(f"{field}: predict() returned {what}, not numbers; it must return one float per arch "
                              f"(an array of shape ({n},))")
    try:
        out = np.asarray(values, dtype=float)
    except (TypeError, ValueError, RuntimeError) as exc:
        what = type(values).__name__ if not isinstance(values, np.ndarray) else f"an array of {values.dtype}"
        raise PredictionError(f"{field}: predict() returned {what}, not numbers ({str(exc).splitlines()[0]}); it must "
                              f"return one float per arch (an array of shape ({n},))") from None
    if out.ndim == 0 and n == 1 and values is not None:
        out = out.reshape(1)  # one arch, one number
    if out.ndim > 1 and out.size == n and max(out.shape) == n:
        out = out.reshape(-1)  # (n, 1) or (1, n): one value per arch
    if out.ndim != 1:
        shape = "a scalar" if out.ndim == 0 else f"an array of shape {tuple(out.shape)}"
        if values is None:
            shape = "None"
        raise PredictionError(f"{field}: predict() returned {shape} for {of}; it must return one value per arch "
                              f"(an array of shape ({n},))")
    if out.shape[0] != n:
        raise PredictionError(f"{field}: predict() returned {out.shape[0]} values for {of}; it must return one per arch")
    if finite or positive:
        bad = ~np.isfinite(out)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PredictionError(f"{field}: predict() returned a non-finite value ({out[i]}) for {int(bad.sum())} of {of}, "
                                  f"e.g. {_arch_at(archs, i)}; every value must be a finite number")
    if positive:
        bad = out <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PredictionError(f"{field}: predict() returned a latency <= 0 ({out[i]:g}) for {int(bad.sum())} of {of}, "
                                  f"e.g. {_arch_at(archs, i)}; a latency must be > 0")
    return out


def predict_array(pred: PredictorProtocol, archs: Sequence[Any], field: str = "predictor", *, finite: bool = False,
                  positive: bool = False) -> np.ndarray:
    """Call ``pred.predict`` and check the result (:func:`check_values`): a float vector of the right length;
    with ``finite`` / ``positive``, finite / > 0. Errors name ``field`` and the predictor's class."""
    inner = getattr(pred, "__wrapped__", pred)  # a wrapper (e.g. a DistributedPredictor) names what it wraps
    return check_values(call_predict(pred, archs, field), archs, f"{field} ({type(inner).__name__})", finite=finite,
                        positive=positive)


def call_predict(pred: Any, archs: Sequence[Any], field: str = "predictor") -> Any:
    """``pred.predict(archs)``, unchecked. What a user's plug-in (a class outside hwnas) raises, other than a
    :class:`UserError`, becomes :class:`~hwnas.spaces.errors.PluginFailed` naming ``field``, the class and
    the exception (the commands print the plug-in's traceback, then that line); hwnas's own predictors'
    exceptions pass as they are."""
    inner = getattr(pred, "__wrapped__", pred)
    try:
        return pred.predict(archs)
    except UserError:
        raise
    except Exception as exc:
        if not is_plugin(inner):
            raise  # a bug of hwnas's own: its traceback as it is
        cls = type(inner)
        raise PluginFailed(f"{field} ({cls.__module__}.{cls.__qualname__}) raised {type(exc).__name__} in predict(): "
                           f"{str(exc).splitlines()[0] if str(exc) else '(no message)'}") from exc
