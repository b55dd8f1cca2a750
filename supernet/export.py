"""Export subnets (a search's Pareto set or single archs) as ready-to-use model folders.

One folder per arch, written into a temporary folder beside it and renamed into place when complete:

* ``arch.json`` — the arch (OFA dict), its compact string and the space config;
* ``model_state_dict.pth`` — the static subnet's state dict (Once-for-All tensor names);
* ``model_torchscript.pt`` — traced TorchScript (outputs checked against eager);
* ``model.onnx`` — ONNX with a free batch axis and, where the network allows, free height and width (``hwnas.dynamic_axes`` in ``metadata_props`` says which; outputs checked with ONNX Runtime);
* ``timm_model.pth`` + ``timm_config.json`` — the same network as a timm ``MobileNetV3`` /
  ``EfficientNet`` (outputs checked against the static subnet), for fine-tuning with timm's tools;
* ``metadata.json`` — arch, resolution, accuracy and latency (with their kind: predicted or measured),
  where the weights came from, the output checks and versions;
* ``README.md`` — a model card with loading code.

Weights come from a supernet checkpoint (``get_active_subnet``) or, without one, from the static
network's random initialisation — then every file says so (``weights.trained = false``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.predictors.assets import atomic_write
from hwnas.spaces.base import SearchSpace, SpaceError, create_space
from hwnas.spaces.mbconv import MBConvSpace
from hwnas.spaces.errors import UserError

__all__ = [
    "ExportError",
    "ExportItem",
    "read_archs",
    "load_weights_source",
    "export_arch",
    "export_many",
    "FORMATS",
    "load_timm",
    "WeightsSource",
]

FORMATS = ("torch", "torchscript", "onnx", "timm")


class ExportError(UserError, ValueError):
    """An export input is invalid or an exported model does not reproduce the subnet."""


@dataclass
class ExportItem:
    """One arch to export, with what is known about it."""

    arch: Any
    accuracy: float | None = None
    latency: float | None = None
    accuracy_kind: str = "predicted"
    latency_kind: str = "predicted"
    name: str = ""
    extra: dict = field(default_factory=dict)


# ============================================================================ inputs
def _space_from_cfg(cfg: Any) -> SearchSpace:
    if isinstance(cfg, dict) and "_target_" in cfg:
        from hydra.utils import instantiate

        return instantiate(cfg, _convert_="all")
    if isinstance(cfg, dict) and cfg.get("name"):
        return create_space(cfg["name"])
    raise ExportError("pareto.json has no usable 'space' entry; pass the space name (--space)")


def read_archs(source: str | os.PathLike | Any, space: SearchSpace | str | None = None) -> tuple[SearchSpace, list[ExportItem]]:
    """Archs to export from ``source``: a ``pareto.json`` (or its run folder), a JSON file holding one
    arch dict or a list of them, an arch JSON string / compact string, or an arch object.

    ``space`` (object or registered name) defaults to the one recorded in ``pareto.json``."""
    if isinstance(space, str):
        space = create_space(space)
    data: Any = None
    text = os.fspath(source).strip() if isinstance(source, (str, os.PathLike)) else None
    inline = text is None or text.startswith("{") or re.match(r"^r\d+:", text) is not None
    if not inline:
        p = Path(text)
        if p.is_dir():
            if not (p / "pareto.json").is_file():
                raise ExportError(f"{p} is a folder without pareto.json; give a search run folder, a pareto.json or an arch")
            p = p / "pareto.json"
        if not p.is_file():
            raise ExportError(f"{p} does not exist; give a search run folder, a pareto.json, an arch JSON file or an arch string")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{p} is not valid JSON ({exc}); expected a pareto.json or an arch JSON") from None
    if data is None:  # an arch given inline
        if space is None:
            raise ExportError("an arch given inline needs the space (--space NAME)")
        return space, [ExportItem(arch=space.validate(source))]
    if isinstance(data, dict) and "front" in data:
        if space is None:
            space = _space_from_cfg(data.get("space"))
        items = []
        for i, row in enumerate(data["front"]):
            if not isinstance(row, dict) or "arch" not in row:
                raise ExportError(f"pareto.json front[{i}] has no 'arch'; rows look like {{'arch': {{...}}, 'accuracy': .., 'latency': ..}}")
            try:
                arch = space.validate(row["arch"])
            except SpaceError as exc:
                raise SpaceError(f"pareto.json front[{i}]: {exc}") from None
            extra = {k: v for k, v in row.items() if k not in ("arch", "arch_str", "accuracy", "latency")}
            items.append(ExportItem(arch, row.get("accuracy"), row.get("latency"), name=f"rank{i:03d}", extra=extra))
        return space, items
    if space is None:
        raise ExportError("an arch JSON file needs the space (--space NAME)")
    rows = data if isinstance(data, list) else [data]
    items = []
    for i, row in enumerate(rows):
        try:
            items.append(ExportItem(arch=space.validate(row)))
        except SpaceError as exc:
            raise SpaceError(f"arch {i}: {exc}") from None
    return space, items


# ============================================================================ weights
@dataclass
class WeightsSource:
    """Where subnet weights come from: a loaded supernet, or random initialisation."""

    supernet: nn.Module | None = None
    checkpoint: str = ""

    @property
    def trained(self) -> bool:
        return self.supernet is not None

    def subnet(self, space: MBConvSpace, arch: Any) -> nn.Module:
        if self.supernet is not None:
            return self.supernet.get_active_subnet(arch).eval()
        from .static import build_static

        return build_static(space, arch).eval()

    def describe(self) -> dict:
        if self.trained:
            return {"trained": True, "source": "supernet checkpoint", "checkpoint": self.checkpoint}
        return {
            "trained": False,
            "source": "random initialisation (NOT trained: fine-tune or pass a supernet checkpoint before use)",
            "checkpoint": None,
        }


def load_weights_source(space: MBConvSpace, checkpoint: str | os.PathLike | None = None, mirror: str | None = None) -> WeightsSource:
    """A supernet of ``space`` with ``checkpoint`` loaded (path, official OFA name or asset path); with
    no checkpoint, the static networks' initial weights (flagged untrained)."""
    if checkpoint in (None, ""):
        return WeightsSource()
    from .checkpoint import load_checkpoint
    from .elastic import ElasticMBConvNet

    net = ElasticMBConvNet(space)
    path = load_checkpoint(net, checkpoint, mirror=mirror)
    net.eval()
    return WeightsSource(net, str(path))


