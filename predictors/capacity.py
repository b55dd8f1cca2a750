"""A capacity proxy for spaces without accuracy data (NAS-Bench-201 and FBNet latency studies)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from hwnas.spaces.errors import UserError

from .base import Predictor

NB201_PARAMS = {"none": 0.0, "skip_connect": 0.0, "avg_pool_3x3": 0.0, "nor_conv_1x1": 1.0, "nor_conv_3x3": 9.0}


class CapacityAccuracy(Predictor):
    """``log1p(relative parameter count)``: a capacity proxy, NOT an accuracy estimate.

    NAS-Bench-201: conv 3x3 = 9, conv 1x1 = 1, pooling/skip/none = 0 units per edge; a cell whose
    output is cut off from its input (every path through a ``none``) scores 0. FBNet: per block
    ``e * (2 / groups) + e * k^2 / 64`` (the two 1x1 convs and the depthwise conv at 64 channels),
    ``skip`` = 0. Monotone in model size, which tends to rank accuracy in these spaces; reports say so.
    """

    metric = "capacity"

    def __init__(self, space: Any) -> None:
        self.space = space
        self.name = getattr(space, "base", space).name
        if self.name not in ("nasbench201", "fbnet"):
            raise UserError(f"accuracy=capacity knows nasbench201 and fbnet, not {self.name!r}; choose another accuracy")

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        out = []
        for a in archs:
            if self.name == "nasbench201":
                ops = a.ops  # edges (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2)
                p = sum(NB201_PARAMS[o] for o in ops)
                r1 = ops[0] != "none"
                r2 = ops[1] != "none" or (r1 and ops[2] != "none")
                r3 = ops[3] != "none" or (r1 and ops[4] != "none") or (r2 and ops[5] != "none")
                out.append(math.log1p(p) + 0.1 if r3 else 0.0)
            else:
                p = 0.0
                for o in a.ops:
                    if o != "skip":
                        k, e = int(o[1]), int(o.split("_")[1][1:])
                        p += e * 2.0 / (2 if o.endswith("_g2") else 1) + e * k * k / 64.0
                out.append(math.log1p(p))
        return np.asarray(out, dtype=float)
