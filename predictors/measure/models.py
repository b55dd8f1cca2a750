"""The networks that get timed, and how they travel to a timing process.

A model travels as a :class:`ModelSpec`: a factory ``"package.module:function"`` plus JSON keyword
arguments; the factory returns ``(module, input_shape)``. For ONNX Runtime the module is exported once
here (:func:`prepare`, through :func:`hwnas.supernet.onnx.export_onnx` with every axis fixed, so the
timed graph is the network at exactly that input) and the timing process only loads the file; the eager
backend rebuilds the module in the timing process. Spaces inside a spec are data
(:func:`hwnas.spaces.io.space_spec`), rebuilt through the space registry.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .protocol import MeasureConfig, MeasureError


@dataclass(frozen=True)
class ModelSpec:
    """A network to time: ``factory`` ("pkg.module:function") called with ``kwargs`` returns
    ``(torch.nn.Module, input_shape)``. ``key`` names it in messages and stores."""

    factory: str
    kwargs: dict = field(default_factory=dict)
    key: str = ""

    def build(self) -> tuple[Any, tuple[int, ...]]:
        out = _import_callable(self.factory)(**self.kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise MeasureError(f"factory {self.factory} must return (module, input_shape); got {type(out).__name__}")
        module, shape = out
        return module, tuple(int(s) for s in shape)

    def to_json(self) -> dict:
        return {"factory": self.factory, "kwargs": self.kwargs, "key": self.key}


def _import_callable(path: str) -> Callable:
    if ":" not in path:
        raise MeasureError(f"factory={path!r} must look like 'package.module:function'")
    mod, name = path.split(":", 1)
    try:
        obj = importlib.import_module(mod)
    except ImportError as exc:
        raise MeasureError(f"factory={path!r}: module {mod!r} cannot be imported ({exc})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise MeasureError(f"factory={path!r}: {mod!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


# ============================================================================ factories
def tiny_cnn(width: int = 8, depth: int = 2, resolution: int = 32, batch_size: int = 1, seed: int = 0):
    """A small conv net (tests, smoke runs): ``depth`` conv-BN-ReLU layers of ``width`` channels."""
    from torch import nn

    from hwnas.predictors.threads import torch_seeded

    with torch_seeded(seed):
        layers: list = [nn.Conv2d(3, width, 3, padding=1)]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
        net = nn.Sequential(*layers).eval()
    return net, (batch_size, 3, resolution, resolution)


def arch_model(space: dict, arch: dict | str, batch_size: int = 1, seed: int = 0):
    """Factory of a subnet: the static network of ``arch`` in ``space`` (a
    :func:`~hwnas.spaces.io.space_spec`) with random weights, input ``(batch_size, 3, r, r)``."""

    from hwnas.spaces.io import space_from_spec
    from hwnas.supernet.static import build_static

    from hwnas.predictors.threads import torch_seeded

    sp = space_from_spec(space, "a measurement request")
    a = sp.validate(arch)
    with torch_seeded(seed):
        net = build_static(sp, a).eval()
    return net, (int(batch_size), 3, int(a.r), int(a.r))


def arch_spec(space: Any, arch: Any, batch_size: int = 1) -> ModelSpec:
    """The :class:`ModelSpec` of one arch of ``space``, keyed by :func:`hwnas.spaces.io.arch_key`."""
    from hwnas.spaces.io import arch_key, space_spec

    a = space.validate(arch)
    return ModelSpec(f"{__name__}:arch_model", {"space": space_spec(space), "arch": a.to_dict(), "batch_size": int(batch_size)},
                     key=arch_key(space, a))


def layer_model(layer: dict, pool_first: bool = False, pool_in: Sequence[int] | None = None, batch_size: int = 1, seed: int = 0):
    """Factory of a one-layer network for a :class:`~hwnas.spaces.mbconv.LayerSpec` (as a dict),
    built exactly as :func:`hwnas.supernet.static.build_static` builds that layer."""

    from hwnas.spaces.mbconv import LayerSpec

    from hwnas.predictors.threads import torch_seeded

    L = LayerSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in layer.items()})
    with torch_seeded(seed):
        return _layer_net(L, pool_first, pool_in, int(batch_size))


def _layer_net(L: Any, pool_first: bool, pool_in: Sequence[int] | None, b: int):
    """The network of :func:`layer_model` (built under its seed)."""
    import torch
    from torch import nn

    from hwnas.supernet.layers import LinearLayer
    from hwnas.supernet.static import _conv_from_spec, _mbconv_from_spec

    h, w, c = L.in_shape

    class Pool(nn.Module):
        def forward(self, x):
            return x.mean((2, 3), keepdim=True)

    class PoolLinear(nn.Module):
        def __init__(self, lin: nn.Module) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.flatten(x.mean((2, 3)), 1))

    if L.kind == "conv":
        return _conv_from_spec(L).eval(), (b, c, h, w)
    if L.kind == "mbconv":
        return _mbconv_from_spec(L).eval(), (b, c, h, w)
    if L.kind == "pool":
        return Pool().eval(), (b, c, h, w)
    if L.kind == "linear":
        lin = LinearLayer(c, int(L.out_shape[-1]))
        if pool_first:
            ph, pw, pc = pool_in if pool_in is not None else L.in_shape
            return PoolLinear(lin).eval(), (b, int(pc), int(ph), int(pw))
        return lin.eval(), (b, c)
    raise MeasureError(f"layer {L.name!r} has kind {L.kind!r}; a lookup table prices conv, mbconv, pool and linear layers")


# ============================================================================ preparation
def export_spec(spec: ModelSpec, path: str | os.PathLike) -> tuple[str, list[int]]:
    """Build ``spec`` and export it to ONNX at ``path`` (every axis fixed); returns ``(path, shape)``."""
    from hwnas.predictors.assets import atomic_write

    data, shape = spec_onnx(spec)
    atomic_write(path, data)
    return os.fspath(path), shape


def spec_onnx(spec: ModelSpec) -> tuple[bytes, list[int]]:
    """Build ``spec`` and export it to ONNX in memory (every axis fixed); returns ``(bytes, shape)``."""
    from hwnas.predictors.threads import torch_threads
    from hwnas.supernet.onnx import onnx_bytes

    with torch_threads(1):
        module, shape = spec.build()
        data = onnx_bytes(module, shape, dynamic="none")
    return data, list(shape)


def prepare(specs: Sequence[ModelSpec], cfg: MeasureConfig, workdir: str, ids: Sequence[int]) -> list[dict]:
    """What a timing process receives for each spec: an exported ONNX file (path + input shape) for
    ONNX Runtime, the spec itself for the eager backend."""
    out = []
    for i, s in zip(ids, specs):
        if cfg.backend == "onnxruntime":
            path, shape = export_spec(s, os.path.join(workdir, f"model{i}.onnx"))
            out.append({"path": path, "shape": shape, "key": s.key})
        else:
            out.append(s.to_json())
    return out
