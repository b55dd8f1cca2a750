"""Checkpoints of a search, so a killed or interrupted run resumes where it stopped.

:class:`SearchCheckpoint` plugs into :func:`hwnas.search.nsga.run_search` (``checkpoint=``). It writes
one numpy ``.npz`` archive -- arrays and a JSON document, no pickle -- atomically (temp file + ``fsync``
+ rename) holding the search's state after a step:

* the archive: every distinct genome evaluated and its objectives (nothing is evaluated again);
* the current NSGA-II population and its random generator's state (a few integers), the restart and
  generation counters; the refinement's expanded members and pass count;
* the history, budgets and hypervolume reference point, and a fingerprint of the search settings.

On start, ``restore`` reads it (with ``allow_pickle=False``), checks the fingerprint and every array
against the space, and puts the state back: the rest of the run is the same computation as an
uninterrupted run, so the same seed gives the same front. A checkpoint written for other settings is
refused with a clear error (delete it or use another run directory); an unreadable one is reported,
never silently replaced.

``every``: save after every ``every``-th step; ``interval_s``: and at most once per that many seconds
(a fast search is not slowed down by its checkpoints; an expensive one saves after each step). An
interrupt always saves. Each initial population (of the first run and of each restart) is offered to
:meth:`SearchCheckpoint.save_population` too, under ``interval_s`` alone (it is not a step): it is
saved when ``interval_s`` has passed since the last save, so the first one of a fresh run always is
(it takes the place of the first step's save, which then waits like any other) and a later one is
always saved with an objective whose initial population takes longer than that (supernet accuracy,
on-device measurement), whose evaluations a kill during the next generation would otherwise lose.

For tests and fault-injection drills: ``HWNAS_KILL_AFTER_GEN=k`` makes the process ``os._exit(137)``
right after the checkpoint of step ``k`` is written (as ``kill -9`` would, no clean-up); ``k=0``: right
after the checkpoint of the first initial population.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwnas.predictors.assets import atomic_path
from hwnas.spaces.errors import UserError

FORMAT = "hwnas-search-checkpoint/2"
KILL_ENV = "HWNAS_KILL_AFTER_GEN"
_ARRAYS = {"archive_X": 2, "archive_acc": 1, "archive_lat": 1, "refine_expanded": 2, "refine_walkers": 2,
           "refine_walker_budget": 1, "pop_X": 2}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be used; the message names the file and the fix."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able description (sorted keys, ``str`` for the rest)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_state(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """One ``.npz`` file: ``arrays`` plus ``meta`` as JSON bytes, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def read_state(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a file written by :func:`write_state` (no pickle is ever loaded)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile) and exc.errno is not None:
            raise
        if "allow_pickle" in str(exc):  # (numpy's words advise loading it unsafely)
            raise CheckpointError(f"checkpoint {path} is unreadable (not arrays: numpy would read it as pickled Python objects, "
                                  "which hwnas never loads); it was not overwritten. Delete it to start the search from scratch.") from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
            "it was not overwritten. Delete it to start the search from scratch."
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} is not an hwnas search checkpoint; delete it")
    return arrays, meta


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON part of a checkpoint (step, phase, history, ...)."""
    return read_state(Path(path))[1]


class SearchCheckpoint:
    """Checkpoint file of one search run (see the module doc).

    ``path``: the file. ``settings``: anything describing the run (hashed; a checkpoint from other
    settings is refused). ``every``, ``interval_s``: how often to save.
    """

    def __init__(self, path: str | os.PathLike, settings: Any = None, every: int = 1, interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.key = fingerprint(settings)
        self.every = max(1, int(every))
        self.interval_s = float(interval_s)
        self.resumed_from: int | None = None
        self.saved: list[int] = []  # the steps whose checkpoint was written
        self.saved_populations: list[int] = []  # initial populations saved (the step before each)
        self._last = -math.inf

    # ------------------------------------------------------------------ run_search hooks
    def restore(self, engine: Any, problem: Any) -> dict | None:
        if not self.path.exists():
            return None
        arrays, meta = read_state(self.path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {self.path} is not an hwnas search checkpoint ({FORMAT}); delete it")
        if meta.get("key") != self.key:
            raise CheckpointError(
                f"checkpoint {self.path} was written by a search with other settings (key {meta.get('key')} != "
                f"{self.key}); delete it or use another run directory"
            )
        _check(self.path, arrays, meta, problem)
        try:
            engine.load(arrays, meta["state"])
        except (KeyError, TypeError, ValueError, IndexError, ArithmeticError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {self.path} holds an inconsistent state ({exc}); delete it") from None
        self.resumed_from = int(meta["state"]["step"])
        self._last = time.monotonic()
        return {"gen": self.resumed_from, "history": meta["state"]["history"], "hv_ref": tuple(meta["state"]["hv_ref"])}

    def save(self, engine: Any, problem: Any, gen: int, history: list, hv_ref: tuple, force: bool = False) -> None:
        due = gen % self.every == 0 and time.monotonic() - self._last >= self.interval_s
        if force or due:
            self._write(engine)
            self.saved.append(int(gen))
        _maybe_kill(gen)

    def save_population(self, engine: Any, problem: Any, gen: int, history: list, hv_ref: tuple) -> None:
        """After an initial population (``gen``: the steps done before it): saved when ``interval_s``
        has passed since the last save (see the module doc)."""
        if time.monotonic() - self._last >= self.interval_s:
            self._write(engine)
            self.saved_populations.append(int(gen))
        _maybe_kill(gen)

    def _write(self, engine: Any) -> None:
        arrays, state = engine.state()
        write_state(self.path, arrays, {"format": FORMAT, "key": self.key, "state": state})
        self._last = time.monotonic()
        self.on_saved(engine)

    def on_saved(self, engine: Any) -> None:
        """Called after each save (the command writes its partial results here)."""

    def archive_if_stale(self) -> Path | None:
        """If the file holds a checkpoint of *other* settings, move it aside (``<name>.<key>.stale``) so
        this run starts fresh; returns the new path. Unreadable files are left for :meth:`restore` to
        report."""
        if not self.path.exists():
            return None
        try:
            key = read_meta(self.path).get("key")
        except CheckpointError:
            return None
        if key == self.key:
            return None
        dest = self.path.with_name(f"{self.path.name}.{key}.stale")
        os.replace(self.path, dest)
        return dest

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _maybe_kill(gen: int) -> None:
    kill = os.environ.get(KILL_ENV)
    if kill and int(kill) == int(gen):
        os._exit(137)  # simulated kill -9 (no clean-up, no flush)


def checkpoint_key(path: str | os.PathLike) -> str | None:
    """The settings fingerprint a checkpoint file was written with (compare with
    ``SearchCheckpoint(path, settings=...).key``); None when there is no readable checkpoint."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        key = read_meta(path).get("key")
    except (CheckpointError, OSError):
        return None
    return key if isinstance(key, str) else None


