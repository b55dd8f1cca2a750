"""FBNet space (as in HW-NAS-Bench / HELP): 22 searchable layers, each one of 9 candidate blocks.

Blocks: ``k3_e1, k3_e1_g2, k3_e3, k3_e6, k5_e1, k5_e1_g2, k5_e3, k5_e6, skip`` (kernel, expand ratio,
``_g2`` = grouped 1x1 convolutions with 2 groups, ``skip`` = identity / no layer). An arch is written
either as the space-separated block indices (``op_idx``, e.g. ``"7 8 1 ..."``) or names
(``"k5_e6 skip k3_e1_g2 ..."``); both parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import SpaceError, register_space
from .nasbench201 import CategoricalArchMixin, CategoricalSpace, _check_ops

FBNET_BLOCKS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
FBNET_LAYERS = 22


@dataclass(frozen=True)
class FBNetArch(CategoricalArchMixin):
    """An FBNet arch: the block name of each of the 22 layers. Immutable."""

    ops: tuple[str, ...]

    N_LAYERS: ClassVar[int] = FBNET_LAYERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", _check_ops("FBNetArch", self.ops, FBNET_BLOCKS, FBNET_LAYERS, "layer"))

    @property
    def op_idx(self) -> tuple[int, ...]:
        return tuple(FBNET_BLOCKS.index(o) for o in self.ops)

    def to_str(self) -> str:
        """Space-separated block indices, the ``op_idx`` format of the benchmark files."""
        return " ".join(str(i) for i in self.op_idx)

    @classmethod
    def from_str(cls, text: str) -> "FBNetArch":
        parts = [p for p in re.split(r"[\s,]+", str(text).strip().strip("[]")) if p]
        if len(parts) != FBNET_LAYERS:
            raise SpaceError(
                f"FBNet arch string has {len(parts)} entries; it needs {FBNET_LAYERS} block indices (0..8) "
                f"or names from {list(FBNET_BLOCKS)}, separated by spaces"
            )
        ops: list[Any] = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
        return cls(ops=tuple(ops))

    def to_dict(self) -> dict:
        return {"ops": list(self.ops)}

    @classmethod
    def from_dict(cls, obj: dict) -> "FBNetArch":
        if not isinstance(obj, dict) or len(obj) != 1 or not ({"ops", "op_idx"} & set(obj)):
            raise SpaceError("an FBNet arch dict is {'ops': [22 block names]} or {'op_idx': [22 ints]}")
        v = obj.get("ops", obj.get("op_idx"))
        return cls.from_str(v) if isinstance(v, str) else cls(ops=tuple(v))



class FBNetSpace(CategoricalSpace):
    """FBNet: 22 layers x 9 candidate blocks (9^22 archs)."""

    name = "fbnet"
    arch_type = FBNetArch
    choices = FBNET_BLOCKS
    n_positions = FBNET_LAYERS
    position_name = "layer"
    #: layers per stage (same resolution and width), FBNet's macro structure
    stages = (1, 4, 4, 4, 4, 4, 1)

    def __init__(self, name: str | None = None) -> None:
        if name:
            self.name = name
        super().__init__()


@register_space("fbnet")
def _fbnet(**kw: Any) -> FBNetSpace:
    if kw.keys() - {"name"}:
        raise SpaceError(f"space fbnet takes no options; got {sorted(kw)}")
    return FBNetSpace(**kw)
