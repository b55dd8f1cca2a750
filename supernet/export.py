"""Export subnets (the best archs of a search, its whole front, or single archs) as model folders.

One folder per arch, written into a temporary folder beside it and renamed into place when complete:

* ``arch.json`` — the arch (OFA dict), its compact string and the space (as data: registered name + options);
* ``model_state_dict.pth`` — the static subnet's state dict (Once-for-All tensor names);
* ``model_torchscript.pt`` — traced TorchScript (outputs checked against eager);
* ``model.onnx`` — ONNX with a free batch axis and, where the network allows, free height and width (``hwnas.dynamic_axes`` in ``metadata_props`` says which; outputs checked with ONNX Runtime);
* ``timm_model.pth`` + ``timm_config.json`` — the same network as a timm ``MobileNetV3`` /
  ``EfficientNet`` (outputs checked against the static subnet); ``register_timm(folder)`` makes it a
  ``timm.create_model`` name;
* ``metadata.json`` — arch, resolution, accuracy and latency (with their kind: predicted or measured),
  where the weights came from, their BN calibration, the output checks and versions;
* ``README.md`` — a model card with loading code.

Weights come from a supernet checkpoint (``get_active_subnet``) or, without one, from the static
network's random initialisation — then every file says so (``weights.trained = false``). A subnet
extracted from a supernet carries the *supernet's* BN statistics, which do not fit it (its accuracy
collapses): ``calib_data=<ImageFolder>`` re-computes them on ``calib_images`` training images before
export (Once-for-All's protocol), and trained weights without calibration are refused unless
``allow_uncalibrated=True`` — then every file says so (``weights.bn_calibrated = false``).

A rerun into the same folder skips the archs already exported with the same settings -- when every file
``metadata.json`` lists is there with its size and content, and ``metadata.json`` is as written; an
incomplete or edited folder is exported again, atomically --,
removes the temporary folders of killed runs, and refuses (naming the difference) a folder exported with
other settings unless ``overwrite=True``. Everything is checked before the output folder is created:
the space, the formats, and the accuracy (a fraction in [0, 1] or a percentage) and latency (ms, > 0) of
each arch; the JSON files are strict JSON (no NaN).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.predictors.assets import atomic_write, file_sha256, remove_stale_temps, replace_folder, temp_prefix
from hwnas.spaces.base import SearchSpace, SpaceError, create_space
from hwnas.spaces.errors import UserError, writable_dir
from hwnas.spaces.io import arch_key, check_recorded_space, read_arch_file, space_from_spec, space_spec
from hwnas.spaces.mbconv import MBConvSpace
from .checkpoint import torch_save

__all__ = [
    "CALIB_IMAGES",
    "ExportError",
    "ExportItem",
    "FORMATS",
    "WeightsSource",
    "check_exportable",
    "check_opset",
    "check_values",
    "export_arch",
    "export_many",
    "load_timm",
    "load_weights_source",
    "read_items",
]

FORMATS = ("torch", "torchscript", "onnx", "timm")
#: training images for BN re-calibration (Once-for-All: 2,000)
CALIB_IMAGES = 2000
#: the ONNX opsets torch's exporter writes
OPSETS = (7, 23)


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
    #: the device whose latency it is, where the source names it
    latency_device: str | None = None
    name: str = ""
    extra: dict = field(default_factory=dict)
    #: the weights a measured accuracy is of, as the source records them (data; see :func:`accuracy_mismatch`)
    accuracy_weights: Any = None


# ============================================================================ inputs
def _is_inline(text: str) -> bool:
    return text.startswith(("{", "[", "|")) or re.match(r"^r\d+:", text) is not None


def _budget_label(b: str) -> str:
    return "budget" + re.sub(r"[^0-9A-Za-z]+", "_", str(b)).strip("_")


def read_items(source: str | os.PathLike | Any, space: SearchSpace | str | None = None,
               select: str = "best") -> tuple[SearchSpace, list[ExportItem], list[str]]:
    """``(space, items, notes)``: what to export from ``source`` — a search run folder or its
    ``pareto.json``, an arch file (JSON, JSON lines, CSV; see :func:`hwnas.spaces.io.read_arch_file`),
    an arch string or an arch object. The file is read as data: its space is rebuilt through the space
    registry (:func:`hwnas.spaces.io.space_from_spec`), nothing named in it is imported.

    ``select="best"`` takes, from a ``pareto.json``, the best arch of each latency budget of the run
    (an arch best for several budgets once); ``"all"`` takes the whole front. ``notes`` are lines for the
    user (budgets no arch met). ``space`` (object or registered name) overrides the file's."""
    if select not in ("best", "all"):
        raise ExportError(f"select={select!r} is unknown; allowed: ['best', 'all']")
    if isinstance(space, str):
        space = create_space(space)
    text = os.fspath(source).strip() if isinstance(source, (str, os.PathLike)) else None
    if text is None or _is_inline(text):
        if space is None:
            raise ExportError("an arch given inline needs the space (--space NAME)")
        return space, [ExportItem(arch=space.validate(source))], []
    p = Path(text)
    notes: list[str] = []
    if p.is_dir():
        if (p / "pareto.json").is_file():
            p = p / "pareto.json"
        elif (p / "07_export" / "archs.json").is_file():  # a pipeline run: its final front, measured on the target
            p = p / "07_export" / "archs.json"
            notes.append(f"a pipeline run folder: exporting its final front, {p} (latencies measured on its target)")
        elif (p / "checkpoint.npz").is_file():  # a search stopped before it wrote its first front
            raise ExportError(f"{p} holds a search that has not written its front yet (checkpoint.npz, no pareto.json): "
                              "run the same search command again to resume it, then export")
        else:
            raise ExportError(f"{p} is a folder without pareto.json; give a search run folder, a pipeline run folder, "
                              "a pareto.json or an arch file")
    if not p.exists():
        raise ExportError(f"{p} does not exist; give a search run folder, a pareto.json, an arch file or an arch string")
    header, rows = read_arch_file(p, "pareto.json" if p.name == "pareto.json" else "arch file")
    acc_kind, lat_kind, device = _recorded_values(header)
    values = header.get("values") if isinstance(header.get("values"), dict) else {}
    acc_weights = (values.get("accuracy") or {}).get("weights") if isinstance(values.get("accuracy"), dict) else None
    partial = header.get("partial") is True
    if partial:
        notes.append(f"{p} is the front of an unfinished search (interrupted): rerun the search command to finish it; "
                     "this export is of the front so far (marked partial_search in its files)")
    if space is None:
        if "space" not in header:
            raise ExportError(f"{p} does not name its space; pass the space name (--space NAME)")
        space = space_from_spec(header["space"], p)
    else:
        _check_same_space(space, header.get("space"), p)
    items = []
    for i, row in enumerate(rows):
        where = f"{p} entry {i}"
        arch = _row_arch(space, row, where)
        extra = {k: v for k, v in row.items() if k not in ("arch", "arch_str", "accuracy", "latency")}
        measured = row.get("latency") is None and row.get("latency_measured") is not None  # a pipeline's archs.json
        fitted = measured and row.get("latency_fitted") is True  # a dataset target's fit of an arch it does not hold
        latency = _number(row.get("latency_measured") if measured else row.get("latency"), f"{where} latency")
        items.append(ExportItem(arch, _number(row.get("accuracy"), f"{where} accuracy"), latency, name=f"rank{i:03d}", extra=extra,
                                accuracy_kind=acc_kind, latency_kind="measured" if measured and not fitted else lat_kind,
                                latency_device=device))
    if isinstance(header.get("target"), dict):  # the device the latencies were measured on
        for it in items:
            it.extra.setdefault("target", header["target"])
    if partial:
        for it in items:
            it.extra["partial_search"] = True
    for it in items:
        it.accuracy_weights = acc_weights
    if select == "all" or "budgets" not in header:
        return space, items, notes
    best = header.get("best") or {}
    if not isinstance(best, dict) or not best:
        raise ExportError(
            f"{p} has no budgets (the search ran without search.budgets), so there is no best arch per budget; "
            f"export the front with --all ({len(items)} archs) or a part of it with --top K / --select i,j"
        )
    chosen: dict[str, ExportItem] = {}
    # (notes: a line per budget no arch met, after what the source said)
    for b, row in best.items():
        if row is None:
            notes.append(f"budget {b}: no arch of the front meets it; nothing to export for it")
            continue
        where = f"{p} best[{b!r}]"
        if not isinstance(row, dict):
            raise ExportError(f"{where} is {type(row).__name__}, not an entry with arch, accuracy and latency")
        arch = _row_arch(space, row, where)
        lat, budget = _number(row.get("latency"), f"{where} latency"), _number(b, f"{where}: the budget")
        if lat is not None and budget is not None and lat > budget * (1 + 1e-9):
            raise ExportError(f"{where}: its latency {lat:g} is above the budget {b}; the file was edited, or is not a "
                              "search's results -- search again (search.overwrite=true) or export the front with --all")
        key = arch_key(space, arch)
        if key in chosen:
            chosen[key].extra["budgets"].append(b)
            continue
        chosen[key] = ExportItem(arch, _number(row.get("accuracy"), f"{where} accuracy"), lat, name=_budget_label(b),
                                 extra={"budgets": [b], **({"partial_search": True} if partial else {})}, accuracy_kind=acc_kind, latency_kind=lat_kind,
                                 latency_device=device, accuracy_weights=acc_weights)
    if not chosen:
        raise ExportError(f"{p}: no arch meets any budget of the run ({list(best)}); export the front with --all")
    return space, list(chosen.values()), notes


