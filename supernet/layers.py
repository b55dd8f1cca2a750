"""Building blocks of the static networks and of the elastic (weight-sharing) supernets.

Module and tensor names follow Once-for-All so that state dicts are interchangeable with OFA's:

* static layers (``ConvLayer``: ``conv``/``bn``/``act``; ``MBConvLayer``: ``inverted_bottleneck``,
  ``depth_conv`` (+ ``se.fc.reduce``/``se.fc.expand``), ``point_linear``; ``ResidualBlock``:
  ``conv``/``shortcut``; ``LinearLayer``: ``dropout``/``linear``) are what OFA's ``get_active_subnet()``
  returns;
* elastic ops wrap the full-size torch module one level deeper (``ElasticConv2d.conv``,
  ``ElasticBatchNorm2d.bn``, ``ElasticDepthwiseConv2d.conv`` + ``7to5_matrix``/``5to3_matrix``), which is
  where OFA's supernet checkpoints keep them (``...depth_conv.conv.conv.weight``, ``...bn.bn.weight``).

Elastic semantics (as Once-for-All): the kernel of a depthwise conv is the centre of the largest kernel,
passed through learned ``k x k`` transformation matrices (7→5, then 5→3); the expanded ("middle")
channels are the leading ones (``re_organize_middle_weights`` sorts them by importance during training);
BN layers use the leading slice of their parameters and running statistics.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.spaces.mbconv import make_divisible

SE_REDUCTION = 4
CHANNEL_DIVISIBLE = 8


# ============================================================================ helpers
def build_act(name: str | None) -> nn.Module | None:
    """Activation module by OFA name (``relu``, ``relu6``, ``h_swish``, ``h_sigmoid``; ``none``/None → None)."""
    if name in (None, "none", ""):
        return None
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "h_swish":
        return nn.Hardswish()
    if name == "h_sigmoid":
        return nn.Hardsigmoid()
    raise ValueError(f"act={name!r} is unknown; allowed activations: relu, relu6, h_swish, h_sigmoid, none")


def se_mid_channels(channels: int) -> int:
    """Hidden width of the squeeze-and-excitation module of a ``channels``-wide layer (OFA rule)."""
    return make_divisible(channels // SE_REDUCTION, CHANNEL_DIVISIBLE)


def middle_channels(in_channels: int, expand: float) -> int:
    """Expanded channels of an MBConv layer (OFA rule: ``make_divisible(round(c * e), 8)``)."""
    return make_divisible(round(in_channels * expand), CHANNEL_DIVISIBLE)


def sub_kernel_range(kernel: int, sub: int) -> tuple[int, int]:
    """``[start, end)`` of the centred ``sub x sub`` window of a ``kernel x kernel`` filter."""
    c, r = kernel // 2, sub // 2
    return c - r, c + r + 1


def set_bn_param(net: nn.Module, momentum: float | None, eps: float) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
            m.eps = eps


# ============================================================================ static layers
class ConvLayer(nn.Module):
    """Conv (+ BN) (+ activation), OFA's ``ConvLayer`` with ``ops_order="weight_bn_act"``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        use_bn: bool = True,
        act: str | None = "relu",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=bias)
        if use_bn:
            self.bn = nn.BatchNorm2d(out_channels)
        a = build_act(act)
        if a is not None:
            self.act = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self._modules.values():
            x = m(x)
        return x


