"""Progressive-shrinking training of an OFA supernet (``hwnas-train``, hydra-configured).

Phases (Once-for-All): the full network, then elastic **kernel**, then elastic **depth**, then elastic
**expand** (the middle channels are sorted by importance at the start of each expand phase). Every step
uses *sandwich sampling* — the largest subnet of the phase, the smallest, and ``n_random`` random ones
— with *in-place distillation*: the largest subnet learns from the labels and every other subnet also
from the largest subnet's soft predictions of the same batch. Each batch runs at one resolution drawn
from the space's resolutions (images are loaded at the largest and resized on the device).

Checkpoints (``<out>/last.pth``: weights, optimizer, step, RNG states) are written atomically every
``checkpoint.every`` steps; a run started in the same ``out`` directory resumes from the saved step
(a checkpoint of another network, or a damaged one, is refused in one line and left untouched).
The final weights are also written as ``<out>/supernet.pth`` (``{"state_dict": ...}``, OFA's format, with
``"hwnas_space"``: the space as a JSON string, which ``python -m hwnas.supernet.evaluate`` reads); a finished
run started again says so, trains nothing and leaves both files as they are (``supernet.pth`` is written again
only when it is missing or differs).
The space comes from the same ``space`` config group as ``hwnas-search`` and is built by
:func:`hwnas.predictors.build.build_space`.

    hwnas-train space=ofa_mbv3_w10 data.train=/datasets/imagenet/train train.batch_size=256
    hwnas-train --config-name smoke                     # a tiny synthetic CPU run (about half a minute)
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hwnas.predictors.assets import remove_stale_temps
from hwnas.predictors.build import build_space, plain
from hwnas.predictors.fingerprint import differences
from hwnas.predictors.threads import torch_threads
from hwnas.spaces.errors import UserError, check_section, cli_errors, run_hydra, writable_dir
from hwnas.spaces.checks import check_bool, check_int, check_number, is_whole
from hwnas.spaces.mbconv import MBConvArch, MBConvSpace

from .checkpoint import (CheckpointError, load_state, match_state_dict, other_classifier, read_state_dict,
                         resolve_checkpoint, save_checkpoint)
from .data import ImageFolderSource, default_device, loader_workers, normalize, train_transform
from .elastic import ElasticMBConvNet

log = logging.getLogger("hwnas.train")

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "conf" / "train")
CONFIG_NAME = "default"


class TrainConfigError(UserError, ValueError):
    """A training setting is invalid; the message names the key and the fix."""


# ============================================================================ data
class SyntheticColours(Dataset):
    """A learnable toy task: each class is a noisy image of one fixed random colour (uint8 CHW)."""

    def __init__(self, n: int = 512, n_classes: int = 4, size: int = 32, noise: float = 40.0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.colours = torch.randint(0, 256, (n_classes, 3, 1, 1), generator=g).float()
        self.labels = torch.randint(0, n_classes, (n,), generator=g)
        self.noise = torch.randn(n, 3, size, size, generator=g) * noise
        self.n_classes = n_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        y = int(self.labels[i])
        x = (self.colours[y] + self.noise[i]).clamp(0, 255).to(torch.uint8)
        return x, y


def build_data(cfg: dict, r_max: int, seed: int) -> tuple[Dataset, int, str | None]:
    """The training dataset (uint8 images at ``r_max``), its number of classes, and the fingerprint of its
    images (an ImageFolder's: :meth:`ImageFolderSource.fingerprint`; None for synthetic data)."""
    kind = cfg.get("kind", "imagefolder")
    if kind == "synthetic":
        ds = SyntheticColours(n=int(cfg.get("n", 512)), n_classes=int(cfg.get("n_classes", 4)), size=r_max, seed=seed)
        return ds, ds.n_classes, None
    if kind == "imagefolder":
        if cfg.get("train") in (None, "", "???"):
            raise TrainConfigError("data.train is not set; give an ImageFolder root (data.train=/path/to/imagenet/train) or data.kind=synthetic")
        src = ImageFolderSource(cfg["train"])
        return src.view(train_transform(r_max)), src.n_classes, src.fingerprint()
    raise TrainConfigError(f"data.kind={kind!r} is not allowed; allowed values: ['imagefolder', 'synthetic']")


def batches_from(ds: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int = 0) -> Iterator:
    """Endless shuffled batches; epoch ``k`` uses permutation ``seed + k``, so a run resumed at
    ``start_step`` sees exactly the batches an uninterrupted run would."""
    n = len(ds)
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        if n >= batch_size:
            chunks = [perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch)]
        else:
            chunks = [perm]
        loader = DataLoader(ds, batch_sampler=chunks[offset:], num_workers=num_workers,
                            generator=torch.Generator().manual_seed(seed + epoch))
        yield from loader
        epoch, offset = epoch + 1, 0


