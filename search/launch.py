"""The console scripts' entry points.

Each command's module imports numpy, torch or hydra at the top, which takes a few tenths of a second.
A Ctrl-C in that time would end in Python's KeyboardInterrupt traceback from deep inside an import; the
scripts start here instead, a module that imports nothing heavy (``hwnas.search`` loads its submodules
lazily), so that an interrupt during start-up is the same one line and exit status 130 as an interrupt
at any later moment. (SIGTERM during start-up keeps its default action: the process ends silently.)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

#: command -> module whose ``main()`` runs it
COMMANDS = {
    "hwnas-search": "hwnas.search.cli",
    "hwnas-measure": "hwnas.predictors.measure.cli",
    "hwnas-monotonicity": "hwnas.predictors.monotonicity",
    "hwnas-export": "hwnas.supernet.export_cli",
    "hwnas-train": "hwnas.supernet.train",
    "hwnas-profile": "hwnas.search.profile_cli",
    "hwnas-pipeline": "hwnas.search.pipeline.cli",
}


def run(prog: str) -> Any:
    """Import ``prog``'s module and run its ``main()``; an interrupt while importing is one line, exit 130."""
    try:
        main = importlib.import_module(COMMANDS[prog]).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)  # the words of hwnas.spaces.errors._interrupted
        raise SystemExit(130) from None
    return main()


def _entry(prog: str) -> Callable[[], Any]:
    def main() -> Any:
        return run(prog)

    main.__qualname__ = main.__name__ = prog.removeprefix("hwnas-")
    main.__doc__ = f"``{prog}``"
    return main


search = _entry("hwnas-search")
measure = _entry("hwnas-measure")
monotonicity = _entry("hwnas-monotonicity")
export = _entry("hwnas-export")
train = _entry("hwnas-train")
profile = _entry("hwnas-profile")
pipeline = _entry("hwnas-pipeline")
