"""The one place that makes torchvision / timm importable next to a mismatched torch build.

Some environments pair a CPU build of torch with a CUDA build of torchvision (or the other way round).
torchvision's compiled extension then fails to load, its C++ operators are never registered, and
``import torchvision`` dies in ``torchvision/_meta_registrations.py`` with
``operator torchvision::nms does not exist`` (timm imports torchvision, so timm dies too).

:func:`ensure_torchvision` declares the schemas of the two operators that torchvision registers fake
kernels for at import time (``torchvision::nms`` and ``torchvision::qnms``) — only when they are
missing, so a healthy install is left untouched — and adds a plain-torch CPU kernel for ``nms`` so that
``torch.ops.torchvision.nms`` still computes (``torchvision.ops.nms`` itself refuses to run without the
compiled extension). Everything in hwnas that needs torchvision or timm goes through
:func:`ensure_torchvision` / :func:`import_timm`.
"""

from __future__ import annotations

import threading
from types import ModuleType

import torch

_LOCK = threading.Lock()
_LIB: "torch.library.Library | None" = None  # kept alive: dropping it would unregister the schemas

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _op_exists(name: str) -> bool:
    return bool(torch._C._jit_get_schemas_for_operator(f"torchvision::{name}"))


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (fallback kernel; boxes are x1, y1, x2, y2)."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i_pos in range(len(order)):
        i = order[i_pos]
        if suppressed[i_pos]:
            continue
        keep.append(int(i))
        rest = order[i_pos + 1 :]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[i_pos + 1 :] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def ensure_torchvision() -> ModuleType:
    """Import torchvision, first declaring its missing operator schemas if its extension did not load.

    Idempotent and thread-safe; a no-op on a consistent torch/torchvision install.
    """
    global _LIB
    with _LOCK:
        missing = [name for name in _SCHEMAS if not _op_exists(name)]
        if missing:
            if _LIB is None:
                _LIB = torch.library.Library("torchvision", "FRAGMENT")
            for name in missing:
                _LIB.define(_SCHEMAS[name])
            if "nms" in missing:
                _LIB.impl("nms", _nms_cpu, "CPU")
        import torchvision  # noqa: WPS433 (import after the schemas exist)

    return torchvision


def import_timm() -> ModuleType:
    """``import timm`` after :func:`ensure_torchvision`; returns the module."""
    ensure_torchvision()
    import timm

    return timm


__all__ = ["ensure_torchvision", "import_timm"]