def _check_meta(state: dict, bad: Callable[[str], CheckpointError]) -> None:
    """The counters and lists of a checkpoint's JSON state, as data (an edited file: one line, not a traceback
    from deep inside the search)."""
    import math as _m

    def whole(k: str) -> bool:
        v = state.get(k, 0)
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def number(v: Any, none: bool = False) -> bool:
        return (v is None and none) or (isinstance(v, (int, float)) and not isinstance(v, bool) and _m.isfinite(v))

    for k in ("step", "restart", "gen"):
        if not whole(k):
            raise bad(f"state {k}={state.get(k)!r} is not a count")
    if not number(state.get("elapsed_s", 0.0)) or state.get("elapsed_s", 0.0) < 0:
        raise bad(f"state elapsed_s={state.get('elapsed_s')!r} is not a number of seconds")
    ref = state.get("hv_ref")
    if not (isinstance(ref, list) and len(ref) == 2 and all(number(v, none=True) for v in ref)):
        raise bad(f"state hv_ref={ref!r} is not a reference point [accuracy, latency]")
    hist = state.get("history")
    if not (isinstance(hist, list) and all(isinstance(h, dict) for h in hist)):
        raise bad("state history is not a list of steps")
    budgets = state.get("budgets")
    if not (isinstance(budgets, list) and all(number(b) for b in budgets)):
        raise bad(f"state budgets={budgets!r} are not numbers")


def _check(path: Path, arrays: dict, meta: dict, problem: Any) -> None:
    """Every array and counter of a checkpoint against the space (a crafted file is refused)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {what}; the file is corrupt or not from this search — delete it")

    state = meta.get("state")
    if not isinstance(state, dict):
        raise bad("no search state")
    for k, ndim in _ARRAYS.items():
        if k in arrays and (arrays[k].ndim != ndim or arrays[k].dtype.kind not in "iuf"):
            raise bad(f"array {k} has shape {arrays[k].shape} / dtype {arrays[k].dtype}")
    missing = [k for k in _ARRAYS if k != "pop_X" and k not in arrays]
    if missing:
        raise bad(f"arrays {missing} are missing")
    sizes = np.asarray(problem.layout.sizes)
    n = len(arrays["archive_acc"])
    if len(arrays["archive_lat"]) != n or arrays["archive_X"].shape != (n, len(sizes)):
        raise bad("the archive's arrays do not match each other or the space")
    lat, acc = arrays["archive_lat"], arrays["archive_acc"]
    limit = state.get("max_latency")
    skipped = np.isnan(acc)  # accuracy is skipped for archs over the latency limit only
    if not np.isfinite(lat).all() or np.isinf(acc).any() or (skipped.any() and (limit is None or (lat[skipped] <= limit).any())):
        raise bad("the archive holds non-finite objectives")
    if (lat <= 0).any():
        raise bad("the archive holds latencies <= 0")
    for k in ("archive_X", "refine_expanded", "refine_walkers", "pop_X"):
        G = arrays.get(k)
        if G is None or not len(G):
            continue
        if G.shape[1] != len(sizes) or (G < 0).any() or (G >= sizes).any():
            raise bad(f"{k} holds genomes outside space {problem.space.name}")
    if state.get("phase") not in ("start", "nsga", "refine", "done"):
        raise bad(f"unknown phase {state.get('phase')!r}")
    if state["phase"] == "nsga" and "pop_X" not in arrays:
        raise bad("the population is missing")
    _check_meta(state, bad)
