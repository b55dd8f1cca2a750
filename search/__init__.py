"""Search: NSGA-II (pymoo's, on numpy arrays; or pymoo itself) over a space's genome with accuracy and latency
predictors, then refinement of the front.

``from hwnas.search import run_search`` -- see :mod:`hwnas.search.nsga`; the hydra CLI is
:mod:`hwnas.search.cli` (``hwnas-search``). Submodules are imported lazily, so importing this package
is cheap.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "run_search": "nsga",
    "SearchResult": "nsga",
    "SearchInterrupted": "nsga",
    "SearchCheckpoint": "checkpoint",
    "ArchProblem": "problem",
    "hypervolume": "problem",
    "pareto_mask": "problem",
    "write_results": "results",
    "load_front": "results",
    "read_front": "results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