def _recorded_values(header: dict) -> tuple[str, str, str | None]:
    """(accuracy kind, latency kind, latency device) as the source records them: a search's ``values``
    (:func:`hwnas.predictors.base.provenance`), a pipeline's ``target``; read as data, only known kinds and
    short strings are taken."""
    def field(d: Any, key: str) -> Any:
        return d.get(key) if isinstance(d, dict) else None

    values = header.get("values")
    acc, lat = field(values, "accuracy"), field(values, "latency")
    kinds = [k if k in ("predicted", "measured") else "predicted" for k in (field(acc, "kind"), field(lat, "kind"))]
    target = header.get("target")
    device = field(lat, "device") or field(target, "device") or field(target, "plan_device")
    device = device if isinstance(device, str) and 0 < len(device) <= 100 else None
    return kinds[0], kinds[1], device


def _check_same_space(space: SearchSpace, spec: Any, p: Path) -> None:
    """Refuse a space given for a file of another space (the same arch strings would build other networks,
    labelled with the file's accuracy and latency). Options of the same space (a reduced one) are allowed."""
    try:
        check_recorded_space(space, spec, p, "the file",
                             "leave out --space to export them in their own space, or give a file of the space given")
    except SpaceError as exc:
        raise ExportError(str(exc)) from None


