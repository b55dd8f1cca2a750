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


# ----------------------------------------------------------------------------- static networks
import pytest  # noqa: E402

from hwnas.spaces import create_space  # noqa: E402
from hwnas.supernet.static import build_static  # noqa: E402


@pytest.mark.parametrize("name", ["ofa_mbv3_w10", "ofa_mbv3_w12", "ofa_proxyless_w13", "proxyless_mobile"])
def test_build_static_structure_matches_layers(name):
    space = create_space(name)
    arch = space.sample(1, 3)[0]
    net = build_static(space, arch, n_classes=10).eval()
    specs = [L for L in space.layers(arch) if L.kind == "mbconv"]
    assert len(net.blocks) == len(specs) == sum(arch.d) + 1
    sd = net.state_dict()
    for i, L in enumerate(specs):
        p = f"blocks.{i}.conv."
        assert sd[p + "depth_conv.conv.weight"].shape == (L.mid, 1, L.kernel, L.kernel)
        assert sd[p + "point_linear.conv.weight"].shape == (L.out_shape[2], L.mid, 1, 1)
        assert (p + "inverted_bottleneck.conv.weight" in sd) == (L.expand != 1)
        assert (p + "depth_conv.se.fc.reduce.weight" in sd) == L.se
        assert (net.blocks[i].shortcut is not None) == L.idskip
    eps = 1e-5 if name.startswith("ofa_mbv3") else 1e-3
    assert net.first_conv.bn.eps == eps
    with torch.no_grad():
        y = net(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # MobileNetV3 mixes features after pooling without BN; ProxylessNAS before pooling with BN
    assert ("feature_mix_layer.bn.weight" in sd) == (not name.startswith("ofa_mbv3"))
    assert ("final_expand_layer.conv.weight" in sd) == name.startswith("ofa_mbv3")
