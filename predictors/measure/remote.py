"""Measuring a remote device through Dask: the device runs a stock Dask worker holding a resource.

On the device (Python of the same minor version as this machine; no hwnas, no torch)::

    pip install "dask[distributed]" onnxruntime numpy
    dask worker tcp://SCHEDULER:8786 --nthreads 1 --resources "hwnas-device=1"

Here, for each arch: the network is exported to ONNX (every axis fixed), and one task is submitted
with ``resources={"hwnas-device": 1}``, so only that worker runs it, one at a time. The task is
:func:`hwnas.predictors.measure.worker.measure_on_device`, compiled from the worker's source into a
module of its own so that Dask sends it by value (cloudpickle), not as an import of hwnas: it runs the
same protocol as local measurement there (fresh timing processes, warm-up, repeats, median, outlier
re-measure) and returns the result with the worker's platform. Results are handed back (and stored
by the caller) one arch at a time, as they finish.

Faults: a worker that disappears mid-task is Dask's to handle -- the scheduler runs the task again on
the next worker that holds the resource (the same device reconnecting, or another); a task whose
worker died ``allowed_failures`` times, or a device gone for ``wait_s`` seconds, ends the run with one
error line, the measurements finished so far stored. A result is stored only when complete. With no
worker holding the resource, the error says which ``dask worker`` command to run.

The link is your own cluster: Dask's scheduler executes what clients send it. On an untrusted network
use Dask's TLS options (``--tls-ca-file``/``--tls-cert``/``--tls-key`` and a ``tls://`` address).
"""

from __future__ import annotations

import os
import time
import warnings
from asyncio import CancelledError
from functools import lru_cache
from typing import Any, Callable, Sequence

from . import worker
from .measurer import OnResult
from .models import ModelSpec, spec_onnx
from .protocol import MeasureConfig, MeasureError, Measurement

#: tasks kept queued at the scheduler beside the running one (the device never waits for an export)
WINDOW = 2


@lru_cache(maxsize=1)
def device_task() -> tuple[Callable, str]:
    """``(measure_on_device, source)``: the worker module compiled under a name no device can import,
    so the function travels by value, with the source its timing processes run."""
    with open(worker.__file__, encoding="utf-8") as f:
        source = f.read()
    ns: dict[str, Any] = {"__name__": "hwnas_device_task", "__file__": worker.__file__}
    exec(compile(source, worker.__file__, "exec"), ns)  # noqa: S102 - hwnas's own module source
    return ns["measure_on_device"], source


def _local_hosts() -> set[str]:
    import socket

    hosts = {"127.0.0.1", "::1", "localhost"}
    try:
        name = socket.gethostname()
        hosts.update({name, *socket.gethostbyname_ex(name)[2]})
    except OSError:
        pass
    return hosts


def queue_window(worker_addresses: Sequence[str], config: MeasureConfig) -> int:
    """How many tasks to keep queued: :data:`WINDOW` (the next chunk is exported while the device times
    this one), or 1 when a worker holding the resource runs on this machine and the clock is the wall
    clock (several threads): there the export would take CPU from the timing and slow it down. A
    single-threaded timing reads its process's CPU time, which the export does not inflate."""
    if config.clock == "cpu":
        return WINDOW
    from urllib.parse import urlsplit

    here = _local_hosts()
    for a in worker_addresses:
        host = urlsplit(a if "://" in a else f"tcp://{a}").hostname or ""
        if host in here or host.startswith("127."):
            return 1
    return WINDOW


def scheduler_command(scheduler: str) -> str:
    """``dask scheduler``, with ``--port`` when the address names another port than Dask's 8786."""
    import re

    m = re.search(r":(\d+)/?$", str(scheduler))
    return "dask scheduler" + (f" --port {m.group(1)}" if m and m.group(1) != "8786" else "")


def worker_command(scheduler: str, resource: str) -> str:
    return f'dask worker {scheduler} --nthreads 1 --resources "{resource}=1"'


