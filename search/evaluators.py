"""Where population evaluations run: locally, or spread over a Dask cluster.

The search hands every population to the predictors as one batch. Cheap predictors (lookup tables,
linear models, the OFA MLP) should stay batched and local. Expensive ones (supernet accuracy with BN
re-calibration, on-device measurement) are per-arch work that parallelises: :class:`DistributedPredictor`
wraps such a predictor and evaluates a batch *element-wise* through a pymoo parallelization runner,
``runner(f, archs) -> [f(arch) ...]`` (pymoo's elementwise-runner protocol), in input order, so results
are the same as a local element-wise run (and as a batched run for predictors whose value for an arch
does not depend on the batch -- true of per-arch evaluations; a batched BLAS product may differ from a
one-row product in the last bit, which can change tie-breaks).

Runners:

* :class:`LocalRunner` -- a plain loop (pymoo's ``LoopedElementwiseEvaluation`` equivalent);
* :class:`DaskRunner` -- pymoo's :class:`pymoo.parallelization.dask.DaskParallelization` on a
  ``distributed.Client``: ``address`` of a running scheduler (``tcp://host:8786``), or ``None`` for a
  ``LocalCluster`` (``n_workers``, ``threads_per_worker``, ``processes``). The predictor is scattered
  to every worker once (broadcast), then one small task per arch.

Config (``conf/evaluator/{local,dask}.yaml``)::

    evaluator: {kind: dask, address: null, n_workers: 4, threads_per_worker: 1, processes: true,
                objectives: [accuracy]}

``objectives`` names which predictors go through the runner (``accuracy``, ``latency``, or both).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hwnas.predictors.base import Predictor, check_values
from hwnas.spaces.checks import check_bool, check_int
from hwnas.spaces.errors import UserError


class EvaluatorError(UserError, ValueError):
    """Bad evaluator configuration; the message names the key and the fix."""


class LocalRunner:
    """Element-wise evaluation in this process (a loop)."""

    def __call__(self, f: Callable[[Any], Any], X: Sequence[Any]) -> list:
        return [f(x) for x in X]

    def close(self) -> None:
        pass


def _call_remote(pred: Any, arch: Any) -> Any:
    """``pred.predict([arch])`` as it came (checked by the caller: one number)."""
    return pred.predict([arch])


class _Elementwise:
    """``f(arch) = predictor.predict([arch])`` (checked by :class:`DistributedPredictor`: one number); the
    predictor may be a Dask future (scattered)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def __call__(self, arch: Any) -> Any:
        return _call_remote(self.predictor, arch)


@contextmanager
def _dask_logs(level: int) -> Iterator[None]:
    """``distributed``'s loggers at ``level`` at least, inside the block. Hydra sends every INFO record to
    the console and the run's log: a LocalCluster's start-up and shutdown are 30 lines of them, and after
    an interrupt the scheduler logs each cancelled task (``CommClosedError`` tracebacks, "computation on
    lost data") below the command's one-line message."""
    log = logging.getLogger("distributed")
    old = log.level
    if log.getEffectiveLevel() < level:
        log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[dict]:
    """While the block starts a cluster: a Ctrl-C is noted, not raised inside Dask's start (the yielded state's
    ``"interrupted"`` turns true; the caller closes what it started and stops). It used to be ignored for the
    second the start takes, so that the workers started with it ignored, and was lost: the search ran on to its
    end. The workers ignore SIGINT from their first task instead (:func:`hwnas.search._dask_worker.dask_setup`,
    their preload): a Ctrl-C in a terminal goes to the whole process group, and each worker printed its own
    KeyboardInterrupt traceback, while this process stops the search and closes the cluster in order."""
    import signal
    import threading

    state = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def note(signum: int, frame: Any) -> None:
        state["interrupted"] = True

    old = signal.signal(signal.SIGINT, note)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, old)