class SEModule(nn.Module):
    """Squeeze-and-excitation with hard sigmoid (``fc.reduce`` → ReLU → ``fc.expand`` → h_sigmoid)."""

    def __init__(self, channels: int, mid: int | None = None) -> None:
        super().__init__()
        mid = se_mid_channels(channels) if mid is None else mid
        self.fc = nn.Sequential(
            OrderedDict(
                [
                    ("reduce", nn.Conv2d(channels, mid, 1, 1, 0, bias=True)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("expand", nn.Conv2d(mid, channels, 1, 1, 0, bias=True)),
                    ("h_sigmoid", nn.Hardsigmoid()),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConvLayer(nn.Module):
    """Inverted bottleneck: 1x1 expand (absent when ``expand == 1``), kxk depthwise (+ SE), 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand: float = 6,
        mid_channels: int | None = None,
        act: str = "relu6",
        use_se: bool = False,
    ) -> None:
        super().__init__()
        mid = middle_channels(in_channels, expand) if mid_channels is None else int(mid_channels)
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel_size, self.stride, self.expand, self.use_se = kernel_size, stride, expand, use_se
        if expand == 1:
            self.inverted_bottleneck = None
        else:
            self.inverted_bottleneck = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_channels, mid, 1, 1, 0, bias=False)),
                        ("bn", nn.BatchNorm2d(mid)),
                        ("act", build_act(act)),
                    ]
                )
            )
        dw = [
            ("conv", nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False)),
            ("bn", nn.BatchNorm2d(mid)),
            ("act", build_act(act)),
        ]
        if use_se:
            dw.append(("se", SEModule(mid)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(mid, out_channels, 1, 1, 0, bias=False)),
                    ("bn", nn.BatchNorm2d(out_channels)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    """``conv(x) (+ x)``; ``shortcut`` is an ``nn.Identity`` when the block has a skip connection."""

    def __init__(self, conv: nn.Module, shortcut: bool) -> None:
        super().__init__()
        self.conv = conv
        self.shortcut = nn.Identity() if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.conv(x)
        return self.conv(x) + x


class LinearLayer(nn.Module):
    """(Dropout +) linear, OFA's ``LinearLayer``."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self._modules.values():
            x = m(x)
        return x


# ============================================================================ elastic ops
class ElasticConv2d(nn.Module):
    """1x1 convolution whose active input/output channels are the leading ones."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, kernel_size, stride=stride, bias=False)
        self.kernel_size, self.stride = kernel_size, stride
        self.active_out = max_out

    def active_weight(self, out_c: int, in_c: int) -> torch.Tensor:
        return self.conv.weight[:out_c, :in_c]

    def forward(self, x: torch.Tensor, out_c: int | None = None) -> torch.Tensor:
        out_c = self.active_out if out_c is None else out_c
        w = self.conv.weight
        if out_c != w.shape[0] or x.shape[1] != w.shape[1]:
            w = w[:out_c, : x.shape[1]].contiguous()
        return F.conv2d(x, w, None, self.stride, self.kernel_size // 2)


class ElasticDepthwiseConv2d(nn.Module):
    """Depthwise conv with elastic kernel (centre crop + learned transformation matrices, as OFA) and
    elastic channels (leading)."""

    def __init__(self, max_channels: int, kernel_sizes: list[int], stride: int = 1) -> None:
        super().__init__()
        self.kernel_sizes = sorted(set(int(k) for k in kernel_sizes))
        self.max_kernel = self.kernel_sizes[-1]
        self.stride = stride
        self.conv = nn.Conv2d(max_channels, max_channels, self.max_kernel, stride, groups=max_channels, bias=False)
        for small, large in zip(self.kernel_sizes[:-1], self.kernel_sizes[1:]):
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.active_kernel = self.max_kernel

    def active_weight(self, channels: int, kernel: int) -> torch.Tensor:
        w = self.conv.weight[:channels]
        if kernel == self.max_kernel:
            return w
        if kernel not in self.kernel_sizes:
            raise ValueError(f"kernel={kernel} is not one of this layer's kernel sizes {self.kernel_sizes}")
        # walk down the kernel ladder: crop the centre of the current filter, transform it
        for i in range(len(self.kernel_sizes) - 1, 0, -1):
            src, dst = self.kernel_sizes[i], self.kernel_sizes[i - 1]
            if src <= kernel:
                break
            s, e = sub_kernel_range(src, dst)
            crop = w[:, :, s:e, s:e].reshape(-1, dst * dst)
            w = F.linear(crop, getattr(self, f"{src}to{dst}_matrix")).reshape(channels, 1, dst, dst)
        return w

    def forward(self, x: torch.Tensor, kernel: int | None = None) -> torch.Tensor:
        k = self.active_kernel if kernel is None else kernel
        c = x.shape[1]
        w = self.active_weight(c, k).contiguous()
        return F.conv2d(x, w, None, self.stride, k // 2, 1, c)


class ElasticBatchNorm2d(nn.Module):
    """BatchNorm over the leading channels of a full-size ``nn.BatchNorm2d`` (running statistics of the
    slice are updated in place in training mode)."""

    def __init__(self, max_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        c = x.shape[1]
        if c == bn.num_features:
            return bn(x)
        factor = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
        return F.batch_norm(
            x,
            bn.running_mean[:c],
            bn.running_var[:c],
            bn.weight[:c],
            bn.bias[:c],
            bn.training or not bn.track_running_stats,
            factor,
            bn.eps,
        )


class ElasticSE(SEModule):
    """SE whose input channels and hidden width follow the active middle channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mid = se_mid_channels(c)
        r, e = self.fc.reduce, self.fc.expand
        y = x.mean((2, 3), keepdim=True)
        y = F.conv2d(y, r.weight[:mid, :c].contiguous(), r.bias[:mid])
        y = F.relu(y)
        y = F.conv2d(y, e.weight[:c, :mid].contiguous(), e.bias[:c])
        return x * F.hardsigmoid(y)


class ElasticMBConvLayer(nn.Module):
    """MBConv layer with elastic kernel and expand ratio (fixed input/output widths)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: list[int],
        expand_ratios: list[float],
        stride: int = 1,
        act: str = "relu6",
        use_se: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_sizes = sorted(set(kernel_sizes))
        self.expand_ratios = sorted(set(expand_ratios))
        self.stride, self.act, self.use_se = stride, act, use_se
        max_mid = middle_channels(in_channels, max(self.expand_ratios))
        self.max_mid = max_mid
        self.inverted_bottleneck = nn.Sequential(
            OrderedDict(
                [
                    ("conv", ElasticConv2d(in_channels, max_mid)),
                    ("bn", ElasticBatchNorm2d(max_mid)),
                    ("act", build_act(act)),
                ]
            )
        )
        dw = [
            ("conv", ElasticDepthwiseConv2d(max_mid, self.kernel_sizes, stride)),
            ("bn", ElasticBatchNorm2d(max_mid)),
            ("act", build_act(act)),
        ]
        if use_se:
            dw.append(("se", ElasticSE(max_mid)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(
            OrderedDict([("conv", ElasticConv2d(max_mid, out_channels)), ("bn", ElasticBatchNorm2d(out_channels))])
        )
        self.set_active(max(self.kernel_sizes), max(self.expand_ratios))

    def set_active(self, kernel: int, expand: float) -> None:
        if kernel not in self.kernel_sizes:
            raise ValueError(f"kernel={kernel} is not allowed; this supernet has kernels {self.kernel_sizes}")
        if expand not in self.expand_ratios:
            raise ValueError(f"expand={expand} is not allowed; this supernet has expand ratios {self.expand_ratios}")
        self.active_kernel, self.active_expand = kernel, expand
        self.active_mid = middle_channels(self.in_channels, expand)
        self.inverted_bottleneck.conv.active_out = self.active_mid
        self.depth_conv.conv.active_kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inverted_bottleneck(x)
        x = self.depth_conv(x)
        return self.point_linear(x)

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def get_active_layer(self) -> MBConvLayer:
        """A static :class:`MBConvLayer` with the active kernel/expand and copied weights."""
        mid, k = self.active_mid, self.active_kernel
        layer = MBConvLayer(
            self.in_channels, self.out_channels, k, self.stride, self.active_expand, mid, self.act, self.use_se
        )
        dev = self.point_linear.conv.conv.weight.device
        layer.to(dev)
        layer.inverted_bottleneck.conv.weight.copy_(self.inverted_bottleneck.conv.active_weight(mid, self.in_channels))
        copy_bn(layer.inverted_bottleneck.bn, self.inverted_bottleneck.bn.bn)
        layer.depth_conv.conv.weight.copy_(self.depth_conv.conv.active_weight(mid, k))
        copy_bn(layer.depth_conv.bn, self.depth_conv.bn.bn)
        if self.use_se:
            sm = se_mid_channels(mid)
            src, dst = self.depth_conv.se.fc, layer.depth_conv.se.fc
            dst.reduce.weight.copy_(src.reduce.weight[:sm, :mid])
            dst.reduce.bias.copy_(src.reduce.bias[:sm])
            dst.expand.weight.copy_(src.expand.weight[:mid, :sm])
            dst.expand.bias.copy_(src.expand.bias[:mid])
        layer.point_linear.conv.weight.copy_(self.point_linear.conv.active_weight(self.out_channels, mid))
        copy_bn(layer.point_linear.bn, self.point_linear.bn.bn)
        return layer

    # ------------------------------------------------------------------ channel sorting
    @torch.no_grad()
    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort the middle channels by importance (L1 norm of their projection weights), so that the
        leading channels that smaller expand ratios keep are the most important ones. With
        ``expand_ratio_stage = s > 0`` the channels of the ``s`` smaller widths already trained keep their
        relative positions (OFA's staged ordering). The function of the full layer is unchanged."""
        pw = self.point_linear.conv.conv
        importance = pw.weight.abs().sum(dim=(0, 2, 3))
        if expand_ratio_stage > 0:
            widths = [middle_channels(self.in_channels, e) for e in sorted(self.expand_ratios, reverse=True)]
            right = len(importance)
            base = -len(widths) * 1e5
            for i in range(expand_ratio_stage + 1):
                left = widths[i]
                importance[left:right] += base
                base += 1e5
                right = left
        idx = torch.argsort(importance, descending=True)
        pw.weight.copy_(pw.weight.index_select(1, idx))
        permute_bn(self.depth_conv.bn.bn, idx)
        dwc = self.depth_conv.conv.conv
        dwc.weight.copy_(dwc.weight.index_select(0, idx))
        if self.use_se:
            fc = self.depth_conv.se.fc
            fc.expand.weight.copy_(fc.expand.weight.index_select(0, idx))
            fc.expand.bias.copy_(fc.expand.bias.index_select(0, idx))
            fc.reduce.weight.copy_(fc.reduce.weight.index_select(1, idx))
            se_idx = torch.argsort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            fc.expand.weight.copy_(fc.expand.weight.index_select(1, se_idx))
            fc.reduce.weight.copy_(fc.reduce.weight.index_select(0, se_idx))
            fc.reduce.bias.copy_(fc.reduce.bias.index_select(0, se_idx))
        permute_bn(self.inverted_bottleneck.bn.bn, idx)
        ib = self.inverted_bottleneck.conv.conv
        ib.weight.copy_(ib.weight.index_select(0, idx))


@torch.no_grad()
def copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    """Copy the leading ``dst.num_features`` entries of ``src`` (affine + running statistics)."""
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
    dst.eps, dst.momentum = src.eps, src.momentum


@torch.no_grad()
def permute_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.copy_(t.index_select(0, idx))


def init_weights(net: nn.Module) -> None:
    """OFA's initialisation: He-normal (fan-out) convs, unit BN, uniform linear, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            stdv = 1.0 / math.sqrt(m.weight.size(1))
            m.weight.data.uniform_(-stdv, stdv)
            if m.bias is not None:
                m.bias.data.zero_()
