"""The measurement protocol: its settings, its results, and its control logic.

:class:`MeasureConfig` holds every setting (all recorded with each stored measurement):

* every model is timed in ``processes`` **fresh worker processes**; a process runs ``warmup``
  untimed calls then ``repeats`` timed calls (at least ``min_time_s`` of them) and keeps the
  **median** call time;
* the result is the median over the processes; while a model's ``processes`` most central process
  medians spread more than ``max_spread`` (``(max - min) / median``), one more process times it (at
  most ``max_extra``): an outlier process is out-voted, not averaged in;
* processes can be pinned to CPUs (``pin=[1]``, or ``"auto"``: the least busy CPU right now); each
  times its models in a shuffled order;
* with one thread the clock is the process's CPU time (``clock="auto"``), so other programs on a
  shared machine do not inflate it.

The control logic itself is in :mod:`hwnas.predictors.measure.worker`, which also runs on remote
devices; :func:`run_protocol` here is its typed front end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence


from hwnas.spaces.errors import UserError
from hwnas.spaces.checks import check_bool, check_int, check_number

from . import worker
from .worker import available_cpus, relative_spread  # noqa: F401  (re-exported)

BACKENDS = ("onnxruntime", "torch")
_BACKEND_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "eager": "torch"}


class MeasureError(UserError, RuntimeError):
    """A measurement could not be taken; the message says which model and why."""


class MeasureConfigError(UserError, ValueError):
    """A protocol setting is invalid; the message names it."""


@dataclass(frozen=True)
class MeasureConfig:
    """Settings of the timing protocol (see the module doc)."""

    backend: str = "onnxruntime"
    threads: int = 1
    processes: int = 3
    warmup: int = 5
    repeats: int = 10
    min_time_s: float = 0.0
    batch_size: int = 1
    pin: Any = None  # None, "auto", or a list of CPU ids
    clock: str = "auto"  # "wall", "cpu" (process CPU time; single thread only), "auto": cpu if threads == 1
    overlap: bool = False  # export the next chunk while this one is timed (the export competes with the timing)
    max_spread: float = 0.15
    max_extra: int = 3
    chunk: int = 4  # models per timing process (its start-up is shared); a model is stored when its chunk is done
    timeout_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        b = _BACKEND_ALIASES.get(str(self.backend).lower())
        if b is None:
            raise MeasureConfigError(f"backend={self.backend!r} is unknown; use one of {list(BACKENDS)}")
        object.__setattr__(self, "backend", b)
        for name, lo in (("threads", 1), ("processes", 1), ("warmup", 0), ("repeats", 1), ("batch_size", 1),
                         ("max_extra", 0), ("chunk", 1), ("seed", 0)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, lo, error=MeasureConfigError))
        check_number(self.max_spread, "max_spread", 0.0, lo_open=True, desc="a relative spread > 0", example=0.15,
                     error=MeasureConfigError)
        clock = str(self.clock).lower()
        if clock == "auto":
            clock = "cpu" if self.threads == 1 else "wall"
        if clock not in ("wall", "cpu"):
            raise MeasureConfigError(f"clock={self.clock!r} is unknown; use 'wall', 'cpu' or 'auto'")
        if clock == "cpu" and self.threads != 1:
            raise MeasureConfigError(f"clock='cpu' sums the CPU time of all threads, so it needs threads=1 (got "
                                     f"threads={self.threads}); use clock='wall' with several threads")
        object.__setattr__(self, "clock", clock)
        object.__setattr__(self, "overlap", check_bool(self.overlap, "overlap", error=MeasureConfigError))
        check_number(self.min_time_s, "min_time_s", 0.0, error=MeasureConfigError)
        check_number(self.timeout_s, "timeout_s", 0.0, lo_open=True, desc="a number of seconds > 0", example=600,
                     error=MeasureConfigError)
        object.__setattr__(self, "pin", _pin(self.pin))

    def settings(self) -> dict:
        """The protocol as a JSON-able dict (stored with each measurement; what the worker reads)."""
        d = asdict(self)
        d["pin"] = list(self.pin) if isinstance(self.pin, tuple) else self.pin
        return d

    def fingerprint(self) -> dict:
        """What makes two measurements comparable: same backend, threads, batch size and clock."""
        return {"backend": self.backend, "threads": self.threads, "batch_size": self.batch_size, "clock": self.clock}

    def replace(self, **kw: Any) -> "MeasureConfig":
        d = asdict(self)
        d.update(kw)
        return MeasureConfig(**d)


def _pin(pin: Any) -> Any:
    if isinstance(pin, str):
        if pin.lower() in ("", "none", "off"):
            return None
        if pin.lower() == "auto":
            return "auto"
        try:
            pin = tuple(int(x) for x in pin.replace(" ", "").split(",") if x)
        except ValueError:
            raise MeasureConfigError(f"pin={pin!r} must be 'auto', 'none' or CPU ids such as '1' or '0,1'") from None
    elif pin is not None:
        try:
            pin = tuple(int(x) for x in pin)
        except (TypeError, ValueError):
            raise MeasureConfigError(f"pin={pin!r} must be 'auto', None or a list of CPU ids") from None
    if isinstance(pin, tuple):
        if not pin:
            return None
        bad = [c for c in pin if c not in available_cpus()]
        if bad:
            raise MeasureConfigError(f"pin={list(pin)} names CPU(s) {bad} this process may not use; allowed: {sorted(available_cpus())}")
    return pin


@dataclass
class Measurement:
    """Result of the protocol for one model (milliseconds)."""

    ms: float  # median over the agreeing processes
    spread: float  # (max - min) / median over those processes
    n: int  # timed calls in total
    per_process: list[float]  # median call time of every process, outliers included
    stable: bool  # spread <= max_spread at the end
    platform: dict | None = None  # the machine that timed it, when it is not this one

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(per_process: Sequence[Sequence[float]], max_spread: float, k: int | None = None) -> Measurement:
    """See :func:`hwnas.predictors.measure.worker.summarise`."""
    try:
        return Measurement(**worker.summarise(per_process, max_spread, k))
    except worker.ProtocolError as exc:
        raise MeasureError(str(exc)) from None


#: runs one repeat group: (prepared models, config, group index) -> per model list of call times (ms)
GroupRunner = Callable[[Sequence[dict], MeasureConfig, int], list]


def subprocess_runner(models: Sequence[dict], cfg: MeasureConfig, group: int) -> list:
    """Time ``models`` in one fresh process on this machine (the default :data:`GroupRunner`)."""
    return worker.group_in_subprocess(models, cfg.settings(), group)


def run_protocol(models: Sequence[dict], cfg: MeasureConfig, runner: GroupRunner | None = None) -> list[Measurement]:
    """The protocol on prepared models (see the module doc); ``runner`` times one group in one process
    (tests inject a fake one)."""
    run = runner or subprocess_runner
    try:
        out = worker.run_protocol(models, cfg.settings(), lambda ms, _settings, g: run(ms, cfg, g))
    except worker.ProtocolError as exc:
        raise MeasureError(str(exc)) from None
    return [Measurement(**d) for d in out]
