"""Elastic (weight-sharing) MobileNetV3 / ProxylessNAS supernets, driven by a space's arch type.

``ElasticMBConvNet(space)`` builds the Once-for-All supernet of an MBConv space: the fixed stem, first
block and head of the space, and ``LAYOUT[u]`` elastic MBConv layers per unit ``u`` with every kernel
size and expand ratio of the space family (OFA: k in {3, 5, 7}, e in {3, 4, 6}). With the default
spaces the state dict has exactly the tensor names and shapes of the official OFA checkpoints
``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2`` and ``ofa_proxyless_d234_e346_k357_w1.3`` (checked against
:mod:`hwnas.supernet.ofa_keys` in the tests).

* ``net.set_active(arch)``: kernel/expand per slot, depth per unit (the first ``d`` layers of a unit run);
  any input resolution works (``arch.r`` is only what the data pipeline should feed).
* ``net.get_active_subnet(arch)``: a standalone :class:`~hwnas.supernet.static.StaticMBConvNet` with the
  weights copied (kernel crop/transform, channel and BN slices) whose outputs equal the supernet's.
* ``net.re_organize_middle_weights(stage)``: importance sorting of the middle channels (training).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from hwnas.spaces import create_space
from hwnas.spaces.base import SpaceError
from hwnas.spaces.mbconv import MBConvArch, MBConvSpace

from .layers import (
    ConvLayer,
    ElasticMBConvLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    init_weights,
    set_bn_param,
)
from .static import StaticMBConvNet, bn_param, head_features

#: official OFA checkpoint name -> space name
OFA_CHECKPOINTS = {
    "ofa_mbv3_d234_e346_k357_w1.0": "ofa_mbv3_w10",
    "ofa_mbv3_d234_e346_k357_w1.2": "ofa_mbv3_w12",
    "ofa_proxyless_d234_e346_k357_w1.3": "ofa_proxyless_w13",
}


class ElasticMBConvNet(nn.Module):
    """Once-for-All supernet of an MBConv space (see the module doc)."""

    def __init__(
        self,
        space: MBConvSpace | str,
        n_classes: int | None = None,
        dropout: float = 0.1,
        kernel_choices: Sequence[int] | None = None,
        expand_choices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(space, str):
            space = create_space(space)
        if not isinstance(space, MBConvSpace):
            raise TypeError(f"space: the supernet needs an MBConv space; got {type(space).__name__}")
        self.space = space
        self.arch_type = space.arch_type
        self.layout = tuple(space.arch_type.LAYOUT)
        # the supernet always holds the family's full choice sets (a reduced space is a subset of it)
        self.kernel_choices = sorted(set(kernel_choices or ()) | set(space.default_kernels) | set(space.kernel_choices))
        self.expand_choices = sorted(set(expand_choices or ()) | set(space.default_expands) | set(space.expand_choices))
        self.n_classes = int(space.n_classes if n_classes is None else n_classes)

        r0 = max(space.resolutions)
        first = space.first_layers(r0)
        stem, fb = first[0], first[1]
        self.first_conv = ConvLayer(stem.in_shape[2], stem.out_shape[2], stem.kernel, stem.stride, act=stem.act)
        blocks: list[nn.Module] = [
            ResidualBlock(
                MBConvLayer(fb.in_shape[2], fb.out_shape[2], fb.kernel, fb.stride, 1, fb.mid, fb.act, fb.se),
                shortcut=fb.idskip,
            )
        ]
        h, w, c = fb.out_shape
        self.block_group_info: list[list[int]] = []
        for u, n in enumerate(self.layout):
            st = space.stages[u]
            idx = []
            for j in range(n):
                stride = st.stride if j == 0 else 1
                layer = ElasticMBConvLayer(c, st.width, self.kernel_choices, self.expand_choices, stride, st.act, st.se)
                idx.append(len(blocks))
                blocks.append(ResidualBlock(layer, shortcut=(stride == 1 and c == st.width)))
                if stride > 1:
                    h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
                c = st.width
            self.block_group_info.append(idx)
        self.blocks = nn.ModuleList(blocks)
        self._slot_unit = [u for u, n in enumerate(self.layout) for _ in range(n)]
        self._slot_pos = [j for n in self.layout for j in range(n)]

        self.final_expand_layer = None
        self.feature_mix_layer = None
        self.mix_after_pool = False
        pooled = False
        for L in space.final_layers((h, w, c)):
            if L.kind == "conv":
                m = ConvLayer(L.in_shape[2], L.out_shape[2], L.kernel, L.stride, use_bn=L.bn, act=L.act)
                if L.name == "final_expand":
                    self.final_expand_layer = m
                elif L.name == "feature_mix":
                    self.feature_mix_layer = m
                    self.mix_after_pool = pooled
                else:
                    raise ValueError(f"final layer {L.name!r} of space {space.name} is not supported")
            elif L.kind == "pool":
                pooled = True
            elif L.kind == "linear":
                self.classifier = LinearLayer(L.in_shape[2], self.n_classes, dropout=dropout)
        init_weights(self)
        self.bn_momentum, self.bn_eps = bn_param(space)
        set_bn_param(self, self.bn_momentum, self.bn_eps)
        self.runtime_depth = list(self.layout)
        self.active_arch: MBConvArch | None = None
        self.set_active(self.max_arch())

    # ------------------------------------------------------------------ archs
    def _arch(self, ks: Sequence[int], e: Sequence[int], d: Sequence[int], r: int) -> MBConvArch:
        return self.arch_type(ks=tuple(ks), e=tuple(e), d=tuple(d), r=int(r))

    def max_arch(self, r: int | None = None) -> MBConvArch:
        """The largest subnet (max kernel, expand and depth; resolution ``r`` or the space's largest)."""
        n = sum(self.layout)
        return self._arch([max(self.kernel_choices)] * n, [max(self.expand_choices)] * n, self.layout,
                          max(self.space.resolutions) if r is None else r)

    def min_arch(self, r: int | None = None) -> MBConvArch:
        """The smallest subnet of the space (min kernel, expand and depth per unit)."""
        n = sum(self.layout)
        d = [min(ch) for ch in self.space.depth_choices]
        return self._arch([min(self.kernel_choices)] * n, [min(self.expand_choices)] * n, d,
                          min(self.space.resolutions) if r is None else r)

    def resolve(self, arch: Any) -> MBConvArch:
        """Canonical arch: dicts / strings are validated by the space; arch objects of the right type are
        accepted as they are (the supernet checks kernels and expands itself)."""
        if isinstance(arch, self.arch_type):
            return arch
        if isinstance(arch, MBConvArch):
            raise SpaceError(f"arch is a {type(arch).__name__}; this supernet takes {self.arch_type.__name__}")
        return self.space.validate(arch)

    def set_active(self, arch: Any) -> MBConvArch:
        """Activate subnet ``arch`` (an arch, a dict, or a JSON / compact string); returns the canonical arch."""
        a = self.resolve(arch)
        for s, k in enumerate(a.ks):
            if self._slot_pos[s] >= a.d[self._slot_unit[s]]:
                continue  # inactive slot: leave the layer as it is
            try:
                self.blocks[1 + s].conv.set_active(k, a.e[s])
            except ValueError as exc:
                raise SpaceError(f"slot {s}: {exc}") from None
        self.runtime_depth = list(a.d)
        self.active_arch = a
        return a

    def set_max(self) -> MBConvArch:
        return self.set_active(self.max_arch())

    def active_block_indices(self) -> list[int]:
        out = [0]
        for g, d in zip(self.block_group_info, self.runtime_depth):
            out.extend(g[:d])
        return out

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        x = self.blocks[0](x)
        for g, d in zip(self.block_group_info, self.runtime_depth):
            for i in g[:d]:
                x = self.blocks[i](x)
        return head_features(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def get_active_subnet(self, arch: Any = None) -> StaticMBConvNet:
        """Standalone static network of ``arch`` (default: the active subnet) with copied weights.

        The supernet's active subnet is restored afterwards."""
        previous = self.active_arch
        a = self.set_active(arch) if arch is not None else self.active_arch
        try:
            blocks: list[nn.Module] = [copy.deepcopy(self.blocks[0])]
            for i in self.active_block_indices()[1:]:
                src = self.blocks[i]
                blocks.append(ResidualBlock(src.conv.get_active_layer(), shortcut=src.shortcut is not None))
            net = StaticMBConvNet(
                copy.deepcopy(self.first_conv),
                blocks,
                copy.deepcopy(self.final_expand_layer),
                copy.deepcopy(self.feature_mix_layer),
                copy.deepcopy(self.classifier),
                mix_after_pool=self.mix_after_pool,
            )
        finally:
            if arch is not None and previous is not None:
                self.set_active(previous)
        net.arch = a
        net.space_name = self.space.name
        net.train(self.training)
        return net

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort every elastic layer's middle channels by importance (OFA, before/while training expand)."""
        for block in self.blocks[1:]:
            block.conv.re_organize_middle_weights(expand_ratio_stage)

    def extra_repr(self) -> str:
        return f"space={self.space.name}, kernels={self.kernel_choices}, expands={self.expand_choices}, layout={self.layout}"


def OFAMobileNetV3(width_mult: float = 1.2, n_classes: int = 1000, dropout: float = 0.1, **space_kw: Any) -> ElasticMBConvNet:
    """The OFA MobileNetV3 supernet (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2`` layout)."""
    name = {1.0: "ofa_mbv3_w10", 1.2: "ofa_mbv3_w12"}.get(float(width_mult))
    if name is None:
        raise SpaceError(f"width_mult={width_mult} is not allowed; the OFA MobileNetV3 supernets have width 1.0 or 1.2")
    return ElasticMBConvNet(create_space(name, n_classes=n_classes, **space_kw), dropout=dropout)


def OFAProxylessNASNets(width_mult: float = 1.3, n_classes: int = 1000, dropout: float = 0.1, **space_kw: Any) -> ElasticMBConvNet:
    """The OFA ProxylessNAS supernet (``ofa_proxyless_d234_e346_k357_w1.3`` layout for width 1.3)."""
    return ElasticMBConvNet(
        create_space("ofa_proxyless_w13", width_mult=width_mult, n_classes=n_classes, **space_kw), dropout=dropout
    )


def supernet_for_checkpoint(name: str, n_classes: int = 1000) -> ElasticMBConvNet:
    """The supernet whose layout matches the official checkpoint ``name`` (see :data:`OFA_CHECKPOINTS`)."""
    if name not in OFA_CHECKPOINTS:
        raise SpaceError(f"checkpoint={name!r} is unknown; official OFA supernets: {sorted(OFA_CHECKPOINTS)}")
    return ElasticMBConvNet(create_space(OFA_CHECKPOINTS[name], n_classes=n_classes))


__all__ = ["ElasticMBConvNet", "OFAMobileNetV3", "OFAProxylessNASNets", "OFA_CHECKPOINTS", "supernet_for_checkpoint"]
