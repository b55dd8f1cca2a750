"""The one ONNX export of hwnas, shared by on-device measurement and the model export.

:func:`export_onnx` traces a module (eval mode, no gradients) and writes the file atomically. Its
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


def _trace(module: Any, example: Any, path: Path, opset: int, output_name: str, axes: dict) -> None:
    import torch

    names = {"output": output_name}
    dyn = {("input" if k == "input" else names[k]): v for k, v in axes.items() if v}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=[output_name],
                          opset_version=int(opset), dynamo=False, do_constant_folding=True,
                          dynamic_axes=dyn or None)


def _runs_at(path: Path, module: Any, shape: Sequence[int], atol: float) -> bool:
    """Whether the ONNX file at ``path`` gives torch's output for an input of ``shape``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            ref = module(x).numpy()
    except Exception:  # noqa: BLE001 - the graph refuses the size (shape error) or torch does
        return False
    return got.shape == ref.shape and bool(np.allclose(got, ref, atol=atol, rtol=1e-3))


def export_onnx(module: Any, example: Any, path: str | os.PathLike, *, opset: int = 17, output_name: str = "output",
                dynamic: str = "none", metadata: Mapping[str, str] | None = None, atol: float = 1e-4) -> Path:
    """Export ``module`` at the example input ``example`` (a tensor or a shape) to ``path``, atomically.

    ``dynamic``: ``"none"``, ``"batch"`` or ``"auto"`` (see the module doc). ``metadata``: extra
    ``metadata_props`` (string values). Returns ``path``.
    """
    import torch

    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic={dynamic!r} is unknown; allowed values: {list(DYNAMIC)}")
    if not isinstance(example, torch.Tensor):
        example = torch.randn(*[int(s) for s in example], generator=torch.Generator().manual_seed(0))
    module = module.eval()
    shape = [int(s) for s in example.shape]
    with torch.no_grad():
        out_rank = module(example).dim()
    path = Path(path)
    with atomic_path(path) as tmp:
        kind = "spatial" if dynamic == "auto" and len(shape) == 4 else ("batch" if dynamic in ("auto", "batch") else "none")
        axes = _axes(kind, len(shape), out_rank)
        _trace(module, example, tmp, opset, output_name, axes)
        if kind == "spatial":
            h, w = shape[2], shape[3]
            other = [2, shape[1], h + 32 if h < 512 else h - 32, w + 32 if w < 512 else w - 32]
            if not _runs_at(tmp, module, other, atol):
                axes = _axes("batch", len(shape), out_rank)
                _trace(module, example, tmp, opset, output_name, axes)
        props = {"hwnas.input_shape": json.dumps(shape),
                 "hwnas.dynamic_axes": json.dumps({k: {str(i): n for i, n in v.items()} for k, v in axes.items() if v})}
        write_metadata(tmp, {**props, **dict(metadata or {})})
    return path


def write_metadata(path: str | os.PathLike, props: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries of an ONNX file in place (other entries are kept)."""
    import onnx

    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in [*keep, *((k, str(v)) for k, v in props.items())]:
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
