"""What the benchmark scripts share with the commands: bad input is one line (``python benchmarks/<script>:
error: ...``, exit 2), Ctrl-C one line (exit 130), and counts are checked by argparse before any work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo`` (a count of seeds, samples, images ...)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be an integer >= {lo}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def run(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` as the commands run theirs (:func:`hwnas.spaces.errors.cli_errors`)."""
    from hwnas.spaces.errors import cli_errors

    with cli_errors(f"python benchmarks/{Path(sys.argv[0]).name}"):
        rc = main()
    raise SystemExit(rc or 0)
