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

import numpy as np

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
    #: output channels and stride of the first layer of each stage (ImageNet 224 input, the stem
    #: gives 16 channels at 112x112)
    stage_widths = (16, 24, 32, 64, 112, 184, 352)
    stage_strides = (1, 2, 2, 2, 1, 2, 1)
    stem = (16, 112)

    def __init__(self, name: str | None = None) -> None:
        if name:
            self.name = name
        super().__init__()

    def layer_shapes(self) -> list[tuple[int, int, int, int, int]]:
        """``(in_channels, out_channels, stride, in_size, out_size)`` of each of the 22 layers."""
        c, hw = self.stem
        out = []
        for n, width, stride in zip(self.stages, self.stage_widths, self.stage_strides):
            for i in range(n):
                s = stride if i == 0 else 1
                ho = (hw - 1) // s + 1
                out.append((c, width, s, hw, ho))
                c, hw = width, ho
        return out

    def op_costs(self) -> np.ndarray:
        """Per layer and block: inverted residual ``1x1 (groups g) -> kxk depthwise -> 1x1 (groups g)``
        with expansion e; ``skip`` is the identity, or a strided 1x1 projection where the layer changes
        width or resolution."""
        out = np.zeros((self.n_positions, len(self.choices), len(self.COST_NAMES)))
        for pos, (ci, co, s, hi, ho) in enumerate(self.layer_shapes()):
            for j, name in enumerate(self.choices):
                if name == "skip":
                    if ci == co and s == 1:
                        continue
                    out[pos, j] = (ci * co * ho * ho, 0, ci * hi * hi + co * ho * ho, 1, ci * co)
                    continue
                m = re.fullmatch(r"k(\d)_e(\d)(?:_g(\d))?", name)
                k, e, g = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
                mid = e * ci
                pw = (ci * mid * hi * hi + mid * co * ho * ho) / g
                dw = k * k * mid * ho * ho
                act = ci * hi * hi + mid * hi * hi + mid * ho * ho + co * ho * ho
                params = (ci * mid + mid * co) / g + k * k * mid
                out[pos, j] = (pw, dw, act, 3, params)
        return out


@register_space("fbnet")
def _fbnet(**kw: Any) -> FBNetSpace:
    if kw.keys() - {"name"}:
        raise SpaceError(f"space fbnet takes no options; got {sorted(kw)}")
    return FBNetSpace(**kw)