def _number(v: Any, what: str = "value") -> float | None:
    """A number of a results file (None when absent); a value that is not one is one error naming ``what``."""
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ExportError(f"{what} is {v!r}, not a number")
    try:
        return float(v)
    except ValueError:
        raise ExportError(f"{what} is {v!r}, not a number") from None


def _row_arch(space: SearchSpace, row: dict, where: str) -> Any:
    """The arch of a results row, checked against its ``arch_str`` when it has one (an edit of one of the two
    would export one network under the other's name)."""
    try:
        arch = space.validate(row["arch"])
        text = row.get("arch_str")
        if text not in (None, "") and arch_key(space, space.validate(text)) != arch_key(space, arch):
            raise ExportError(f"{where}: arch and arch_str are two different archs; the file was edited -- restore it, "
                              "or search again")
    except (SpaceError, KeyError) as exc:
        raise SpaceError(f"{where}: {exc}") from None
    return arch


# ============================================================================ weights
@dataclass
class WeightsSource:
    """Where subnet weights come from: a loaded supernet, or random initialisation; and the BN
    re-calibration applied to every extracted subnet (a :class:`~hwnas.supernet.data.CalibrationSet`)."""

    supernet: nn.Module | None = None
    checkpoint: str = ""
    calibration: Any = None
    #: the checkpoint file's contents (:func:`~hwnas.predictors.fingerprint.file_fingerprint`): an export
    #: folder of the same path retrained is another export, not "already exported"
    checkpoint_fingerprint: str = ""

    @property
    def trained(self) -> bool:
        return self.supernet is not None

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def subnet(self, space: MBConvSpace, arch: Any) -> nn.Module:
        if self.supernet is not None:
            net = self.supernet.get_active_subnet(arch).eval()
        else:
            from .static import build_static

            # untrained: the random initialisation is seeded by the arch, so an arch exported twice has the same
            # weights (and files); the caller's random state is left as it was
            seed = int(hashlib.sha1(arch_key(space, arch).encode()).hexdigest()[:8], 16)
            from hwnas.predictors.threads import torch_seeded

            with torch_seeded(seed):
                net = build_static(space, arch).eval()
        if self.calibration is not None:  # on the GPU when there is one, then back for the export
            from .data import default_device

            device = default_device()
            self.calibration.calibrate(net.to(device), arch.r, device)
            net.cpu()
        return net.eval()

    def describe(self) -> dict:
        bn = self.calibration.describe() if self.calibration is not None else None
        if self.trained:
            d = {"trained": True, "source": "supernet checkpoint", "checkpoint": self.checkpoint,
                 "checkpoint_fingerprint": self.checkpoint_fingerprint}
        else:
            d = {"trained": False, "checkpoint": None,
                 "source": "random initialisation (NOT trained: fine-tune or pass a supernet checkpoint before use)"}
        d["bn_calibrated"] = bn is not None
        d["bn_calibration"] = bn
        if self.trained and bn is None:
            d["warning"] = ("BN statistics NOT re-calibrated: they are the supernet's, which do not fit this subnet "
                            "(accuracy may collapse); export again with --calib-data <ImageFolder>")
        return d


