"""Standalone (static) networks of MBConv spaces, built from ``space.layers(arch)``.

:func:`build_static` returns a plain ``nn.Module`` whose module and tensor names are those of the
networks that Once-for-All's ``get_active_subnet()`` returns (``MobileNetV3`` / ``ProxylessNASNets``):

* ``first_conv`` (``conv``, ``bn``, ``act``),
* ``blocks[i]`` = residual block ``{conv: MBConv{inverted_bottleneck, depth_conv (+ se), point_linear},
  shortcut}`` — ``blocks[0]`` is the fixed first block (expand 1, no ``inverted_bottleneck``),
* MobileNetV3: ``final_expand_layer`` → global pool → ``feature_mix_layer`` (no BN) → ``classifier``;
  ProxylessNAS: ``feature_mix_layer`` (with BN) → global pool → ``classifier``.

The same network is what latency measurement times and what export writes out. BN eps/momentum are
OFA's (MobileNetV3: 1e-5 / 0.1; ProxylessNAS: 1e-3 / 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hwnas.spaces.mbconv import LayerSpec, MBConvSpace

from .layers import ConvLayer, LinearLayer, MBConvLayer, ResidualBlock, init_weights, set_bn_param

_CONV_NAMES = {"first_conv": "first_conv", "final_expand": "final_expand_layer", "feature_mix": "feature_mix_layer"}


def bn_param(space: Any) -> tuple[float, float]:
    """``(momentum, eps)`` of OFA's BN layers for the space's family."""
    family = getattr(space, "family", "")
    return (0.1, 1e-5) if family == "ofa_mbv3" else (0.1, 1e-3)


def head_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layers after the last block, up to the classifier input: final expand (MobileNetV3), then
    global pooling and the feature-mix conv, in the order of ``net.mix_after_pool``."""
    if net.final_expand_layer is not None:
        x = net.final_expand_layer(x)
    if net.mix_after_pool:
        x = x.mean((2, 3), keepdim=True)
        if net.feature_mix_layer is not None:
            x = net.feature_mix_layer(x)
    else:
        if net.feature_mix_layer is not None:
            x = net.feature_mix_layer(x)
        x = x.mean((2, 3), keepdim=True)
    return torch.flatten(x, 1)


class StaticMBConvNet(nn.Module):
    """A concrete MobileNetV3 / ProxylessNAS network (see the module doc for the layout)."""

    def __init__(
        self,
        first_conv: nn.Module,
        blocks: list[nn.Module],
        final_expand_layer: nn.Module | None,
        feature_mix_layer: nn.Module | None,
        classifier: nn.Module,
        mix_after_pool: bool,
    ) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        if final_expand_layer is not None:
            self.final_expand_layer = final_expand_layer
        else:
            self.final_expand_layer = None
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier
        self.mix_after_pool = mix_after_pool
        self.arch: Any = None  # set by build_static / get_active_subnet
        self.space_name: str = ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the classifier input)."""
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return head_features(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _conv_from_spec(L: LayerSpec) -> ConvLayer:
    return ConvLayer(L.in_shape[2], L.out_shape[2], L.kernel, L.stride, use_bn=L.bn, act=L.act)


def _mbconv_from_spec(L: LayerSpec) -> ResidualBlock:
    cin, cout = L.in_shape[2], L.out_shape[2]
    layer = MBConvLayer(cin, cout, L.kernel, L.stride, L.expand, L.mid, L.act, L.se)
    return ResidualBlock(layer, shortcut=L.idskip)


def build_static(
    space: MBConvSpace, arch: Any, n_classes: int | None = None, dropout: float = 0.1, init: bool = True
) -> StaticMBConvNet:
    """A standalone network for ``arch`` (validated by ``space``), randomly initialised (OFA's init).

    ``n_classes`` defaults to the space's; ``dropout`` is the classifier's dropout rate (OFA: 0.1).
    """
    if not isinstance(space, MBConvSpace):
        raise TypeError(f"space: build_static needs an MBConv space (OFA-MobileNetV3 / ProxylessNAS); got {type(space).__name__}")
    a = space.validate(arch)
    specs = space.layers(a)
    convs: dict[str, nn.Module] = {}
    blocks: list[nn.Module] = []
    classifier = None
    pooled = False
    mix_after_pool = False
    for L in specs:
        if L.kind == "conv":
            if L.name not in _CONV_NAMES:
                raise ValueError(f"layer {L.name!r} of space {space.name} has no static counterpart")
            convs[_CONV_NAMES[L.name]] = _conv_from_spec(L)
            if L.name == "feature_mix":
                mix_after_pool = pooled
        elif L.kind == "mbconv":
            blocks.append(_mbconv_from_spec(L))
        elif L.kind == "pool":
            pooled = True
        elif L.kind == "linear":
            n_out = L.out_shape[2] if n_classes is None else int(n_classes)
            classifier = LinearLayer(L.in_shape[2], n_out, dropout=dropout)
        else:
            raise ValueError(f"layer kind {L.kind!r} ({L.name}) is not supported by build_static")
    if classifier is None or "first_conv" not in convs:
        raise ValueError(f"space {space.name} did not describe a first conv and a classifier")
    net = StaticMBConvNet(
        convs["first_conv"],
        blocks,
        convs.get("final_expand_layer"),
        convs.get("feature_mix_layer"),
        classifier,
        mix_after_pool=mix_after_pool,
    )
    if init:
        init_weights(net)
    momentum, eps = bn_param(space)
    set_bn_param(net, momentum, eps)
    net.arch = a
    net.space_name = space.name
    return net


__all__ = ["StaticMBConvNet", "build_static", "bn_param"]
