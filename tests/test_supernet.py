"""Tests of the supernet package: compat shim, static nets, elastic supernets, extraction, loading."""

from __future__ import annotations

import torch

from hwnas.supernet._compat import ensure_torchvision, import_timm


def test_compat_timm_builds_a_model():
    tv = ensure_torchvision()
    assert ensure_torchvision() is tv  # idempotent
    timm = import_timm()
    m = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7)
    # the schemas exist exactly once and the fallback nms kernel suppresses the overlapping box
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