def load_weights_source(space: MBConvSpace, checkpoint: str | os.PathLike | None = None, mirror: str | None = None) -> WeightsSource:
    """A supernet of ``space`` with ``checkpoint`` loaded (path, official OFA name or asset path; its
    classifier size is taken from the file); with no checkpoint, the static networks' initial weights
    (flagged untrained)."""
    if checkpoint in (None, ""):
        return WeightsSource()
    from .checkpoint import load_state, read_state_dict, resolve_checkpoint
    from .elastic import ElasticMBConvNet

    path = resolve_checkpoint(checkpoint, mirror)
    state = read_state_dict(path)
    head = state.get("classifier.linear.weight")
    net = ElasticMBConvNet(space, n_classes=int(head.shape[0]) if head is not None and head.dim() == 2 else None)
    load_state(net, state, path)
    net.eval()
    from hwnas.predictors.fingerprint import file_fingerprint

    return WeightsSource(net, str(path), checkpoint_fingerprint=file_fingerprint(path))


def recorded_calibration(recorded: Any) -> dict:
    """The calibration settings (``n_images``, ``seed``, ``batch_size``) a search's measured accuracies were
    computed with, from its ``pareto.json`` (data: only whole numbers in range are taken), for an export to
    calibrate as the search did."""
    from hwnas.spaces.checks import is_whole

    cal = recorded.get("calibration") if isinstance(recorded, dict) else None
    if not isinstance(cal, dict):
        return {}
    out = {"n_images": cal.get("n_requested"), "seed": cal.get("seed"), "batch_size": cal.get("batch_size")}
    return {k: int(v) for k, v in out.items() if is_whole(v) and 0 <= v <= 10**9 and (k == "seed" or v >= 1)}


def accuracy_mismatch(recorded: Any, weights: WeightsSource) -> str | None:
    """Why the accuracies a search measured are not those of ``weights`` (another checkpoint, untrained
    weights, BN statistics re-calibrated otherwise or not at all), or None when they are, or when the
    search recorded nothing to compare with (older results, predicted accuracies)."""
    if not isinstance(recorded, dict):
        return None
    ck = recorded.get("checkpoint") if isinstance(recorded.get("checkpoint"), str) else None
    fp = recorded.get("checkpoint_fingerprint")
    what = f"checkpoint {ck}" if ck else "a randomly initialised supernet"
    if not weights.trained:
        return f"the search measured them with {what}; these weights are untrained (no --checkpoint)"
    if fp != weights.checkpoint_fingerprint:
        return f"the search measured them with {what}; --checkpoint {weights.checkpoint} has other contents"
    cal = recorded.get("calibration")
    if weights.calibration is None:
        return "the search re-calibrated BN statistics; these weights are not re-calibrated (--no-calib)"
    mine = weights.calibration.identity() if hasattr(weights.calibration, "identity") else None
    if isinstance(cal, dict) and mine is not None:
        diff = [k for k in ("data", "n_images", "seed", "batch_size") if cal.get(k) != mine.get(k)]
        if diff:
            return (f"the search re-calibrated BN statistics otherwise ({', '.join(f'{k} {cal.get(k)!r} there, {mine.get(k)!r} here' for k in diff)})")
    return None


def _calibration(calib_data: Any, calib_images: int | None, recorded: Any = None) -> Any:
    """The calibration images: ``calib_images`` of them (None: as many as the search whose accuracies are
    exported used, with its seed and batches -- :func:`recorded_calibration` -- else :data:`CALIB_IMAGES`)."""
    from .data import CalibrationSet, train_folder

    if isinstance(calib_data, CalibrationSet):
        return calib_data
    rec = recorded_calibration(recorded)
    n = calib_images if calib_images is not None else rec.get("n_images", CALIB_IMAGES)
    return CalibrationSet(train_folder(calib_data), n_images=n, seed=rec.get("seed", 0), batch_size=rec.get("batch_size", 100))


