"""Per-generation checkpoints of the NSGA-II search, so a killed run resumes where it stopped.

:class:`SearchCheckpoint` plugs into :func:`hwnas.search.nsga.run_search` (``checkpoint=``). After every
generation it writes, atomically (temp file + ``fsync`` + ``os.replace``), one pickle holding

* the pymoo algorithm's state (population, offspring, survival ranks, its ``numpy.random.Generator``,
  generation counter, termination) with the problem detached;
* the problem's archive (every distinct genome evaluated, its objectives, the feasible front,
  evaluation counters), so nothing is re-evaluated after a resume;
* the search history and the hypervolume reference point;
* a fingerprint of the search settings (space, seed, population, operators...).

On start, ``restore`` loads the file (if any), checks the fingerprint and puts the state back: the
rest of the run is then the same computation as an uninterrupted run, so the same seed gives the same
front. A checkpoint written for other settings is refused with a clear error (delete it or change
``search.checkpoint``); an unreadable one is reported, never silently replaced.

For tests and fault-injection drills: ``HWNAS_KILL_AFTER_GEN=k`` makes the process ``os._exit(137)``
right after the checkpoint of generation ``k`` is written (as ``kill -9`` would, no clean-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

from hwnas.predictors.assets import atomic_path
from hwnas.spaces.errors import UserError

FORMAT = 1
KILL_ENV = "HWNAS_KILL_AFTER_GEN"
_PROBLEM_STATE = ("_index", "_X", "_acc", "_lat", "_front", "n_evals", "predict_s")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be used; the message names the file and the fix."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able description (sorted keys, ``str`` for the rest)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_pickle(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())


class SearchCheckpoint:
    """Checkpoint file of one search run (see the module doc).

    ``path``: the pickle file. ``settings``: anything describing the run (hashed; a checkpoint from
    other settings is refused). ``every``: write every ``every`` generations (1 = each).
    """

    def __init__(self, path: str | os.PathLike, settings: Any = None, every: int = 1) -> None:
        self.path = Path(path)
        self.key = fingerprint(settings)
        self.every = max(1, int(every))
        self.resumed_from: int | None = None
        self.saved: list[int] = []

    # ------------------------------------------------------------------ run_search hooks
    def restore(self, algo: Any, problem: Any) -> dict | None:
        if not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                state = pickle.load(f)
        except Exception as exc:  # noqa: BLE001 - truncated / not a pickle
            raise CheckpointError(
                f"checkpoint {self.path} is unreadable ({type(exc).__name__}: {exc}); it was not overwritten. "
                "Delete it to start the search from scratch."
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {self.path} is not an hwnas search checkpoint (format {FORMAT}); delete it")
        if state.get("key") != self.key:
            raise CheckpointError(
                f"checkpoint {self.path} was written by a search with other settings (key {state.get('key')} != "
                f"{self.key}); delete it or use another run directory"
            )
        algo_state = state["algo"]
        algo_state["problem"] = problem
        algo.__dict__.update(algo_state)
        for k in _PROBLEM_STATE:
            setattr(problem, k, state["problem"][k])
        self.resumed_from = int(state["gen"])
        return {"gen": state["gen"], "history": state["history"], "hv_ref": tuple(state["hv_ref"])}

    def save(self, algo: Any, problem: Any, gen: int, history: list, hv_ref: tuple) -> None:
        if gen % self.every == 0 or not algo.has_next():
            problem.archive()  # compact the archive chunks
            algo_state = {k: v for k, v in algo.__dict__.items() if k != "problem"}
            state = {
                "format": FORMAT,
                "key": self.key,
                "gen": int(gen),
                "history": list(history),
                "hv_ref": tuple(hv_ref),
                "algo": algo_state,
                "problem": {k: getattr(problem, k) for k in _PROBLEM_STATE},
            }
            atomic_pickle(self.path, state)
            self.saved.append(int(gen))
        kill = os.environ.get(KILL_ENV)
        if kill and int(kill) == int(gen):
            os._exit(137)  # simulated kill -9 (no clean-up, no flush)

    def archive_if_stale(self) -> Path | None:
        """If the file holds a checkpoint of *other* settings, move it aside (``<name>.<key>.stale``) so
        this run starts fresh; returns the new path. Unreadable files are left for :meth:`restore` to
        report."""
        if not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                key = pickle.load(f).get("key")
        except Exception:  # noqa: BLE001
            return None
        if key == self.key:
            return None
        dest = self.path.with_name(f"{self.path.name}.{key}.stale")
        os.replace(self.path, dest)
        return dest

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