class _SyncCancelBug(logging.Filter):
    """Drops one known record: when Ctrl-C lands in ``distributed.utils.sync`` before its coroutine has
    started, the loop thread runs sync's ``cancel()``, which reads a variable not yet bound and tornado
    logs the resulting ``NameError`` with its traceback (distributed 2025.x). Nothing is lost by it;
    other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NameError) and exc.__traceback__ is not None:
            tb = exc.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            code = tb.tb_frame.f_code
            if code.co_name == "cancel" and code.co_filename.replace("\\", "/").endswith("distributed/utils.py"):
                return False
        return True


_SYNC_CANCEL_BUG = _SyncCancelBug()


class DaskRunner:
    """pymoo's Dask parallelization on a client (``address`` or a new ``LocalCluster``).

    A cluster of our own logs warnings and errors only (its INFO records are start-up chatter), its
    worker processes nothing below CRITICAL (closing the cluster cancels their running tasks, each a
    warning; a failing task is an ERROR record per task, and the same failure reaches this process,
    which reports it once). Closing it is silent, and so is everything its tasks report after an
    interrupt: the search has said in one line what happened and where its checkpoint is."""

    def __init__(self, address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                 processes: bool = True, client: Any = None, **cluster_kwargs: Any) -> None:
        try:
            from distributed import Client, LocalCluster
            from pymoo.parallelization.dask import DaskParallelization
        except ImportError as exc:  # pragma: no cover - dask is a dependency
            raise EvaluatorError(f"evaluator=dask needs dask[distributed] ({exc}); pip install 'dask[distributed]'") from None
        self._own = client is None
        self.cluster = None
        self._log_level: int | None = None
        if client is None:
            if address:
                try:
                    client = Client(str(address), timeout=30)
                except Exception as exc:  # noqa: BLE001
                    raise EvaluatorError(f"evaluator.address={address!r}: cannot connect to the Dask scheduler ({exc})") from None
            else:
                check_int(n_workers, "evaluator.n_workers", 1, example=2, error=EvaluatorError)
                check_int(threads_per_worker, "evaluator.threads_per_worker", 1, example=1, error=EvaluatorError)
                check_bool(processes, "evaluator.processes", error=EvaluatorError)
                log = logging.getLogger("distributed")
                self._log_level = log.level  # restored by close()
                if log.getEffectiveLevel() < logging.WARNING:
                    log.setLevel(logging.WARNING)
                with _workers_ignore_ctrl_c() as started:
                    try:
                        self.cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
                                                    processes=bool(processes), dashboard_address=":0",  # a free port (None still takes 8787)
                                                    **{"silence_logs": logging.CRITICAL,
                                                       **({"preload": ["hwnas.search._dask_worker"]} if processes else {}),
                                                       **cluster_kwargs})
                    except Exception:
                        if not started["interrupted"]:
                            raise
                        log.setLevel(self._log_level)  # a worker the same Ctrl-C stopped while it started: "Nanny failed"
                        raise KeyboardInterrupt from None
                if started["interrupted"]:  # Ctrl-C while the cluster started: it is closed, and the search stops
                    with _dask_logs(logging.CRITICAL + 1):
                        self.cluster.close()
                    log.setLevel(self._log_level)
                    raise KeyboardInterrupt
                client = Client(self.cluster)
        self.client = client
        logging.getLogger("tornado.application").addFilter(_SYNC_CANCEL_BUG)  # (adding it again is a no-op)
        self.parallel = DaskParallelization(client)
        self._scattered: dict[int, Any] = {}

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def scatter(self, predictor: Any) -> Any:
        """The predictor as a Dask future on every worker (sent once). One that cannot be sent (it holds a
        lock, an open file, a GPU context) is one :class:`EvaluatorError` before Dask tries (and logs a
        traceback per attempt)."""
        k = id(predictor)
        if k not in self._scattered:
            import cloudpickle

            try:
                cloudpickle.dumps(predictor)
            except Exception as exc:  # noqa: BLE001 - whatever the object holds
                name = f"{type(predictor).__module__}.{type(predictor).__qualname__}"
                raise EvaluatorError(
                    f"evaluator=dask: {name} cannot be sent to the workers ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); make it picklable (open files, locks, sessions "
                    "in predict() or __setstate__, not kept from __init__) or use evaluator=local") from None
            self._scattered[k] = self.client.scatter(predictor, broadcast=True, hash=False)
        return self._scattered[k]

    def __call__(self, f: Callable[[Any], Any], X: Sequence[Any]) -> list:
        return self.parallel(f, X)

    def map_predict(self, predictor: Any, archs: Sequence[Any]) -> list:
        fut = self.scatter(predictor)
        jobs = [self.client.submit(_call_remote, fut, a, pure=False) for a in archs]
        return [j.result() for j in jobs]

    def close(self) -> None:
        if self._own:
            try:
                with _dask_logs(logging.CRITICAL + 1):
                    self.client.close()
                    if self.cluster is not None:
                        self.cluster.close()
            finally:  # the level the user had before our cluster started (after _dask_logs put back its own)
                if self._log_level is not None:
                    logging.getLogger("distributed").setLevel(self._log_level)

    def __enter__(self) -> "DaskRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DistributedPredictor(Predictor):
    """A predictor whose batches are evaluated element-wise by ``runner`` (same values, same order)."""

    def __init__(self, predictor: Any, runner: Any) -> None:
        self.predictor = self.__wrapped__ = predictor  # (__wrapped__: error messages name the wrapped class)
        self.runner = runner
        self.field = "predictor"  # what the errors call it (wrap_predictors: accuracy, latency)
        self.metric = getattr(predictor, "metric", None)
        self.n_calls = 0

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        archs = list(archs)  # ArchBatch -> arch objects (picklable, small)
        if not archs:
            return np.zeros(0)
        self.n_calls += len(archs)
        if isinstance(self.runner, DaskRunner):
            vals = self.runner.map_predict(self.predictor, archs)
        else:
            vals = self.runner(_Elementwise(self.predictor), archs)
        field = f"{self.field} ({type(self.predictor).__name__})"
        return np.array([check_values(v, [a], field)[0] for v, a in zip(vals, archs)], dtype=float)


def make_runner(cfg: Any) -> Any:
    """``evaluator`` config -> runner (``kind``: local | dask)."""
    cfg = dict(cfg or {})
    kind = cfg.pop("kind", "local")
    cfg.pop("objectives", None)
    if kind == "local":
        return LocalRunner()
    if kind == "dask":
        known = {"address", "n_workers", "threads_per_worker", "processes"}
        extra = set(cfg) - known
        if extra:
            raise EvaluatorError(f"evaluator has unknown key(s) {sorted(extra)}; known: {sorted(known | {'kind', 'objectives'})}")
        return DaskRunner(**cfg)
    raise EvaluatorError(f"evaluator.kind={kind!r} is unknown; allowed values: ['local', 'dask']")


def wrap_predictors(cfg: Any, runner: Any, **predictors: Any) -> dict:
    """Wrap the predictors named in ``evaluator.objectives`` with :class:`DistributedPredictor`."""
    cfg = dict(cfg or {})
    objectives = cfg.get("objectives") or []
    names = [objectives] if isinstance(objectives, str) else list(objectives)  # (a string was split into its letters)
    bad = [n for n in names if n not in predictors]
    if bad:
        raise EvaluatorError(f"evaluator.objectives={names}: unknown {bad}; allowed values: {sorted(predictors)}")
    if isinstance(runner, LocalRunner):
        return dict(predictors)  # local: keep batched evaluation
    out = {k: (DistributedPredictor(p, runner) if k in names else p) for k, p in predictors.items()}
    for k, p in out.items():
        if isinstance(p, DistributedPredictor):
            p.field = k
    return out
