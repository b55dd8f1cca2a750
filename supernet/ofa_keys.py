"""Expected tensor names and shapes of the official Once-for-All supernet checkpoints.

Written down from Once-for-All's network definitions (``OFAMobileNetV3`` / ``OFAProxylessNASNets`` with
``ks_list=[3,5,7]``, ``expand_ratio_list=[3,4,6]``, ``depth_list=[2,3,4]`` and the dynamic layers'
module layout), independently of the module code in :mod:`hwnas.supernet.elastic`; the tests check that
our supernets' state dicts equal these specs name for name and shape for shape.

Legacy checkpoints name the residual block's layer ``mobile_inverted_conv`` instead of ``conv``;
:func:`canonical_key` maps those names.
"""

from __future__ import annotations

from collections import OrderedDict

Shape = tuple[int, ...]


def _md(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _bn(out: "OrderedDict[str, Shape]", prefix: str, c: int) -> None:
    for t in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{t}"] = (c,)
    out[f"{prefix}.num_batches_tracked"] = ()


def _static_first_block(out: "OrderedDict[str, Shape]", cin: int, cout: int) -> None:
    p = "blocks.0.conv"
    out[f"{p}.depth_conv.conv.weight"] = (cin, 1, 3, 3)
    _bn(out, f"{p}.depth_conv.bn", cin)
    out[f"{p}.point_linear.conv.weight"] = (cout, cin, 1, 1)
    _bn(out, f"{p}.point_linear.bn", cout)


def _dynamic_block(out: "OrderedDict[str, Shape]", i: int, cin: int, cout: int, se: bool) -> None:
    p = f"blocks.{i}.conv"
    mid = _md(round(cin * 6))  # max expand ratio 6
    out[f"{p}.inverted_bottleneck.conv.conv.weight"] = (mid, cin, 1, 1)
    _bn(out, f"{p}.inverted_bottleneck.bn.bn", mid)
    out[f"{p}.depth_conv.conv.5to3_matrix"] = (9, 9)
    out[f"{p}.depth_conv.conv.7to5_matrix"] = (25, 25)
    out[f"{p}.depth_conv.conv.conv.weight"] = (mid, 1, 7, 7)
    _bn(out, f"{p}.depth_conv.bn.bn", mid)
    if se:
        sm = _md(mid // 4)
        out[f"{p}.depth_conv.se.fc.reduce.weight"] = (sm, mid, 1, 1)
        out[f"{p}.depth_conv.se.fc.reduce.bias"] = (sm,)
        out[f"{p}.depth_conv.se.fc.expand.weight"] = (mid, sm, 1, 1)
        out[f"{p}.depth_conv.se.fc.expand.bias"] = (mid,)
    out[f"{p}.point_linear.conv.conv.weight"] = (cout, mid, 1, 1)
    _bn(out, f"{p}.point_linear.bn.bn", cout)


def ofa_mbv3_spec(width_mult: float, n_classes: int = 1000) -> "OrderedDict[str, Shape]":
    """``ofa_mbv3_d234_e346_k357_w{width_mult}``: tensor name -> shape."""
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    widths = [_md(b * width_mult) for b in base[:-2]]
    final_expand, last = _md(base[-2] * width_mult), _md(base[-1] * width_mult)
    se_stages = [False, True, False, True, True]
    out: "OrderedDict[str, Shape]" = OrderedDict()
    c0, c1 = widths[0], widths[1]
    out["first_conv.conv.weight"] = (c0, 3, 3, 3)
    _bn(out, "first_conv.bn", c0)
    _static_first_block(out, c0, c1)
    cin, i = c1, 1
    for width, se in zip(widths[2:], se_stages):
        for _ in range(4):
            _dynamic_block(out, i, cin, width, se)
            cin, i = width, i + 1
    out["final_expand_layer.conv.weight"] = (final_expand, cin, 1, 1)
    _bn(out, "final_expand_layer.bn", final_expand)
    out["feature_mix_layer.conv.weight"] = (last, final_expand, 1, 1)
    out["classifier.linear.weight"] = (n_classes, last)
    out["classifier.linear.bias"] = (n_classes,)
    return out


def ofa_proxyless_spec(width_mult: float = 1.3, n_classes: int = 1000) -> "OrderedDict[str, Shape]":
    """``ofa_proxyless_d234_e346_k357_w{width_mult}``: tensor name -> shape."""
    base = [32, 16, 24, 40, 80, 96, 192, 320, 1280]
    c0, c1 = _md(base[0] * width_mult), _md(base[1] * width_mult)
    last = _md(base[-1] * width_mult)
    widths = [_md(b * width_mult) for b in base[2:-1]]
    n_blocks = [4, 4, 4, 4, 4, 1]
    out: "OrderedDict[str, Shape]" = OrderedDict()
    out["first_conv.conv.weight"] = (c0, 3, 3, 3)
    _bn(out, "first_conv.bn", c0)
    _static_first_block(out, c0, c1)
    cin, i = c1, 1
    for width, n in zip(widths, n_blocks):
        for _ in range(n):
            _dynamic_block(out, i, cin, width, se=False)
            cin, i = width, i + 1
    out["feature_mix_layer.conv.weight"] = (last, cin, 1, 1)
    _bn(out, "feature_mix_layer.bn", last)
    out["classifier.linear.weight"] = (n_classes, last)
    out["classifier.linear.bias"] = (n_classes,)
    return out


def official_spec(name: str) -> "OrderedDict[str, Shape]":
    """Spec of an official checkpoint by file name."""
    specs = {
        "ofa_mbv3_d234_e346_k357_w1.0": lambda: ofa_mbv3_spec(1.0),
        "ofa_mbv3_d234_e346_k357_w1.2": lambda: ofa_mbv3_spec(1.2),
        "ofa_proxyless_d234_e346_k357_w1.3": lambda: ofa_proxyless_spec(1.3),
    }
    if name not in specs:
        raise KeyError(f"checkpoint {name!r} is unknown; known: {sorted(specs)}")
    return specs[name]()


def canonical_key(key: str) -> str:
    """Map legacy / wrapped names to the current ones (``module.`` prefix, ``mobile_inverted_conv``)."""
    if key.startswith("module."):
        key = key[len("module.") :]
    return key.replace(".mobile_inverted_conv.", ".conv.")


__all__ = ["ofa_mbv3_spec", "ofa_proxyless_spec", "official_spec", "canonical_key"]
