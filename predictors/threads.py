"""How many CPU threads torch uses inside a block of code.

Small networks built, traced or trained on a small or shared machine run many times slower with torch's
default thread count, because the threads wait for each other; hwnas's measuring, MLP training and
smoke training run with a set count and put the old one back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
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