# ============================================================================ export of one arch
def check_values(accuracy: Any, latency: Any, where: str) -> None:
    """Refuse what would be written as an arch's top-1 accuracy or latency and is none: NaN, infinity, an
    accuracy outside [0, 100] (a fraction in [0, 1], or a percentage), a latency <= 0 ms. None (unknown) is
    allowed. One :class:`ExportError` naming ``where`` (the flag or the arch)."""
    def num(v: Any) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return math.nan
        return float(v)

    a, lat = num(accuracy), num(latency)
    if a is not None and not (math.isfinite(a) and 0.0 <= a <= 100.0):
        raise ExportError(f"{where}: accuracy {accuracy!r} is not a top-1 accuracy; give a fraction in [0, 1] (e.g. 0.781) "
                          "or a percentage in [0, 100], or leave it out")
    if lat is not None and not (math.isfinite(lat) and lat > 0.0):
        raise ExportError(f"{where}: latency {latency!r} is not a latency; give a positive number of ms, or leave it out")


def check_exportable(space: Any, formats: Sequence[str] | str) -> None:
    """Refuse a space export cannot build networks of, or unknown formats (before anything is written)."""
    formats = as_formats(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"formats {list(formats)}: unknown {bad}; allowed formats: {list(FORMATS)}")
    if not isinstance(space, MBConvSpace):
        raise ExportError(f"space {getattr(space, 'name', space)!r}: export supports MBConv spaces (OFA-MobileNetV3, ProxylessNAS); "
                          "NAS-Bench-201 and FBNet archs are exported as arch files only")


def as_formats(formats: Sequence[str] | str) -> list[str]:
    """``formats`` as a list: a string is one format or a comma list (``"torch"`` was read letter by letter)."""
    if isinstance(formats, str):
        return [f.strip() for f in formats.split(",") if f.strip()]
    return list(formats)