# ============================================================================ phases / sampling
@dataclass
class Phase:
    name: str
    steps: int
    kernel: list[int]
    expand: list[int]
    depth: list[int]
    lr: float
    reorganize: int | None = None  # expand_ratio_stage for re_organize_middle_weights at phase start


def parse_phases(cfg_phases: Sequence[dict], net: ElasticMBConvNet) -> list[Phase]:
    phases = []
    for i, p in enumerate(cfg_phases):
        p = dict(p)
        try:
            ph = Phase(
                name=str(p.get("name", f"phase{i}")),
                steps=int(p["steps"]),
                kernel=sorted(int(k) for k in p.get("kernel", net.kernel_choices)),
                expand=sorted(int(e) for e in p.get("expand", net.expand_choices)),
                depth=sorted(int(d) for d in p.get("depth", [max(net.layout)])),
                lr=float(p.get("lr", 0.0)),
                reorganize=None if p.get("reorganize") is None else int(p["reorganize"]),
            )
        except KeyError as exc:
            raise TrainConfigError(f"train.phases[{i}] has no {exc.args[0]!r}; each phase needs steps (and kernel/expand/depth lists)") from None
        # a schedule written for one space (OFA's, in the configs) serves another: choices the space does
        # not have are left out of the phase, and said; a phase left with none of its choices is an error
        for field, allowed in (("kernel", net.kernel_choices), ("expand", net.expand_choices)):
            got = getattr(ph, field)
            keep = [v for v in got if v in allowed]
            if not keep:
                raise TrainConfigError(f"train.phases[{i}].{field}={got}: none is a choice of space {net.space.name}; "
                                       f"allowed: {list(allowed)}")
            if len(keep) < len(got):
                log.warning("train.phases[%d] (%s): %s %s not choices of space %s (%s); the phase samples %s",
                            i, ph.name, field, [v for v in got if v not in allowed], net.space.name, list(allowed), keep)
                setattr(ph, field, keep)
        if ph.reorganize is not None and ph.reorganize > len(ph.expand) - 1:
            # the staged channel ordering keeps the widths of the smaller expand ratios already trained
            ph.reorganize = len(ph.expand) - 1
        if ph.steps < 0:
            raise TrainConfigError(f"train.phases[{i}].steps={ph.steps} must be >= 0")
        phases.append(ph)
    if not phases or sum(p.steps for p in phases) == 0:
        raise TrainConfigError("train.phases is empty; give at least one phase with steps > 0")
    return phases


class PhaseSampler:
    """Sample subnets allowed in a phase (kernel/expand/depth lists intersected with the space)."""

    def __init__(self, net: ElasticMBConvNet, phase: Phase, rng: random.Random) -> None:
        self.net, self.phase, self.rng = net, phase, rng
        space = net.space
        self.depths = []
        for u, ch in enumerate(space.depth_choices):
            allowed = [d for d in phase.depth if d in ch and d <= net.layout[u]]
            self.depths.append(allowed or [min(max(phase.depth), max(ch))])
        self.n = sum(net.layout)
        self.resolutions = list(space.resolutions)
        # per slot, the blocks of the phase its unit allows (a space reduced by hwnas-profile drops blocks per unit);
        # where it allows none of them, the largest it allows that is not above the phase's
        product = [(k, e) for k in phase.kernel for e in phase.expand]
        self.blocks = []
        for s in range(self.n):
            allowed = [tuple(b) for b in space.block_choices[int(space.slot_unit[s])]]
            fit = [b for b in product if b in allowed]
            if not fit:
                below = [b for b in allowed if b[0] <= max(phase.kernel) and b[1] <= max(phase.expand)]
                fit = [max(below or allowed)]
            self.blocks.append(fit)
        self.every_block = all(fit == product for fit in self.blocks)  # (a full space: the sampling it always had)

    def _arch(self, ks, es, ds, r) -> MBConvArch:
        return self.net.arch_type(ks=tuple(ks), e=tuple(es), d=tuple(ds), r=int(r))

    def _blocks(self, pick: Any) -> tuple[list, list]:
        chosen = [pick(fit) for fit in self.blocks]
        return [k for k, _ in chosen], [e for _, e in chosen]

    def largest(self, r: int) -> MBConvArch:
        return self._arch(*self._blocks(max), [max(d) for d in self.depths], r)

    def smallest(self, r: int) -> MBConvArch:
        return self._arch(*self._blocks(min), [min(d) for d in self.depths], r)

    def random(self, r: int) -> MBConvArch:
        p, c = self.phase, self.rng.choice
        if self.every_block:
            return self._arch([c(p.kernel) for _ in range(self.n)], [c(p.expand) for _ in range(self.n)],
                              [c(d) for d in self.depths], r)
        return self._arch(*self._blocks(c), [c(d) for d in self.depths], r)

    def resolution(self) -> int:
        return self.rng.choice(self.resolutions)


def lr_at(phase: Phase, step_in_phase: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 within the phase."""
    if warmup > 0 and step_in_phase < warmup:
        return phase.lr * (step_in_phase + 1) / warmup
    t = (step_in_phase - warmup) / max(1, phase.steps - warmup)
    return 0.5 * phase.lr * (1 + math.cos(math.pi * min(1.0, t)))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on softened predictions (soft cross-entropy up to a constant)."""
    t = temperature
    p = F.softmax(teacher.detach() / t, dim=1)
    return F.kl_div(F.log_softmax(student / t, dim=1), p, reduction="batchmean") * (t * t)


# ============================================================================ training
#: settings that do not change what is trained: how it runs (device, threads, loader workers), where it
#: is written, when it stops or checkpoints, how often it logs
_RUN_ONLY = {"device", "threads", "out", "stop_after", "checkpoint", "hydra", "space"}


def training_settings(cfg: dict, space: MBConvSpace) -> dict:
    """The settings that decide a training run's trajectory, as plain JSON data: the space (a
    registered name and its options), the seed, the data, the classes, the initial weights and every
    ``train.*`` value but ``log_every``. A checkpoint records them; resuming under other ones would
    continue one run's weights and optimiser state on another run's schedule (a finished ``seed=0``
    run "resumed" as ``seed=1`` would train nothing and rewrite ``supernet.pth``), so it is refused."""
    from hwnas.spaces.io import space_spec

    out = {k: v for k, v in cfg.items() if k not in _RUN_ONLY}
    out["train"] = {k: v for k, v in dict(cfg.get("train") or {}).items() if k != "log_every"}
    out["data"] = {k: v for k, v in dict(cfg.get("data") or {}).items() if k != "num_workers"}
    try:
        out["space"] = space_spec(space)
    except UserError:  # a space class the registry does not know: its name and options
        out["space"] = {"name": space.name, "options": space.to_config()}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def init_from(net: ElasticMBConvNet, src: str) -> Path:
    """``init_from``: the weights of ``src`` (a file, an official OFA name or an asset path) loaded into ``net``.
    A classifier for another number of classes (an ImageNet supernet fine-tuned on your own classes) keeps
    ``net``'s fresh one, said in one log line; any other tensor that does not fit is one :class:`CheckpointError`.
    (Resuming from ``last.pth`` stays strict: :func:`_resume`.)"""
    path = resolve_checkpoint(src)
    state = read_state_dict(path)
    classes = other_classifier(net, state)
    if classes is not None:
        own = net.state_dict()
        state.update({k: own[k] for k in own if k.startswith("classifier.")})
        log.info("init_from=%s: its classifier has %d classes, this run %d: every other tensor loaded, the classifier "
                 "re-initialised", src, classes[0], classes[1])
    load_state(net, state, path)
    return path


def _resume(path: Path, net: nn.Module, opt: torch.optim.Optimizer, space: MBConvSpace,
            settings: dict | None = None) -> dict:
    """The state of ``path`` loaded into ``net`` and ``opt``; a file that does not fit is one error."""
    fix = f"start in another folder (out=<new folder>) or set checkpoint.resume=false to overwrite {path}"
    from hwnas.predictors.tensorfile import TensorFileError, torch_load_weights

    try:
        state = torch_load_weights(path)  # (weights only; a pickle gets our reason, not torch's weights_only=False advice)
    except TensorFileError as exc:  # truncated, not a torch file, pickled code
        raise CheckpointError(f"cannot resume: {path} is not a readable training checkpoint ({exc.reason}); {fix}") from None
    keys = ("state_dict", "optimizer", "step", "py_rng", "torch_rng")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot resume: {path} is not an hwnas-train checkpoint (no {missing}); {fix}")
    if state.get("space", space.name) != space.name:
        raise CheckpointError(f"cannot resume: {path} trains space {state['space']!r}, this run space {space.name!r}; {fix}")
    if settings is not None and isinstance(state.get("settings"), str):
        try:
            saved = json.loads(state["settings"])
        except ValueError:
            raise CheckpointError(f"cannot resume: {path} records unreadable settings; {fix}") from None
        if isinstance(saved.get("data"), dict) and "images" not in saved["data"]:  # a checkpoint made before it was recorded
            settings = {**settings, "data": {k: v for k, v in settings.get("data", {}).items() if k != "images"}}
        diff = differences(saved, settings)
        if "data.images" in diff:
            raise CheckpointError(
                f"cannot resume: the images under data.train={settings['data'].get('train')} changed since {path} was "
                "written (images added, removed or replaced, or class folders renamed), so the run would go on with other "
                f"data; restore them, or {fix}")
        if diff:
            shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise CheckpointError(f"cannot resume: {path} was trained with other settings ({shown}); "
                                  f"use the same settings to resume it, or {fix}")
    try:
        net.load_state_dict(match_state_dict(net, state["state_dict"], source=f"training checkpoint {path}"))
        opt.load_state_dict(state["optimizer"])
    except (CheckpointError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume: {str(exc).split('. Use the checkpoint')[0]}; {fix}") from None
    return state


# ============================================================================ settings check
#: the keys of the ``train``, ``data``, ``checkpoint`` sections and of one phase (conf/train/base.yaml)
TRAIN_KEYS = ("batch_size", "sandwich", "n_random", "distill_weight", "distill_temperature", "label_smoothing",
              "weight_decay", "momentum", "warmup_steps", "grad_clip", "dropout", "log_every", "phases")
DATA_KEYS = ("kind", "train", "num_workers", "n", "n_classes")
CHECKPOINT_KEYS = ("every", "resume")
PHASE_KEYS = ("name", "steps", "kernel", "expand", "depth", "lr", "reorganize")


_is_int = is_whole


def _check_int(v: Any, field: str, lo: int, example: Any, null: bool = False) -> None:
    check_int(v, field, lo, example=example, null=null, error=TrainConfigError)


def _check_number(v: Any, field: str, lo: float, hi: float | None, example: Any, lo_open: bool = False,
                  hi_open: bool = True, null: bool = False) -> None:
    check_number(v, field, lo, hi, lo_open=lo_open, hi_open=hi_open, example=example, null=null, error=TrainConfigError)


def _check_bool(v: Any, field: str) -> None:
    check_bool(v, field, error=TrainConfigError)


def _check_keys(node: Any, field: str, known: Sequence[str]) -> dict:
    return check_section(node, field, known, TrainConfigError)


def check_device(device: Any, field: str = "device") -> None:
    """``device`` is null, cpu, cuda, cuda:<index> or mps, and present on this machine."""
    if device is None:
        return
    m = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", str(device)) if isinstance(device, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise TrainConfigError(f"{field}={device!r} is unknown; use cpu, cuda, cuda:<index>, mps or null "
                               "(cuda when available, else cpu)")
    if m.group(1) == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(2) or 0)
        if index >= n:
            raise TrainConfigError(f"{field}={device!r} is not available on this machine ({n} CUDA device(s)); "
                                   f"use {field}=cpu{f' or {field}=cuda:0' if n else ''}")
    if m.group(1) == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TrainConfigError(f"{field}='mps' is not available on this machine; use {field}=cpu")


def check_settings(cfg: dict) -> None:
    """Every setting of a training run checked once, before anything is built, read or written: a wrong
    one is one :class:`TrainConfigError` naming the key and the fix (it used to surface mid-run as a
    ZeroDivisionError, a torch RuntimeError, NaN weights, or not at all)."""
    _check_int(cfg.get("seed", 0), "seed", 0, 0)
    _check_int(cfg.get("threads"), "threads", 1, 1, null=True)
    _check_int(cfg.get("stop_after"), "stop_after", 1, 100, null=True)
    _check_int(cfg.get("n_classes"), "n_classes", 2, 1000, null=True)
    check_device(cfg.get("device"))
    for key in ("out", "init_from"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise TrainConfigError(f"{key}={v!r} must be a path (or null)")

    d = _check_keys(cfg.get("data"), "data", DATA_KEYS)
    kind = d.get("kind", "imagefolder")
    if kind not in ("imagefolder", "synthetic"):
        raise TrainConfigError(f"data.kind={kind!r} is not allowed; allowed values: ['imagefolder', 'synthetic']")
    _check_int(d.get("num_workers"), "data.num_workers", 0, 0, null=True)
    if kind == "imagefolder" and d.get("train") in (None, "", "???"):
        raise TrainConfigError("data.train is not set; give an ImageFolder root (data.train=/path/to/imagenet/train) or data.kind=synthetic")
    if kind == "imagefolder" and isinstance(d.get("train"), str) and Path(d["train"]).expanduser().is_file():
        raise TrainConfigError(f"data.train={d['train']} is a file, not a folder; give the ImageFolder root (class "
                               "sub-folders: data.train=/path/to/imagenet/train)")
    if kind == "synthetic":
        _check_int(d.get("n", 512), "data.n", 1, 512)
        _check_int(d.get("n_classes", 4), "data.n_classes", 2, 4)

    t = _check_keys(cfg.get("train"), "train", TRAIN_KEYS)
    _check_int(t.get("batch_size", 64), "train.batch_size", 1, 64)
    _check_bool(t.get("sandwich", True), "train.sandwich")
    _check_int(t.get("n_random", 2), "train.n_random", 0, 2)
    _check_number(t.get("distill_weight", 1.0), "train.distill_weight", 0.0, None, 1.0)
    _check_number(t.get("distill_temperature", 1.0), "train.distill_temperature", 0.0, None, 1.0, lo_open=True)
    _check_number(t.get("label_smoothing", 0.1), "train.label_smoothing", 0.0, 1.0, 0.1)
    _check_number(t.get("weight_decay", 3e-5), "train.weight_decay", 0.0, None, 3.0e-5)
    _check_number(t.get("momentum", 0.9), "train.momentum", 0.0, 1.0, 0.9, lo_open=True)
    _check_int(t.get("warmup_steps", 0), "train.warmup_steps", 0, 0)
    _check_number(t.get("grad_clip"), "train.grad_clip", 0.0, None, 5.0, lo_open=True, null=True)
    _check_number(t.get("dropout", 0.1), "train.dropout", 0.0, 1.0, 0.1)
    _check_int(t.get("log_every", 20), "train.log_every", 1, 20)
    phases = t.get("phases")
    if phases is not None and not isinstance(phases, (list, tuple)):
        raise TrainConfigError(f"train.phases={phases!r} is not a list; give a list of phases "
                               "({name: ..., steps: ..., lr: ..., kernel/expand/depth: [...]})")
    for i, p in enumerate(phases or []):
        field = f"train.phases[{i}]"
        p = _check_keys(p, field, PHASE_KEYS)
        if "steps" not in p:
            raise TrainConfigError(f"{field} has no 'steps'; each phase needs steps (and kernel/expand/depth lists)")
        _check_int(p["steps"], f"{field}.steps", 0, 1000)
        if "lr" not in p:
            raise TrainConfigError(f"{field} has no 'lr'; give the phase's learning rate, e.g. {field}.lr=0.01")
        _check_number(p["lr"], f"{field}.lr", 0.0, None, 0.01, lo_open=True)
        for name in ("kernel", "expand", "depth"):
            v = p.get(name)
            if v is not None and (not isinstance(v, (list, tuple)) or not v or not all(_is_int(x) and x >= 1 for x in v)):
                raise TrainConfigError(f"{field}.{name}={v!r} must be a non-empty list of positive integers, e.g. [3, 5, 7]")
        _check_int(p.get("reorganize"), f"{field}.reorganize", 0, 1, null=True)

    ck = _check_keys(cfg.get("checkpoint"), "checkpoint", CHECKPOINT_KEYS)
    _check_int(ck.get("every", 500), "checkpoint.every", 0, 500)
    _check_bool(ck.get("resume", True), "checkpoint.resume")


def train(cfg: Any) -> dict:
    """Run (or resume) progressive shrinking as configured; returns a summary with the loss history.
    Every setting is checked first (:func:`check_settings`): a wrong one is one error, before any work."""
    cfg = plain(cfg)
    check_settings(cfg)
    with torch_threads(cfg.get("threads")):
        return _train(cfg)


def _train(cfg: dict) -> dict:
    tcfg = dict(cfg.get("train", {}))
    seed = int(cfg.get("seed", 0))
    device = cfg.get("device") or default_device()
    out = Path(writable_dir(Path(cfg.get("out") or "outputs/train").expanduser(), "out"))
    remove_stale_temps(out)  # the half-written checkpoints of killed runs (last.pth itself is whole)
    torch.manual_seed(seed)

    space = build_space(cfg)
    if not isinstance(space, MBConvSpace):
        raise TrainConfigError(f"space {space.name!r}: progressive shrinking trains MBConv supernets (OFA-MobileNetV3, ProxylessNAS)")
    r_max = max(space.resolutions)
    batch_size = int(tcfg.get("batch_size", 64))
    dcfg = dict(cfg.get("data", {}))
    dataset, n_classes_data, images = build_data(dcfg, r_max, seed)
    n_classes = int(cfg.get("n_classes") or n_classes_data)
    net = ElasticMBConvNet(space, n_classes=n_classes, dropout=float(tcfg.get("dropout", 0.1)))
    if cfg.get("init_from"):
        init_from(net, cfg["init_from"])
    net.to(device)

    phases = parse_phases(tcfg.get("phases") or [], net)
    total = sum(p.steps for p in phases)
    wd = float(tcfg.get("weight_decay", 3e-5))
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if (p.dim() <= 1 or name.endswith("_matrix")) else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=phases[0].lr, momentum=float(tcfg.get("momentum", 0.9)), nesterov=True,
    )
    sandwich = bool(tcfg.get("sandwich", True))
    n_random = int(tcfg.get("n_random", 2))
    kd_w = float(tcfg.get("distill_weight", 1.0))
    kd_t = float(tcfg.get("distill_temperature", 1.0))
    smoothing = float(tcfg.get("label_smoothing", 0.1))
    warmup = int(tcfg.get("warmup_steps", 0))
    grad_clip = tcfg.get("grad_clip")
    ck = dict(cfg.get("checkpoint", {}))
    every = int(ck.get("every", 500))
    last_path = out / "last.pth"
    rng = random.Random(seed)
    step, history = 0, []
    settings = training_settings(cfg, space)
    if images is not None:  # the images themselves: a resume on other images under data.train is refused
        settings["data"]["images"] = images

    if ck.get("resume", True) and last_path.is_file():
        state = _resume(last_path, net, opt, space, settings)
        step = int(state["step"])
        history = [float(v) for v in state.get("history", [])]
        rng.setstate(_rng_from_list(state["py_rng"]))
        torch.set_rng_state(state["torch_rng"])
        if step < total:
            log.info("resumed from %s at step %d", last_path, step)
    start = step  # (steps trained by this process: step - start)
    stop = min(total, int(cfg.get("stop_after") or total))

    def save(path: Path) -> None:
        save_checkpoint(path, {
            "state_dict": net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": torch.tensor(history, dtype=torch.float64),
            "py_rng": _rng_to_list(rng.getstate()),
            "torch_rng": torch.get_rng_state(),
            "space": space.name,
            "settings": json.dumps(settings, sort_keys=True),
        })

    # the channel ordering of finished phases is part of the saved weights; the phase-start hook below
    # runs only when a phase starts, so a resumed run does not repeat it
    bounds = np.cumsum([0] + [p.steps for p in phases])
    batches = batches_from(dataset, batch_size, seed, step, loader_workers(dcfg.get("num_workers")))
    t0 = time.perf_counter()
    with _deferred_interrupts() as pending:  # Ctrl-C / SIGTERM: the step in progress ends, is saved, then the exit
        while step < stop:
            pi = int(np.searchsorted(bounds, step, side="right") - 1)
            phase = phases[pi]
            sp = step - int(bounds[pi])
            if sp == 0 and phase.reorganize is not None:
                net.re_organize_middle_weights(phase.reorganize)
            lr = lr_at(phase, sp, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            sampler = PhaseSampler(net, phase, rng)
            x, y = next(batches)
            r = sampler.resolution()
            x = normalize(x.to(device, non_blocking=True))
            if x.shape[-1] != r or x.shape[-2] != r:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
            y = y.to(device)
            net.train()
            opt.zero_grad(set_to_none=True)
            archs = [sampler.largest(r)] + ([sampler.smallest(r)] if sandwich else []) + [sampler.random(r) for _ in range(n_random)]
            archs = list(dict.fromkeys(archs))  # e.g. the full-network phase has one subnet only
            teacher = None
            step_loss = 0.0
            for j, a in enumerate(archs):
                net.set_active(a)
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                if j == 0:
                    teacher = logits.detach()
                elif kd_w > 0:
                    loss = loss + kd_w * distill_loss(logits, teacher, kd_t)
                loss.backward()
                step_loss += float(loss.detach())
            if grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), float(grad_clip))
            opt.step()
            history.append(step_loss / len(archs))
            step += 1
            if step % int(tcfg.get("log_every", 20)) == 0 or step == total:
                log.info("step %d/%d phase %s r=%d lr=%.4g loss=%.4f (%.2f s/step)", step, total, phase.name, r, lr,
                         history[-1], (time.perf_counter() - t0) / (step - start))
            if every > 0 and step % every == 0:
                save(last_path)
            if pending:  # an interrupt arrived during this step: keep it, then stop as the signal asked
                save(last_path)
                log.info("interrupted at step %d: saved %s; the same command resumes from there", step, last_path)
                raise pending[0]
    if step > start and not (every > 0 and step % every == 0):  # (a run with nothing to train leaves it as it is)
        save(last_path)
    if step < total:  # stop_after (time-boxed jobs)
        log.info("stopped at step %d of %d (stop_after=%d): checkpoint %s; the same command without stop_after (or with "
                 "a larger one) continues from there", step, total, stop, last_path)
    else:
        net.set_max()
        # (OFA's format, and the space it was trained for as a JSON string: evaluate and export rebuild it)
        final = out / "supernet.pth"
        classes = getattr(getattr(dataset, "source", None), "classes", None)  # an ImageFolder's, in label order:
        wrote = _write_if_changed(final, {"state_dict": net.state_dict(),  # accuracy=supernet checks its data's against them
                                          "hwnas_space": json.dumps(settings["space"], sort_keys=True),
                                          **({"hwnas_classes": json.dumps(list(classes))} if classes else {})})
        if step > start:
            log.info("finished at step %d: wrote %s", step, final)
        else:
            log.info("nothing to train: %s is at step %d of %d (finished); %s %s (checkpoint.resume=false or another "
                     "out= trains again)", last_path, step, total, final,
                     "was missing or differed: written again" if wrote else "is up to date, left as it is")
    return {"step": step, "total": total, "history": history, "out": str(out), "supernet": net}


