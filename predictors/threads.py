"""How many CPU threads torch uses inside a block of code, and torch's random state inside one.

Small networks built, traced or trained on a small or shared machine run many times slower with torch's
default thread count, because the threads wait for each other; hwnas's measuring, MLP training and
smoke training run with a set count and put the old one back afterwards.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from typing import Iterator


@contextmanager
def torch_threads(n: int | None = 1) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads inside the block (``None`` or 0: leave the setting alone)."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def limit_threads(n: int | None = 1) -> Iterator[None]:
    """Run with at most ``n`` threads in the BLAS libraries (and in torch, when it is already loaded);
    restored afterwards. Small matrix work repeated many times (the search's batches, the adaptation's
    evidence grid) runs several times slower on a shared machine when BLAS starts threads for it."""
    if not n:
        yield
        return
    n = int(n)
    torch = sys.modules.get("torch")
    restore = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits

            ctx = threadpool_limits(limits=n)
        except Exception:  # noqa: BLE001 - threadpoolctl failing: leave BLAS alone
            ctx = nullcontext()
        with ctx:
            yield
    finally:
        if torch is not None and restore is not None:
            torch.set_num_threads(restore)


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global random generator seeded with ``seed``, and the caller's generator state
    put back afterwards (a library call that seeds torch must not reset the caller's random stream)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield
