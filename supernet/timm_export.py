"""Export a static MBConv subnet as a timm model (``MobileNetV3`` / ``EfficientNet`` classes).

timm builds MobileNet-style networks from *block strings* (``timm.models._efficientnet_builder``):
``<type>_r<repeats>_k<kernel>_s<stride>_e<expand>_c<out channels>[_se<ratio>][_n<act>][_noskip]`` with
types ``ds`` (depthwise-separable, expand 1), ``ir`` (inverted residual) and ``cn`` (conv-BN-act), and
activations ``nre`` (ReLU), ``nr6`` (ReLU6), ``nhs`` (hard-swish); blocks without ``_n…`` use the model's
default activation. :func:`timm_config` writes one string per layer of the subnet:

* OFA-MobileNetV3 → ``timm.models.mobilenetv3.MobileNetV3`` (the "efficient head": final 1x1 ``cn``
  block, global pool, ``conv_head`` without BN or bias, hard-swish, classifier), hard-swish default,
  ``_nre`` on the ReLU stages, ``_se0.25`` on the SE stages (timm's SE with hard-sigmoid gate and a
  ReLU, reduction from the expanded channels rounded to 8 — Once-for-All's SE);
* ProxylessNAS (OFA w1.3 and mobile) → ``timm.models.efficientnet.EfficientNet`` (``conv_head`` + BN +
  ReLU6, then global pool and classifier), ReLU6 everywhere, no SE.

:func:`copy_weights` copies every conv / BN / linear tensor of the static subnet into the timm model
in execution order, checking types and shapes one by one; :func:`to_timm` builds, copies and checks
that both networks give the same logits. The config is plain JSON (``timm_config.json`` in an
export), and :func:`create_timm_model` rebuilds the model from it. :func:`register_timm` registers an export
folder with timm, so ``timm.create_model("hwnas_<name>", pretrained=True)`` builds it with its weights.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.spaces.mbconv import MBConvSpace

from hwnas.spaces.errors import UserError

from ._compat import ensure_torchvision, import_timm

# Importing this module makes ``import timm`` work next to a mismatched torch / torchvision build (see
# :mod:`hwnas.supernet._compat`): ``from hwnas.supernet.timm_export import register_timm`` first, then
# ``import timm``, as the model card of every export folder does.
ensure_torchvision()

__all__ = ["TimmExportError", "timm_config", "create_timm_model", "copy_weights", "to_timm", "register_timm", "timm_model_name"]

_ACT_CODE = {"relu": "re", "relu6": "r6", "h_swish": "hs"}
_ACT_TIMM = {"relu": "relu", "relu6": "relu6", "h_swish": "hard_swish"}


class TimmExportError(UserError, ValueError):
    """The subnet cannot be expressed as (or does not match) the timm model."""


def _block_str(kind: str, k: int, s: int, e: Any, c: int, act: str, default_act: str, se: bool = False, noskip: bool = False) -> str:
    parts = [kind, "r1", f"k{k}", f"s{s}"]
    if kind != "cn":
        parts.append(f"e{e:g}" if isinstance(e, float) else f"e{e}")
    parts.append(f"c{c}")
    if se:
        parts.append("se0.25")
    if act != default_act:
        if act not in _ACT_CODE:
            raise TimmExportError(f"activation {act!r} has no timm block-string code; supported: {sorted(_ACT_CODE)}")
        parts.append(f"n{_ACT_CODE[act]}")
    if noskip:
        parts.append("noskip")
    return "_".join(parts)


def timm_config(space: MBConvSpace, arch: Any, n_classes: int | None = None, bn_eps: float | None = None) -> dict:
    """A JSON-able description of the timm model of ``arch``: ``model_class``, ``arch_def`` (block
    strings, one stage per unit), stem / head widths, activation, BN eps, ``num_classes``."""
    if not isinstance(space, MBConvSpace):
        raise TimmExportError(f"space {getattr(space, 'name', space)!r} is not an MBConv space; timm export supports "
                              "OFA-MobileNetV3 and ProxylessNAS spaces")
    from .static import bn_param

    a = space.validate(arch)
    specs = space.layers(a)
    family = getattr(space, "family", "")
    mbv3 = family == "ofa_mbv3"
    stem = specs[0]
    default_act = stem.act
    stages: list[list[str]] = []
    head: dict[str, Any] = {}
    first = specs[1]
    if first.kind != "mbconv" or first.expand != 1:
        raise TimmExportError(f"space {space.name}: expected the fixed expand-1 first block after the stem")
    stages.append([_block_str("ds", first.kernel, first.stride, 1, first.out_shape[2], first.act, default_act,
                              se=first.se, noskip=not first.idskip and first.stride == 1 and first.in_shape[2] == first.out_shape[2])])
    unit = -1
    for L in specs[2:]:
        if L.kind == "mbconv":
            if L.unit != unit:
                stages.append([])
                unit = L.unit
            cin, cout = L.in_shape[2], L.out_shape[2]
            noskip = (L.stride == 1 and cin == cout) and not L.idskip
            stages[-1].append(_block_str("ir", L.kernel, L.stride, L.expand, cout, L.act, default_act, se=L.se, noskip=noskip))
        elif L.kind == "conv" and L.name == "final_expand":
            stages.append([_block_str("cn", L.kernel or 1, L.stride or 1, 1, L.out_shape[2], L.act, default_act)])
        elif L.kind == "conv" and L.name == "feature_mix":
            head = {"num_features": L.out_shape[2], "head_act": L.act, "head_bn": bool(L.bn)}
        elif L.kind in ("pool", "linear"):
            continue
        else:
            raise TimmExportError(f"layer {L.name!r} ({L.kind}) of space {space.name} has no timm counterpart")
    if not head:
        raise TimmExportError(f"space {space.name}: no feature_mix layer found")
    if head["head_act"] != default_act:
        raise TimmExportError(f"space {space.name}: head activation {head['head_act']} differs from the stem's {default_act}")
    eps = bn_param(space)[1] if bn_eps is None else float(bn_eps)
    return {
        "model_class": "MobileNetV3" if mbv3 else "EfficientNet",
        "arch_def": stages,
        "stem_size": stem.out_shape[2],
        "num_features": head["num_features"],
        "act_layer": _ACT_TIMM[default_act],
        "se_layer": "hard_sigmoid_relu" if mbv3 else None,
        "head_bias": False,
        "bn_eps": eps,
        "num_classes": int(space.n_classes if n_classes is None else n_classes),
        "input_size": [3, a.r, a.r],
        "timm_version": getattr(import_timm(), "__version__", ""),
    }


def _pretrained_cfg(cfg: dict, num_classes: int) -> dict:
    """What ``timm.data.resolve_data_config(model=...)`` and timm's weight loading read."""
    return {
        "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "num_classes": num_classes,
        "first_conv": "conv_stem",
        "classifier": "classifier",
    }


def create_timm_model(cfg: dict | str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the timm model described by ``cfg`` (a :func:`timm_config` dict or its JSON) — randomly
    initialised; load ``timm_model.pth`` into it. ``num_classes`` replaces the classifier size (for
    fine-tuning on another dataset; then load the weights with ``strict=False`` minus the classifier).
    Other keyword arguments (``drop_rate``, ``drop_path_rate``, ``in_chans`` ...) go to the timm class."""
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    import_timm()
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    n_classes = int(cfg["num_classes"] if num_classes is None else num_classes)
    common = dict(
        block_args=decode_arch_def(cfg["arch_def"]),
        num_classes=n_classes,
        stem_size=int(cfg["stem_size"]),
        fix_stem=True,
        num_features=int(cfg["num_features"]),
        act_layer=get_act_layer(cfg["act_layer"]),
        norm_layer=partial(nn.BatchNorm2d, eps=float(cfg["bn_eps"])),
        **kwargs,
    )
    if cfg["model_class"] == "MobileNetV3":
        se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
        model = MobileNetV3(se_layer=se, head_bias=bool(cfg.get("head_bias", False)), **common)
    elif cfg["model_class"] == "EfficientNet":
        model = EfficientNet(**common)
    else:
        raise TimmExportError(f"model_class={cfg['model_class']!r} is unknown; allowed: ['MobileNetV3', 'EfficientNet']")
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(cfg, n_classes)
    return model


def timm_model_name(export_name: str) -> str:
    """The timm model name of an export folder: ``hwnas_<folder name>`` (letters, digits, ``_``)."""
    return "hwnas_" + re.sub(r"[^0-9A-Za-z_]+", "_", export_name).strip("_")


def register_timm(folder: str | os.PathLike) -> str:
    """Register an export folder with timm; returns its model name (``hwnas_<folder name>``).

    Afterwards ``timm.create_model(name, pretrained=True)`` builds the exported network with its weights
    (``timm_model.pth``; ``pretrained_cfg_overlay=dict(file=...)`` points at another copy) and
    ``num_classes=K`` gives it a new classifier for fine-tuning, as for timm's own models."""
    folder = Path(folder).resolve()
    cfg_path = folder / "timm_config.json"
    if not cfg_path.is_file():
        raise TimmExportError(f"{folder} has no timm_config.json; export it with the 'timm' format (--formats ...,timm)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise TimmExportError(f"{cfg_path} is not readable JSON ({exc}); export the folder again") from None
    name = cfg.get("timm_name") or timm_model_name(folder.name)
    if not isinstance(name, str) or not re.fullmatch(r"hwnas_[0-9A-Za-z_]+", name):
        raise TimmExportError(f"{cfg_path}: timm_name={name!r} is not an hwnas model name (hwnas_<letters, digits, _>); "
                              "the file was edited -- export the folder again")
    timm = import_timm()
    if timm.is_model(name) and getattr(timm.models.model_entrypoint(name), "__module__", None) != __name__:
        raise TimmExportError(f"{cfg_path}: timm_name={name!r} is a model timm already has, not one hwnas registered; "
                              "registering it would replace that model in this process")
    default = {**_pretrained_cfg(cfg, int(cfg["num_classes"])), "file": str(folder / "timm_model.pth")}

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   **kwargs: Any) -> nn.Module:
        return timm.models.build_model_with_cfg(
            lambda **kw: create_timm_model(cfg, **kw), name, pretrained,
            pretrained_cfg=pretrained_cfg or default, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    with warnings.catch_warnings():  # registering a folder again replaces its entry
        warnings.simplefilter("ignore")
        timm.models.register_model(entrypoint)
    return name


def _param_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv / BN / linear modules in the order the forward pass runs them."""
    order: list[nn.Module] = []
    hooks = []
    kinds = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Linear)
    for m in model.modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def copy_weights(static: nn.Module, model: nn.Module, resolution: int) -> int:
    """Copy all tensors of ``static`` into ``model`` layer by layer (execution order); returns the number
    of layers copied. Raises :class:`TimmExportError` naming the first layer that does not match."""
    x = torch.zeros(1, 3, resolution, resolution)
    src, dst = _param_layers(static, x), _param_layers(model, x)
    if len(src) != len(dst):
        raise TimmExportError(f"the static subnet runs {len(src)} conv/BN/linear layers but the timm model {len(dst)}")
    names_s = {m: n for n, m in static.named_modules()}
    names_d = {m: n for n, m in model.named_modules()}
    for i, (a, b) in enumerate(zip(src, dst)):
        base = nn.modules.batchnorm._BatchNorm if isinstance(a, nn.modules.batchnorm._BatchNorm) else type(a)
        sa, sb = a.state_dict(), b.state_dict()
        bad = not isinstance(b, base) or set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa)
        if isinstance(a, nn.Conv2d) and not bad:
            bad = (a.stride, a.padding, a.groups, a.dilation) != (b.stride, b.padding, b.groups, b.dilation)
        if bad:
            shapes_a = {k: tuple(v.shape) for k, v in sa.items()}
            shapes_b = {k: tuple(v.shape) for k, v in sb.items()}
            raise TimmExportError(
                f"layer {i}: static {names_s.get(a)} ({type(a).__name__} {shapes_a}) does not match "
                f"timm {names_d.get(b)} ({type(b).__name__} {shapes_b})"
            )
        for k, v in sa.items():
            sb[k].copy_(v)
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            b.eps, b.momentum = a.eps, a.momentum
    return len(src)


def to_timm(
    static: nn.Module, space: MBConvSpace, arch: Any = None, check: bool = True, atol: float = 1e-5, n_classes: int | None = None
) -> tuple[nn.Module, dict, float]:
    """The timm model of a static subnet with its weights: ``(model, config, max_abs_diff)``.

    With ``check`` the two networks are run (eval mode) on a fixed random batch and a difference above
    ``atol`` (relative to the logits' scale) raises :class:`TimmExportError`."""
    arch = space.validate(arch if arch is not None else static.arch)
    if n_classes is None:
        lin = [m for m in static.modules() if isinstance(m, nn.Linear)]
        n_classes = lin[-1].out_features if lin else None
    bn = [m for m in static.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    cfg = timm_config(space, arch, n_classes=n_classes, bn_eps=bn[0].eps if bn else None)
    model = create_timm_model(cfg)
    copy_weights(static, model, arch.r)
    model.eval()
    diff = float("nan")
    if check:
        was = static.training
        static.eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, arch.r, arch.r, generator=g)
        with torch.no_grad():
            ya, yb = static(x), model(x)
        static.train(was)
        from .onnx import output_diff

        ok, diff, scale = output_diff(ya.numpy(), yb.numpy(), atol)
        if not ok:
            raise TimmExportError(f"timm model output differs from the static subnet by {diff:.3g} (atol {atol} x scale {scale:.3g})")
    return model, cfg, diff