def _write_if_changed(path: Path, obj: dict) -> bool:
    """``save_checkpoint(path, obj)`` unless ``path`` already holds the same tensors and strings (a finished run
    started again used to rewrite an identical ``supernet.pth``); True when written."""
    from hwnas.predictors.tensorfile import TensorFileError, torch_load_weights

    if path.is_file():
        try:
            old = torch_load_weights(path)
        except (TensorFileError, OSError):
            old = None
        if isinstance(old, dict) and old.keys() == obj.keys() and all(old[k] == obj[k] for k in obj if k != "state_dict") \
                and isinstance(old["state_dict"], dict) and old["state_dict"].keys() == obj["state_dict"].keys() \
                and all(isinstance(v, torch.Tensor) and v.dtype == obj["state_dict"][k].dtype
                        and torch.equal(v, obj["state_dict"][k].cpu()) for k, v in old["state_dict"].items()):
            return False
    save_checkpoint(path, obj)
    return True


@contextmanager
def _deferred_interrupts() -> Iterator[list]:
    """Inside the block, Ctrl-C and SIGTERM are noted (the yielded list gets the exception to raise) instead of
    raised, so that the training step in progress finishes and is saved before the command stops: a Ctrl-C
    used to lose every step since the last periodic checkpoint (up to ``checkpoint.every`` - 1). A second
    signal raises at once (a step that hangs, e.g. on data)."""
    import signal
    import threading

    from hwnas.spaces.errors import Terminated

    pending: list[BaseException] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def note(signum: int, frame: Any) -> None:
        exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if pending:
            raise exc
        pending.append(exc)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _rng_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), -1.0 if gauss is None else float(gauss)]


def _rng_from_list(lst: list) -> tuple:
    version, internal, gauss = lst
    return (int(version), tuple(int(v) for v in internal.tolist()), None if gauss == -1.0 else gauss)


def main() -> None:
    """``hwnas-train`` console entry (hydra)."""
    import hydra
    from omegaconf import DictConfig

    import hwnas.conf  # noqa: F401  (registers ${hwnas_user_conf:}, which the configs' search path names)

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
    def _main(cfg: DictConfig) -> float:
        with cli_errors("hwnas-train"):
            res = train(cfg)
        h = res["history"]
        return float(np.mean(h[-10:])) if h else float("nan")

    run_hydra("hwnas-train", _main)


if __name__ == "__main__":  # pragma: no cover
    main()
