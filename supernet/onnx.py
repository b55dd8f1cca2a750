"""The one ONNX export of hwnas, shared by on-device measurement and the model export.

:func:`export_onnx` traces a module (eval mode, no gradients) and writes the file atomically
(:func:`onnx_bytes` gives the same model as bytes; both trace, check and label it in memory). Its
axes:

* ``dynamic="none"``: every axis fixed to the example input -- what measurement times, so the timed
  graph is exactly the network at that input;
* ``dynamic="batch"``: the batch axis is free;
* ``dynamic="auto"`` (the export's default): batch and, for image inputs, height and width are free;
  the file is then run by ONNX Runtime at a second input size and compared with torch. A network that
  cannot take other sizes (a flatten before the classifier, a fixed reshape) keeps its trained size.

Either way the model says what it accepts in its ``metadata_props``: ``hwnas.input_shape`` (the
example shape) and ``hwnas.dynamic_axes`` (``{"input": {"0": "batch", "2": "height", "3": "width"}}``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from hwnas.predictors.assets import atomic_path

DYNAMIC = ("none", "batch", "auto")


def _axes(kind: str, rank: int, output_rank: int) -> dict[str, dict[int, str]]:
    if kind == "none":
        return {}
    inp = {0: "batch"}
    if kind == "spatial" and rank == 4:
        inp.update({2: "height", 3: "width"})
    return {"input": inp, "output": {0: "batch"} if output_rank >= 1 else {}}


def _trace(module: Any, example: Any, opset: int, output_name: str, axes: dict) -> bytes:
    """The serialised ONNX model of ``module`` traced at ``example`` (in memory: nothing is written)."""
    import io

    import torch

    names = {"output": output_name}
    dyn = {("input" if k == "input" else names[k]): v for k, v in axes.items() if v}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=["input"], output_names=[output_name],
                          opset_version=int(opset), dynamo=False, do_constant_folding=True,
                          dynamic_axes=dyn or None)
    return buf.getvalue()


def _runs_at(model: bytes, module: Any, shape: Sequence[int], atol: float) -> bool:
    """Whether the serialised ONNX ``model`` gives torch's output for an input of ``shape``."""
    import onnxruntime as ort
    import torch

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    try:
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            ref = module(x).numpy()
    except Exception:  # noqa: BLE001 - the graph refuses the size (shape error) or torch does
        return False
    return output_diff(ref, got, atol)[0]


def output_diff(ref: Any, got: Any, atol: float) -> tuple[bool, float, float]:
    """``(close, max |ref - got|, scale)``: whether two outputs agree within ``atol`` times the reference's own
    scale (its largest magnitude). Relative, not floored at 1: an untrained network's logits are ~1e-9, and a
    tolerance of 1e-4 in absolute terms passed any output (zeros, a permutation) for them."""
    import numpy as np

    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return False, float("inf"), 0.0
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return bool(diff <= atol * scale) if scale > 0 else diff == 0.0, diff, scale


def export_onnx(module: Any, example: Any, path: str | os.PathLike, *, opset: int = 17, output_name: str = "output",
                dynamic: str = "none", metadata: Mapping[str, str] | None = None, atol: float = 1e-4) -> Path:
    """Export ``module`` at the example input ``example`` (a tensor or a shape) to ``path``, atomically.

    ``dynamic``: ``"none"``, ``"batch"`` or ``"auto"`` (see the module doc). ``metadata``: extra
    ``metadata_props`` (string values). Returns ``path``.
    """
    path = Path(path)
    data = onnx_bytes(module, example, opset=opset, output_name=output_name, dynamic=dynamic, metadata=metadata, atol=atol)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def onnx_bytes(module: Any, example: Any, *, opset: int = 17, output_name: str = "output", dynamic: str = "none",
               metadata: Mapping[str, str] | None = None, atol: float = 1e-4) -> bytes:
    """What :func:`export_onnx` writes, as bytes: the model is traced, checked and labelled in memory
    (measurement sends these bytes to a device without a file in between)."""
    import onnx
    import torch

    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic={dynamic!r} is unknown; allowed values: {list(DYNAMIC)}")
    if not isinstance(example, torch.Tensor):
        example = torch.randn(*[int(s) for s in example], generator=torch.Generator().manual_seed(0))
    module = module.eval()
    shape = [int(s) for s in example.shape]
    kind = "spatial" if dynamic == "auto" and len(shape) == 4 else ("batch" if dynamic in ("auto", "batch") else "none")
    out_rank = 0
    if kind != "none":  # the output's axes are named only when some axis is free
        with torch.no_grad():
            out_rank = module(example).dim()
    axes = _axes(kind, len(shape), out_rank)
    data = _trace(module, example, opset, output_name, axes)
    if kind == "spatial":
        h, w = shape[2], shape[3]
        other = [2, shape[1], h + 32 if h < 512 else h - 32, w + 32 if w < 512 else w - 32]
        if not _runs_at(data, module, other, atol):
            axes = _axes("batch", len(shape), out_rank)
            data = _trace(module, example, opset, output_name, axes)
    props = {"hwnas.input_shape": json.dumps(shape),
             "hwnas.dynamic_axes": json.dumps({k: {str(i): n for i, n in v.items()} for k, v in axes.items() if v})}
    model = onnx.load_from_string(data)
    _set_metadata(model, {**props, **dict(metadata or {})})
    return model.SerializeToString()


def _set_metadata(model: Any, props: Mapping[str, str]) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in [*keep, *((k, str(v)) for k, v in props.items())]:
        e = model.metadata_props.add()
        e.key, e.value = k, v


def write_metadata(path: str | os.PathLike, props: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries of an ONNX file (other entries are kept); the file is replaced atomically."""
    import onnx

    model = onnx.load(str(path))
    _set_metadata(model, props)
    with atomic_path(Path(path)) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