class DaskMeasurer:
    """The protocol on the Dask worker(s) holding ``resource`` at ``scheduler`` (see the module doc).

    ``wait_s``: how long to wait for a worker with the resource (at the start, and after one left)
    before giving up. ``client``: an existing ``distributed.Client`` (tests); otherwise one is opened.
    """

    where = "remote"

    def __init__(self, config: MeasureConfig | None = None, scheduler: str = "", resource: str = "hwnas-device",
                 wait_s: float = 60.0, client: Any = None) -> None:
        self.config = config or MeasureConfig()
        if self.config.backend != "onnxruntime":
            raise MeasureError(f"backend={self.config.backend!r}: remote devices are timed through ONNX Runtime; use backend=onnxruntime")
        self.scheduler, self.resource, self.wait_s = str(scheduler), str(resource), float(wait_s)
        self._client = client
        self._own = client is None
        self.platform: dict | None = None

    # ------------------------------------------------------------------ cluster
    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from distributed import Client
            except ImportError:  # pragma: no cover - dask is a test/extra dependency
                raise MeasureError("measuring a remote device needs dask[distributed]: pip install 'dask[distributed]'") from None
            try:
                self._client = Client(self.scheduler, timeout=min(30.0, max(self.wait_s, 1.0)))
            except Exception as exc:  # noqa: BLE001 - OSError / TimeoutError from the comm layer
                raise MeasureError(
                    f"scheduler={self.scheduler!r}: cannot connect to the Dask scheduler ({type(exc).__name__}: {exc}); "
                    f"start one with `{scheduler_command(self.scheduler)}` and the device's worker with "
                    f"`{worker_command(self.scheduler, self.resource)}`"
                ) from None
        return self._client

    def holders(self) -> list[str]:
        """Addresses of the workers that hold the resource now."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return [a for a, w in workers.items() if float((w.get("resources") or {}).get(self.resource, 0)) > 0]

    def wait_for_device(self, seconds: float | None = None) -> list[str]:
        deadline = time.monotonic() + (self.wait_s if seconds is None else seconds)
        while True:
            held = self.holders()
            if held or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not held:
            raise MeasureError(
                f"no Dask worker at {self.scheduler} holds the resource {self.resource!r} (waited {self.wait_s:g} s); "
                f"on the device run: {worker_command(self.scheduler, self.resource)}"
            )
        return held

    # ------------------------------------------------------------------ measuring
    def measure(self, specs: Sequence[ModelSpec], on_result: OnResult | None = None, progress: Any = None) -> list[Measurement]:
        """One task per ``config.chunk`` models (4 by default; a chunk's archs are handed back, and
        stored, as soon as its task is done), at most :data:`WINDOW` tasks queued, so the next chunk is
        exported here while the device times this one (see :func:`queue_window`)."""
        window = queue_window(self.wait_for_device(), self.config)
        task, script = device_task()
        settings = self.config.settings()
        results: list[Measurement | None] = [None] * len(specs)
        step = self.config.chunk
        chunks = [list(range(s, min(s + step, len(specs)))) for s in range(0, len(specs), step)]
        pending: dict[Any, list[int]] = {}
        nxt = 0
        try:
            while nxt < len(chunks) or pending:
                while nxt < len(chunks) and len(pending) < window:
                    pending[self._submit(task, [specs[i] for i in chunks[nxt]], nxt, settings, script)] = chunks[nxt]
                    nxt += 1
                done = self._first_done(pending, 5.0)
                if not done:
                    self._check_device_still_there()
                    continue
                for fut in done:
                    idx = pending.pop(fut)
                    for i, m in zip(idx, self._results(fut, [specs[i] for i in idx])):
                        results[i] = m
                        if on_result is not None:
                            on_result(i, m)
                    if progress is not None:
                        progress.update(len(idx))
        finally:
            for fut in pending:  # interrupted: nothing half-measured stays queued on the device
                fut.cancel()
        return results  # type: ignore[return-value]

    @staticmethod
    def _first_done(pending: dict, seconds: float) -> list:
        """The futures of ``pending`` that are done, waiting up to ``seconds`` for one. It polls the
        futures' own state: ``distributed.wait`` with a timeout can end in an UnboundLocalError when a
        task is cancelled under it (a worker lost mid-task)."""
        deadline = time.monotonic() + seconds
        while True:
            done = [f for f in pending if f.done()]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.05)

    def _submit(self, task: Callable, specs: list[ModelSpec], c: int, settings: dict, script: str) -> Any:
        payload = []
        for spec in specs:
            data, shape = spec_onnx(spec)
            payload.append({"onnx": data, "shape": shape, "key": spec.key})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sending large graph")  # the ONNX files travel with their task
            return self.client.submit(task, payload, settings, script, resources={self.resource: 1}, pure=False,
                                      key=f"hwnas-measure-{os.getpid()}-{c}-{time.time_ns()}")

    def _check_device_still_there(self) -> None:
        if not self.holders():  # the device left: Dask reruns its task when it (or another) comes back
            self.wait_for_device()

    def _results(self, fut: Any, specs: list[ModelSpec]) -> list[Measurement]:
        try:
            out = fut.result()
        except (Exception, CancelledError) as exc:  # noqa: BLE001 - KilledWorker, a cancelled task, errors on the device
            name = type(exc).__name__
            hint = ""
            if name == "KilledWorker":
                hint = " (the worker died while timing it, several times; check the device's memory)"
            elif "pickle" in str(exc).lower() or name in ("ModuleNotFoundError", "AttributeError"):
                hint = " (the device's Python must be the same minor version as this machine's, with numpy and onnxruntime)"
            raise MeasureError(f"model {specs[0].key[:80]!r} on {self.scheduler}: {name}: {exc}{hint}") from None
        self.platform = out["platform"]
        return [Measurement(**r, platform=out["platform"]) for r in out["results"]]

    def close(self) -> None:
        if self._own and self._client is not None:
            self._client.close()
            self._client = None