# ============================================================================ export of one arch
def _check_close(name: str, ref: torch.Tensor, got: np.ndarray | torch.Tensor, atol: float) -> float:
    got_t = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).float()
    diff = float((ref.float() - got_t).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not diff <= atol * scale:
        raise ExportError(f"{name} output differs from the PyTorch subnet by {diff:.3g} (atol {atol:g} x scale {scale:.3g})")
    return diff


def _arch_name(space: SearchSpace, arch: Any, prefix: str = "") -> str:
    h = hashlib.sha1(space.to_json(arch).encode()).hexdigest()[:8]
    return f"{prefix + '_' if prefix else ''}r{arch.r}_{h}"


def _fmt(v: float | None, kind: str, unit: str = "") -> str:
    if v is None:
        return "unknown"
    if unit == "%" and abs(v) <= 1.0:
        return f"{v * 100:.2f}% ({kind})"
    return f"{v:.4g}{unit if unit != '%' else '%'} ({kind})"


def _model_card(meta: dict, files: dict[str, str]) -> str:
    from .timm_export import timm_snippet

    w = meta["weights"]
    warn = "" if w["trained"] else (
        "\n> **Warning: these weights are NOT trained** (random initialisation of the static network). "
        "Fine-tune before use, or export again with a supernet checkpoint (`--checkpoint`).\n"
    )
    r = meta["resolution"]
    lines = [
        f"# {meta['name']}: {meta['space']} subnet at {r}x{r}",
        warn,
        f"- arch: `{meta['arch_str']}`",
        f"- top-1: {_fmt(meta['accuracy']['value'], meta['accuracy']['kind'], '%')}; "
        f"latency: {_fmt(meta['latency']['value'], meta['latency']['kind'])}",
        f"- MACs: {meta['macs'] / 1e6:.1f} M; parameters: {meta['params'] / 1e6:.2f} M",
        f"- weights: {w['source']}" + (f" (`{w['checkpoint']}`)" if w.get("checkpoint") else ""),
        f"- input: RGB, {r}x{r}, ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225)",
        "",
        "## Files",
        "",
    ]
    labels = {
        "torch": "PyTorch state dict of the static subnet (Once-for-All tensor names)",
        "torchscript": "TorchScript (traced; outputs checked against eager PyTorch)",
        "timm": "timm model weights (outputs checked against the static subnet)",
        "timm_config": "timm model definition (class, block strings, widths, BN eps)",
        "onnx": "ONNX (free batch axis, and free height/width where the network allows, see hwnas.dynamic_axes; checked with ONNX Runtime; arch/accuracy/latency in metadata_props)",
    }
    for k, v in files.items():
        lines.append(f"- `{v}`: {labels.get(k, k)}")
    lines.append("- `metadata.json`: arch, resolution, accuracy, latency, weights source, output checks")
    lines += ["", "## Load", ""]
    if "timm" in files:
        lines += [
            "timm (fine-tune with timm's training scripts / optimisers):",
            "",
            "```python",
            timm_snippet().rstrip(),
            "```",
            "",
            "or, with hwnas installed:",
            "",
            "```bash",
            'python -c "from hwnas.supernet.export import load_timm; m = load_timm(\'.\'); print(m)"',
            "```",
            "",
        ]
    if "torchscript" in files:
        lines += ["TorchScript:", "", "```python", "import torch", f"m = torch.jit.load('{files['torchscript']}')", "```", ""]
    if "onnx" in files:
        lines += [
            "ONNX Runtime:",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            f"s = ort.InferenceSession('{files['onnx']}')",
            f"logits = s.run(None, {{'input': np.zeros((1, 3, {r}, {r}), np.float32)}})[0]",
            "```",
            "",
        ]
    if "torch" in files:
        lines += [
            "PyTorch state dict (Once-for-All names) with hwnas:",
            "",
            "```python",
            "import json, torch",
            "from hwnas.spaces import create_space",
            "from hwnas.supernet.static import build_static",
            f"space = create_space('{meta['space']}')",
            "net = build_static(space, json.load(open('arch.json'))['arch'])",
            f"net.load_state_dict(torch.load('{files['torch']}', weights_only=True))",
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def export_arch(
    space: MBConvSpace,
    item: ExportItem | Any,
    out_dir: str | os.PathLike,
    weights: "WeightsSource | None" = None,
    formats: Sequence[str] = FORMATS,
    atol: float = 1e-4,
    timm_atol: float = 1e-5,
    opset: int = 17,
    overwrite: bool = False,
    name: str | None = None,
) -> Path:
    """Export one arch into ``out_dir/<name>``; returns that folder. See the module doc for the files."""
    if not isinstance(item, ExportItem):
        item = ExportItem(arch=item)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ExportError(f"formats {bad} are unknown; allowed formats: {list(FORMATS)}")
    if not isinstance(space, MBConvSpace):
        raise ExportError(f"space {getattr(space, 'name', space)!r}: export supports MBConv spaces (OFA-MobileNetV3, ProxylessNAS)")
    arch = space.validate(item.arch)
    weights = weights or WeightsSource()
    name = name or _arch_name(space, arch, item.name or "arch")
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists; pass overwrite=True (--overwrite) or choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp"))
    try:
        net = weights.subnet(space, arch).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, arch.r, arch.r, generator=g)
        with torch.no_grad():
            ref = net(x)
        files: dict[str, str] = {}
        checks: dict[str, float] = {}
        meta: dict[str, Any] = {
            "format": "hwnas.export/1",
            "name": name,
            "space": space.name,
            "space_config": space.to_config(),
            "arch": arch.to_dict(),
            "arch_str": arch.to_str(),
            "resolution": arch.r,
            "input_shape": [1, 3, arch.r, arch.r],
            "accuracy": {"value": item.accuracy, "kind": item.accuracy_kind, "metric": "top1"},
            "latency": {"value": item.latency, "kind": item.latency_kind, "unit": "ms"},
            "macs": int(space.macs(arch)),
            "params": int(sum(p.numel() for p in net.parameters())),
            "weights": weights.describe(),
            "extra": item.extra,
            "versions": {"torch": torch.__version__},
        }
        (tmp / "arch.json").write_text(json.dumps({"space": space.name, "arch": arch.to_dict(), "arch_str": arch.to_str()}, indent=1) + "\n")
        if "torch" in formats:
            torch.save(net.state_dict(), tmp / "model_state_dict.pth")
            files["torch"] = "model_state_dict.pth"
        if "torchscript" in formats:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = torch.jit.trace(net, x[:1], check_trace=False)
                ts.save(str(tmp / "model_torchscript.pt"))
                loaded = torch.jit.load(str(tmp / "model_torchscript.pt"))
                with torch.no_grad():
                    checks["torchscript_max_abs_diff"] = _check_close("TorchScript", ref, loaded(x), atol)
            files["torchscript"] = "model_torchscript.pt"
        if "timm" in formats:
            from .timm_export import to_timm

            tm, cfg, diff = to_timm(net, space, arch, atol=timm_atol)
            checks["timm_max_abs_diff"] = diff
            torch.save(tm.state_dict(), tmp / "timm_model.pth")
            (tmp / "timm_config.json").write_text(json.dumps(cfg, indent=1) + "\n")
            files["timm"] = "timm_model.pth"
            files["timm_config"] = "timm_config.json"
            meta["versions"]["timm"] = cfg.get("timm_version", "")
        if "onnx" in formats:
            checks["onnx_max_abs_diff"] = _export_onnx(net, x, ref, tmp / "model.onnx", meta, opset, atol)
            files["onnx"] = "model.onnx"
        meta["checks"] = {**checks, "atol": atol, "timm_atol": timm_atol}
        meta["files"] = files
        if "onnx" in formats:
            _write_onnx_metadata(tmp / "model.onnx", meta)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        (tmp / "README.md").write_text(_model_card(meta, files))
        if final.exists():
            old = out_dir / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _export_onnx(net: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path, meta: dict, opset: int, atol: float) -> float:
    import onnxruntime as ort

    from .onnx import export_onnx

    export_onnx(net, x[:1], path, opset=opset, output_name="logits", dynamic="auto", atol=atol)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    return _check_close("ONNX Runtime", ref, out, atol)


def _write_onnx_metadata(path: Path, meta: dict) -> None:
    from .onnx import write_metadata

    write_metadata(path, {
        "hwnas.space": meta["space"],
        "hwnas.arch": json.dumps(meta["arch"], sort_keys=True),
        "hwnas.arch_str": meta["arch_str"],
        "hwnas.resolution": str(meta["resolution"]),
        "hwnas.accuracy": json.dumps(meta["accuracy"]),
        "hwnas.latency": json.dumps(meta["latency"]),
        "hwnas.weights": json.dumps(meta["weights"]),
    })


# ============================================================================ many archs
def export_many(
    space: MBConvSpace,
    items: Sequence[ExportItem],
    out_dir: str | os.PathLike,
    weights: WeightsSource | None = None,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = False,
    progress: Any = None,
    **kw: Any,
) -> list[Path]:
    """Export every item; writes ``out_dir/index.json`` (name, arch_str, accuracy, latency per export)."""
    out = []
    index = []
    for i, it in enumerate(items):
        p = export_arch(space, it, out_dir, weights=weights, formats=formats, overwrite=overwrite, **kw)
        out.append(p)
        meta = json.loads((p / "metadata.json").read_text())
        index.append({k: meta[k] for k in ("name", "arch_str", "resolution", "accuracy", "latency", "checks")})
        if progress is not None:
            progress(i + 1, len(items), p)
    atomic_write(Path(out_dir) / "index.json", json.dumps({"space": space.name, "exports": index}, indent=1) + "\n")
    return out


def load_timm(folder: str | os.PathLike, num_classes: int | None = None) -> nn.Module:
    """The timm model of an export folder with its weights (eval mode). With ``num_classes`` different
    from the export's, the classifier is new (for fine-tuning) and the other weights are loaded."""
    from .timm_export import create_timm_model

    folder = Path(folder)
    cfg_path = folder / "timm_config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{folder} has no timm_config.json; export it with the 'timm' format")
    cfg = json.loads(cfg_path.read_text())
    model = create_timm_model(cfg, num_classes=num_classes)
    sd = torch.load(folder / "timm_model.pth", map_location="cpu", weights_only=True)
    if num_classes is not None and num_classes != cfg["num_classes"]:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        model.load_state_dict(sd, strict=False)
    else:
        model.load_state_dict(sd)
    return model.eval()