def _dumps(obj: Any, what: str) -> str:
    """Strict JSON (no NaN or infinity: other readers refuse them)."""
    try:
        return json.dumps(obj, indent=1, default=str, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ExportError(f"{what}: {exc} (NaN or infinity); fix the value in the input") from None


def check_opset(opset: Any, field: str = "opset=") -> int:
    """``opset`` as an int torch can write; else one error naming ``field`` as written (``opset=`` in Python,
    ``--opset `` on the command line)."""
    try:
        v = int(opset)
    except (TypeError, ValueError):
        v = -1
    if not OPSETS[0] <= v <= OPSETS[1] or str(v) != str(opset).strip():
        shown = repr(opset) if field.endswith("=") else str(opset)
        raise ExportError(f"{field}{shown} is not an ONNX opset torch can write; give one in {OPSETS[0]}..{OPSETS[1]} "
                          f"(e.g. {field}17)")
    return v


def _check_close(name: str, ref: torch.Tensor, got: np.ndarray | torch.Tensor, atol: float) -> float:
    from .onnx import output_diff

    got_n = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ok, diff, scale = output_diff(ref.detach().numpy(), got_n, atol)
    if not ok:
        raise ExportError(f"{name} output differs from the PyTorch subnet by {diff:.3g} (atol {atol:g} x scale {scale:.3g})")
    return diff


def _arch_name(space: SearchSpace, arch: Any, prefix: str = "") -> str:
    h = hashlib.sha1(arch_key(space, arch).encode()).hexdigest()[:8]
    return f"{prefix + '_' if prefix else ''}r{arch.r}_{h}"


def _fmt(v: float | None, kind: str, unit: str = "", device: str | None = None) -> str:
    if v is None:
        return "unknown"
    how = f"{kind}, on {device}" if device else kind
    if unit == "%" and abs(v) <= 1.0:
        return f"{v * 100:.2f}% ({how})"
    suffix = "%" if unit == "%" else (f" {unit}" if unit else "")
    return f"{v:.4g}{suffix} ({how})"


def _model_card(meta: dict, files: dict[str, str]) -> str:
    w = meta["weights"]
    warn = []
    if not w["trained"]:
        warn.append("> **Warning: these weights are NOT trained** (random initialisation of the static network). "
                    "Fine-tune before use, or export again with a supernet checkpoint (`--checkpoint`).")
    elif not w["bn_calibrated"]:
        warn.append(f"> **Warning: {w['warning']}.**")
    if (meta.get("extra") or {}).get("partial_search"):
        warn.append("> **Note: this arch is from the front of an unfinished search** (it was interrupted); the finished "
                    "search may find better ones.")
    r = meta["resolution"]
    bn = w["bn_calibration"]
    lines = [
        f"# {meta['name']}: {meta['space']} subnet at {r}x{r}",
        "",
        *warn,
        "",
        f"- arch: `{meta['arch_str']}`",
        f"- top-1: {_fmt(meta['accuracy']['value'], meta['accuracy']['kind'], '%')}; "
        f"latency: {_fmt(meta['latency']['value'], meta['latency']['kind'], meta['latency'].get('unit', ''), meta['latency'].get('device'))}",
        f"- MACs: {meta['macs'] / 1e6:.1f} M; parameters: {meta['params'] / 1e6:.2f} M",
        f"- weights: {w['source']}" + (f" (`{w['checkpoint']}`)" if w.get("checkpoint") else ""),
        "- BN statistics: " + (f"re-calibrated on {bn['n_images']} training images of `{bn['data']}`" if bn
                               else "not re-calibrated"),
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
    lines.append("- `metadata.json`: arch, resolution, accuracy, latency, weights source, BN calibration, output checks")
    lines += ["", "## Load", ""]
    if "timm" in files:
        lines += [
            "timm (`register_timm` makes this folder a timm model name; fine-tune it with timm's scripts). Import hwnas "
            "first: it makes `import timm` work next to a torch / torchvision pair of mismatched builds:",
            "",
            "```python",
            "from hwnas.supernet.timm_export import register_timm",
            "import timm",
            "",
            f"name = register_timm('.')   # '{meta['timm_name']}'",
            "model = timm.create_model(name, pretrained=True).eval()     # these weights",
            "finetune = timm.create_model(name, pretrained=True, num_classes=10)   # a new classifier, to fine-tune",
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
            "from hwnas.spaces.io import space_from_spec",
            "from hwnas.supernet.static import build_static",
            "info = json.load(open('arch.json'))",
            "net = build_static(space_from_spec(info['space']), info['arch'], n_classes=info['num_classes'])",
            f"net.load_state_dict(torch.load('{files['torch']}', weights_only=True))",
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _request(space: SearchSpace, item: ExportItem, arch: Any, weights: WeightsSource, formats: Sequence[str], opset: int) -> dict:
    """What an export folder was made from; a rerun with the same request skips the folder."""
    return {
        "arch": arch_key(space, arch),
        "formats": sorted(formats),
        "opset": opset if "onnx" in formats else None,
        "weights": {k: v for k, v in weights.describe().items()
                    if k in ("checkpoint", "checkpoint_fingerprint", "bn_calibration")},
        "accuracy": [item.accuracy, item.accuracy_kind],
        "latency": [item.latency, item.latency_kind] + ([item.latency_device] if item.latency_device else []),
        **({"partial_search": True} if item.extra.get("partial_search") else {}),
    }


def _is_done(final: Path, request: dict) -> bool:
    """Whether ``final`` already holds this export, whole (every file it lists, with its size); False when
    it is this export with a file missing or cut (exported again); raises when it holds another one."""
    try:
        meta = json.loads((final / "metadata.json").read_text())
        old = meta.get("request")
    except (OSError, ValueError, AttributeError):
        raise ExportError(f"{final} exists but is not a complete hwnas export (no readable metadata.json); "
                          "remove it, or pass --overwrite") from None
    if old == request:
        return not missing_files(final, meta)
    diff = sorted(k for k in request if not isinstance(old, dict) or old.get(k) != request[k])
    raise ExportError(f"{final} was exported with other settings ({', '.join(diff) or 'an older hwnas'}); "
                      "pass --overwrite to replace it, or choose another output folder (--out)")


def missing_files(folder: Path, meta: dict) -> list[str]:
    """The files of export ``folder`` (``metadata.json`` read as ``meta``) that are missing, or of another size
    or content than when written (``file_bytes``, ``file_sha256``; exports of an older hwnas record neither),
    and ``metadata.json`` itself when its content was changed (``metadata_sha256``)."""
    files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    sizes = meta.get("file_bytes") if isinstance(meta.get("file_bytes"), dict) else {}
    digests = meta.get("file_sha256") if isinstance(meta.get("file_sha256"), dict) else {}
    out = [] if meta.get("metadata_sha256", _meta_digest(meta)) == _meta_digest(meta) else ["metadata.json"]
    for f in dict.fromkeys(["arch.json", "README.md", *files.values()]):
        try:
            n = (folder / f).stat().st_size
        except OSError:
            out.append(f)
            continue
        if (f in sizes and sizes[f] != n) or (f in digests and digests[f] != file_sha256(folder / f)):
            out.append(f)
    return out


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
    allow_uncalibrated: bool = False,
) -> Path:
    """Export one arch into ``out_dir/<name>``; returns that folder. See the module doc for the files."""
    return _export_one(space, item, out_dir, weights, formats, atol, timm_atol, opset, overwrite, name, allow_uncalibrated)[0]


def _export_one(space, item, out_dir, weights, formats, atol, timm_atol, opset, overwrite, name,
                allow_uncalibrated) -> tuple[Path, bool]:
    if not isinstance(item, ExportItem):
        item = ExportItem(arch=item)
    formats = as_formats(formats)
    check_exportable(space, formats)
    check_values(item.accuracy, item.latency, f"arch {item.name or item.arch}")
    opset = check_opset(opset)
    weights = weights or WeightsSource()
    if weights.trained and not weights.calibrated and not allow_uncalibrated:
        raise ExportError(
            "subnets extracted from a supernet need their BN statistics re-calibrated, or their accuracy collapses: "
            "give training images (--calib-data <ImageFolder>, export.calib_data=...), or export the supernet's "
            "statistics anyway, flagged in every file (--no-calib, allow_uncalibrated=True)"
        )
    arch = space.validate(item.arch)
    name = name or _arch_name(space, arch, item.name or "arch")
    out_dir = Path(out_dir)
    final = out_dir / name
    request = _request(space, item, arch, weights, formats, opset)
    if final.exists() and not overwrite and _is_done(final, request):
        return final, True
    writable_dir(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=temp_prefix(name), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; give them the usual permissions
        _write_export(tmp, space, item, arch, weights, formats, atol, timm_atol, opset, name, request)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False


def _write_export(tmp: Path, space, item: ExportItem, arch, weights: WeightsSource, formats, atol: float,
                  timm_atol: float, opset: int, name: str, request: dict) -> None:
    net = weights.subnet(space, arch).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, arch.r, arch.r, generator=g)
    with torch.no_grad():
        ref = net(x)
    n_classes = int(ref.shape[1])
    files: dict[str, str] = {}
    checks: dict[str, float] = {}
    spec = space_spec(space)
    meta: dict[str, Any] = {
        "format": "hwnas.export/2",
        "name": name,
        "space": space.name,
        "space_spec": spec,
        "arch": arch.to_dict(),
        "arch_str": arch.to_str(),
        "resolution": arch.r,
        "input_shape": [1, 3, arch.r, arch.r],
        "num_classes": n_classes,
        "accuracy": {"value": item.accuracy, "kind": item.accuracy_kind, "metric": "top1"},
        "latency": {"value": item.latency, "kind": item.latency_kind, "unit": "ms",
                    **({"device": item.latency_device} if item.latency_device else {})},
        "macs": int(space.macs(arch)),
        "params": int(sum(p.numel() for p in net.parameters())),
        "weights": weights.describe(),
        "extra": item.extra,
        "request": request,
        "versions": {"torch": torch.__version__},
    }
    (tmp / "arch.json").write_text(_dumps({"space": spec, "arch": arch.to_dict(), "arch_str": arch.to_str(),
                                           "num_classes": n_classes, "weights": meta["weights"]}, f"{name}/arch.json"))
    if "torch" in formats:
        torch_save(net.state_dict(), tmp / "model_state_dict.pth")
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
        from .timm_export import timm_model_name, to_timm

        tm, cfg, diff = to_timm(net, space, arch, atol=timm_atol)
        cfg["timm_name"] = meta["timm_name"] = timm_model_name(name)
        cfg["weights"] = meta["weights"]
        checks["timm_max_abs_diff"] = diff
        torch_save(tm.state_dict(), tmp / "timm_model.pth")
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
    card = _model_card(meta, files)
    (tmp / "README.md").write_text(card)
    # the sizes of what metadata.json lists: a rerun re-exports a folder whose file went missing or was cut
    listed = ["arch.json", "README.md", *files.values()]
    meta["file_bytes"] = {f: (tmp / f).stat().st_size for f in listed}
    # and their contents, and metadata.json's own (an edited accuracy there was "already exported")
    meta["file_sha256"] = {f: file_sha256(tmp / f) for f in listed}
    meta["metadata_sha256"] = _meta_digest(meta)
    (tmp / "metadata.json").write_text(_dumps(meta, f"{name}/metadata.json"))


def _meta_digest(meta: dict) -> str:
    """The digest of ``metadata.json``'s content (its JSON, keys sorted, without this field)."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    progress: Callable[[int, int, Path, bool], None] | None = None,
    calib_data: Any = None,
    calib_images: int | None = None,
    allow_uncalibrated: bool = False,
    atol: float = 1e-4,
    timm_atol: float = 1e-5,
    opset: int = 17,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Export every item into ``out_dir`` (one folder each) and write ``out_dir/index.json`` (name,
    arch_str, accuracy, latency, checks of every export in the folder, earlier calls' too; rewritten after every arch).

    ``calib_data``: an ImageFolder (or a root with ``train/``) whose first ``calib_images`` images (a
    fixed random subset) re-calibrate every subnet's BN statistics before export (``calib_images`` None: as
    many, with the seed and batches, as the search that measured the items' accuracies, else
    :data:`CALIB_IMAGES`). Trained weights without it are refused unless ``allow_uncalibrated``. Measured
    accuracies of other weights than these (:func:`accuracy_mismatch`) are not written as the exports' top-1:
    each records the value as ``search_accuracy`` and ``note`` is told why. Archs already exported into ``out_dir`` with
    the same settings are skipped (so a killed export resumes); temporary folders of killed runs are
    removed. ``progress(i, n, folder, skipped)`` is called after each arch.

    The space, the formats and every item's accuracy and latency are checked before ``out_dir`` is
    created; a failed call leaves no empty ``out_dir`` it created."""
    formats = as_formats(formats)
    check_exportable(space, formats)
    for i, it in enumerate(items):
        if isinstance(it, ExportItem):
            check_values(it.accuracy, it.latency, f"arch {it.name or it.arch}")
    check_opset(opset)
    created = not Path(out_dir).exists()
    out_dir = writable_dir(out_dir)
    try:
        remove_stale_temps(out_dir)  # what killed exports left
        weights = weights or WeightsSource()
        recorded = next((it.accuracy_weights for it in items if isinstance(it, ExportItem) and it.accuracy_kind == "measured"
                         and it.accuracy is not None and it.accuracy_weights is not None), None)
        if calib_data not in (None, ""):
            weights = dataclasses.replace(weights, calibration=_calibration(calib_data, calib_images, recorded))  # (keeps
            # the checkpoint's fingerprint: a retrained checkpoint at the same path is another export)
        why = accuracy_mismatch(recorded, weights)
        if why is not None:
            items = [dataclasses.replace(it, accuracy=None, extra={**it.extra, "search_accuracy": it.accuracy})
                     if isinstance(it, ExportItem) and it.accuracy_kind == "measured" and it.accuracy is not None else it
                     for it in items]
            if note is not None:
                note(f"the top-1 accuracies of the search are not those of the exported weights: {why}; each export records "
                     "the search's value as search_accuracy and its top-1 as unknown (export the weights the search measured, "
                     "or give --accuracy)")
        _check_index(out_dir / "index.json")
        out = []
        for i, it in enumerate(items):
            p, skipped = _export_one(space, it, out_dir, weights, formats, atol, timm_atol, opset, overwrite, None,
                                     allow_uncalibrated)
            out.append(p)
            _write_index(out_dir, space)
            if progress is not None:
                progress(i + 1, len(items), p, skipped)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # this call made it and nothing was written into it
        raise
    return out


def _check_index(path: Path) -> None:
    """An ``index.json`` already in the output folder must be an export index (it is rewritten): a file of
    the user's own is refused, not replaced."""
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and isinstance(data.get("exports"), list) and "space" in data
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise ExportError(f"{path} exists and is not an hwnas-export index (which an export rewrites); give another "
                          "output folder (--out), or move the file")


def _write_index(out_dir: Path, space: SearchSpace) -> None:
    """``index.json``: every complete export in ``out_dir`` (earlier calls' too), by latency then name."""
    rows = []
    for d in sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            meta = json.loads((d / "metadata.json").read_text())
            rows.append({k: meta[k] for k in ("name", "arch_str", "resolution", "accuracy", "latency", "checks")})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an export folder (or one being written): not listed
    def order(r: dict) -> tuple:
        lat = (r.get("latency") or {}).get("value") if isinstance(r.get("latency"), dict) else None
        return (lat is None, lat if isinstance(lat, (int, float)) else 0.0, str(r.get("name")))

    rows.sort(key=order)
    atomic_write(out_dir / "index.json", _dumps({"space": space_spec(space), "exports": rows}, "index.json"))


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
