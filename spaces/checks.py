"""One checker for every command's scalar settings: whole numbers, numbers in a range, flags and choices.

Each failure is one error line in one style, naming the setting as the user spells it (``search.pop_size``,
``--top``, ``rules.z``) and the fix::

    search.pop_size='abc' must be an integer >= 4; e.g. search.pop_size=100
    --calib-images=0 must be an integer >= 1 (a number of images); e.g. --calib-images=256
    search.crossover.prob=2 must be a probability in [0, 1]; e.g. search.crossover.prob=0.9
    overlap='yes' must be true or false
    search.engine='jax' is unknown; allowed values: ['numpy', 'pymoo']

The caller passes its own error class (a :class:`~hwnas.spaces.errors.UserError` subclass), so that each
command's ``except`` clause and one-line report stay as they are.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import UserError

_NO_EXAMPLE = object()


def is_whole(v: Any) -> bool:
    """An integer (Python's or numpy's), not a bool; a float is not one, even ``100.0`` (the settings are
    used as they are after the check, and ``range(100.0)`` fails)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(float(v)))


def _tail(field: str, null: bool, what: str | None, example: Any) -> str:
    s = " or null" if null else ""
    if what:
        s += f" ({what})"
    if example is not _NO_EXAMPLE and example is not None:
        s += f"; e.g. {field}={example}"
    return s


def check_int(v: Any, field: str, lo: int | None = 0, hi: int | None = None, *, example: Any = _NO_EXAMPLE,
              null: bool = False, what: str | None = None, error: type = UserError) -> int | None:
    """``v`` as an ``int`` in ``[lo, hi]`` (either bound ``None``: open), ``None`` if ``null`` allows it;
    anything else is one ``error`` naming ``field``."""
    if v is None and null:
        return None
    if is_whole(v) and (lo is None or v >= lo) and (hi is None or v <= hi):
        return int(v)
    rng = (f" in [{lo}, {hi}]" if lo is not None and hi is not None else f" >= {lo}" if lo is not None
           else f" <= {hi}" if hi is not None else "")
    raise error(f"{field}={v!r} must be an integer{rng}{_tail(field, null, what, example)}")


def check_number(v: Any, field: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, example: Any = _NO_EXAMPLE, null: bool = False, desc: str | None = None,
                 what: str | None = None, error: type = UserError) -> float | None:
    """``v`` as a finite ``float`` between ``lo`` and ``hi`` (``lo_open``/``hi_open``: the bound itself
    excluded), ``None`` if ``null`` allows it. ``desc`` replaces "a finite number in ..." in the message
    (e.g. "a probability in [0, 1]"); ``what`` is said in brackets after it, as in :func:`check_int`."""
    if v is None and null:
        return None
    if is_number(v):
        x = float(v)
        if ((lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi))):
            return x
    if desc is None:
        if lo is not None and hi is not None:
            desc = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            desc = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            desc = f"a finite number {'<' if hi_open else '<='} {hi:g}"
        else:
            desc = "a finite number"
    raise error(f"{field}={v!r} must be {desc}{_tail(field, null, what, example)}")


def check_bool(v: Any, field: str, *, error: type = UserError) -> bool:
    """``v`` as a ``bool`` (true/false in a config; not 0/1 or "yes")."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise error(f"{field}={v!r} must be true or false")


def check_choice(v: Any, field: str, choices: Sequence[Any], *, error: type = UserError) -> Any:
    """``v`` if it is one of ``choices``; else one ``error`` listing them."""
    if any(v == c and type(v) is type(c) for c in choices):
        return v
    raise error(f"{field}={v!r} is unknown; allowed values: {list(choices)}")
