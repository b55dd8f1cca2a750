"""ImageFolder data, BN re-calibration and top-1/top-5 evaluation of subnets.

Images travel as ``uint8`` tensors (``PILToTensor``) and are normalised on the device
(:func:`normalize`), which keeps loaders light and lets :class:`TensorCache` hold decoded subsets in
memory (the search evaluates many subnets on the same calibration/validation images).

Protocol (Once-for-All): a subnet's BN statistics are re-computed on ``n_calib`` training images
(OFA: 2000; random-resized-crop + flip at the subnet's resolution, fixed seed) by resetting the running
statistics and forwarding in training mode without gradients with a cumulative average
(``momentum=None``); the subnet is then evaluated on validation images resized to ``ceil(r / 0.875)``
and centre-cropped to ``r``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._compat import ensure_torchvision
from hwnas.spaces.errors import UserError
from hwnas.spaces.checks import check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(UserError, ValueError):
    """A dataset folder is missing or malformed; the message says what to provide.

    Raised in a DataLoader worker process, torch re-raises it in this one as ``DataError(<"Caught DataError in
    DataLoader worker process 0." and the worker's traceback>)``: the message is then the worker's own (its
    last line), so the command still says it in one line."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if text.startswith("Caught DataError") and "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith(("DataError", "hwnas.")) and ": " in last else last
        super().__init__(text)


def check_loader_settings(names: dict[str, str] | None = None, **values: object) -> None:
    """The subset and loader settings (``n_calib``, ``n_val``, ``batch_size``, ``seed``, ``num_workers``)
    checked before any image is read: each a whole number, ``n_calib``/``batch_size`` >= 1, ``n_val`` None
    or >= 1, ``seed``/``num_workers`` >= 0. A bad one is one :class:`DataError` naming it as ``names`` spells
    it (``{"batch_size": "--batch-size"}`` for a command line; default: the parameter's name)."""
    lowest = {"n_calib": 1, "n_val": 1, "batch_size": 1, "seed": 0, "num_workers": 0}
    what = {"n_calib": "a number of calibration images", "n_val": "a number of validation images, or none: all",
            "batch_size": "a batch size", "seed": "a seed", "num_workers": "a number of loader worker processes"}
    for key, v in values.items():
        if key not in lowest:
            raise TypeError(f"check_loader_settings: unknown setting {key!r}")  # a caller's bug
        if v is None and key == "n_val":
            continue
        check_int(v, (names or {}).get(key, key), lowest[key], what=what[key], error=DataError)


# ============================================================================ transforms
def eval_transform(r: int, crop_ratio: float = 0.875) -> Callable:
    """Resize the short side to ``ceil(r / crop_ratio)``, centre-crop ``r`` → uint8 CHW tensor."""
    T = ensure_torchvision().transforms
    return T.Compose([T.Resize(int(math.ceil(r / crop_ratio))), T.CenterCrop(r), T.PILToTensor()])


def train_transform(r: int, scale: tuple[float, float] = (0.08, 1.0)) -> Callable:
    """Random-resized-crop ``r`` + horizontal flip → uint8 CHW tensor (training / BN calibration)."""
    T = ensure_torchvision().transforms
    return T.Compose([T.RandomResizedCrop(r, scale=scale), T.RandomHorizontalFlip(), T.PILToTensor()])


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (or [0, 1] float) NCHW images → normalised float32."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ============================================================================ datasets
def _hash_samples(h: Any, root: Path, samples: Any) -> None:
    """Feed ``h`` each image's path in ``root``, class, size and modification time (what tells images
    replaced, added or moved between classes under the same folder apart)."""
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.path.relpath(path, root)}\t{label}\t{stamp}\n".encode(errors="replace"))


class ImageFolderSource:
    """An ImageFolder (``root/<class>/<image>``) scanned once; views with any transform / subset.

    ``n_classes`` / ``classes`` come from the folder names (sorted, as torchvision does)."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root).expanduser()
        if root.is_file():
            raise DataError(f"data folder {root} is a file, not a folder; give the ImageFolder root (class sub-folders: "
                            "root/<class>/<image>)")
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; expected an ImageFolder root/<class>/<image>")
        tv = ensure_torchvision()
        try:
            base = tv.datasets.ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"data folder {root} is not an ImageFolder ({exc}); expected root/<class>/<image>") from None
        self.root = root
        self.classes: list[str] = list(base.classes)
        self.samples: list[tuple[str, int]] = list(base.samples)
        self.loader = base.loader
        if {"train", "val"} <= set(self.classes):  # the dataset's root, not its train/ (or val/) folder
            raise DataError(f"data folder {root} holds train/ and val/, which would be read as two classes; give "
                            f"{root / 'train'} for training (or the root where a command asks for it, e.g. --data)")
        if len(self.classes) < 2:
            raise DataError(f"data folder {root} has {len(self.classes)} class folder(s) ({self.classes}); a classifier needs "
                            "at least 2: root/<class>/<image> with one folder per class")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Every image of the folder (:func:`_hash_samples`), hashed: a training checkpoint records it, so
        that a resume on images changed under the same path is refused."""
        h = hashlib.sha256(f"{len(self.samples)}".encode())
        _hash_samples(h, self.root, self.samples)
        return "sha256:" + h.hexdigest()[:32]

    def __len__(self) -> int:
        return len(self.samples)

    def subset_indices(self, n: int | None, seed: int = 0) -> np.ndarray:
        """``n`` distinct image indices drawn with ``seed`` (all images, in order, when ``n`` is None or too big)."""
        if n is None or n >= len(self.samples):
            return np.arange(len(self.samples))
        return np.sort(np.random.default_rng(seed).choice(len(self.samples), size=int(n), replace=False))

    def view(self, transform: Callable, indices: Iterable[int] | None = None) -> "FolderView":
        return FolderView(self, transform, None if indices is None else list(indices))


class FolderView(Dataset):
    def __init__(self, source: ImageFolderSource, transform: Callable, indices: list[int] | None) -> None:
        self.source, self.transform = source, transform
        self.indices = list(range(len(source))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.source.samples[self.indices[i]]
        try:
            image = self.source.loader(path)
        except (OSError, ValueError, SyntaxError) as exc:  # (PIL: UnidentifiedImageError is an OSError)
            raise DataError(f"image {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "remove it or replace it with a readable image") from None
        return self.transform(image), label


def loader_workers(n: int | None, most: int = 8) -> int:
    """A number of loader worker processes: ``n`` as given, or for None one per CPU this process may use, at most
    ``most`` (hwnas-train's default of 8 on a 2-CPU machine made torch warn "8 worker processes ... suggested
    max is 2", at every epoch)."""
    if n is not None:
        return int(n)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (macOS, Windows)
        cpus = os.cpu_count() or 1
    return max(1, min(most, cpus))


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, seed: int = 0, drop_last: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=g,
                      drop_last=drop_last, persistent_workers=False, pin_memory=False)


@dataclass
class TensorBatches:
    """Decoded images (uint8 NCHW) and labels held in memory, iterated in batches."""

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int

    def __iter__(self):
        for s in range(0, len(self.labels), self.batch_size):
            yield self.images[s : s + self.batch_size], self.labels[s : s + self.batch_size]

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size


def materialize(ds: Dataset, batch_size: int, num_workers: int = 0, seed: int = 0) -> TensorBatches:
    """Decode a dataset once (random transforms drawn with ``seed``) into :class:`TensorBatches`."""
    from hwnas.predictors.threads import torch_seeded

    xs, ys = [], []
    with torch_seeded(seed):
        for x, y in make_loader(ds, batch_size=max(batch_size, 32), num_workers=num_workers, seed=seed):
            xs.append(x)
            ys.append(y)
    if not xs:
        raise DataError("the dataset subset is empty; give at least one image")
    return TensorBatches(torch.cat(xs), torch.cat(ys), batch_size)


def _recent(store: dict, key: int, make: Callable[[], "TensorBatches"], keep: int) -> "TensorBatches":
    """``store[key]``, made on first use; only the ``keep`` most recently used entries stay."""
    store[key] = store.pop(key) if key in store else make()  # most recent last
    while len(store) > keep:
        store.pop(next(iter(store)))
    return store[key]


def train_folder(root: str | os.PathLike) -> Path:
    """The training ImageFolder of ``root``: ``root/train`` when it exists, else ``root`` itself."""
    root = Path(root).expanduser()
    return root / "train" if (root / "train").is_dir() else root


class CalibrationSet:
    """``n_images`` training images of an ImageFolder for BN re-calibration (OFA's protocol:
    random-resized-crop + flip at the subnet's resolution, fixed seed), decoded once per resolution and
    kept for the ``max_resolutions`` most recently used ones."""

    def __init__(self, source: "ImageFolderSource | str | os.PathLike", n_images: int = 2000, batch_size: int = 100,
                 seed: int = 0, num_workers: int = 0, max_resolutions: int = 4) -> None:
        check_loader_settings({"n_calib": "n_images"}, n_calib=n_images, batch_size=batch_size, seed=seed,
                              num_workers=num_workers)
        self.source = source if isinstance(source, ImageFolderSource) else ImageFolderSource(source)
        self.n_images, self.batch_size, self.seed = int(n_images), int(batch_size), int(seed)
        self.num_workers, self.max_resolutions = int(num_workers), int(max_resolutions)
        if self.n_images < 1:
            raise DataError(f"BN calibration needs at least one image; got n_images={n_images}")
        self.indices = self.source.subset_indices(self.n_images, seed)
        self._store: dict[int, TensorBatches] = {}

    def batches(self, r: int) -> TensorBatches:
        r = int(r)
        return _recent(self._store, r, lambda: materialize(self.source.view(train_transform(r), self.indices),
                                                             self.batch_size, self.num_workers, seed=self.seed + r),
                       self.max_resolutions)

    def calibrate(self, net: nn.Module, r: int, device: str | torch.device = "cpu") -> int:
        """Re-compute ``net``'s BN statistics on these images at resolution ``r``; returns the image count."""
        return set_running_statistics(net, self.batches(r), device)

    def identity(self) -> dict:
        """What decides the statistics this set gives a subnet (compared, as data, between a search's accuracies
        and an export's calibration): the images' folder, which of them, and the batches."""
        return {"data": str(Path(self.source.root).resolve()), "n_images": len(self.indices), "n_requested": self.n_images,
                "seed": self.seed, "batch_size": self.batch_size}

    def describe(self) -> dict:
        return {"data": str(self.source.root), "n_images": len(self.indices), "seed": self.seed,
                "protocol": "BN statistics re-computed on training images (random-resized-crop + flip at the subnet's resolution)"}


class TensorCache:
    """Calibration and validation subsets of an ImageFolder, decoded once per resolution.

    ``calib(r)`` / ``val(r)`` return :class:`TensorBatches` (kept for the ``max_resolutions`` most recently
    used resolutions)."""

    def __init__(
        self,
        train: ImageFolderSource | str | os.PathLike,
        val: ImageFolderSource | str | os.PathLike,
        n_calib: int = 2000,
        n_val: int | None = 10000,
        batch_size: int = 100,
        seed: int = 0,
        num_workers: int = 0,
        max_resolutions: int = 4,
    ) -> None:
        check_loader_settings(n_calib=n_calib, n_val=n_val, batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.calibration = CalibrationSet(train, n_calib, batch_size, seed, num_workers, max_resolutions)
        self.train = self.calibration.source
        self.val_src = val if isinstance(val, ImageFolderSource) else ImageFolderSource(val)
        if self.train.classes != self.val_src.classes:
            raise DataError(f"train ({self.train.root}) and val ({self.val_src.root}) folders have different classes")
        self.n_calib, self.n_val, self.batch_size, self.seed = int(n_calib), n_val, int(batch_size), int(seed)
        self.num_workers, self.max_resolutions = int(num_workers), int(max_resolutions)
        self.calib_idx = self.calibration.indices
        self.val_idx = self.val_src.subset_indices(n_val, seed + 1)
        self._val: dict[int, TensorBatches] = {}

    def calib(self, r: int) -> TensorBatches:
        return self.calibration.batches(r)

    def files_fingerprint(self) -> str:
        """The images this cache reads (calibration and validation subsets): each one's path in its folder, class,
        size and modification time, hashed. Caches of results computed from them (the supernet accuracy cache)
        key on it: images replaced, or class folders renamed, under the same folder are other data."""
        h = hashlib.sha256()
        for src, idx in ((self.train, self.calib_idx), (self.val_src, self.val_idx)):
            h.update(f"\0{len(idx)}".encode())
            _hash_samples(h, src.root, (src.samples[int(i)] for i in idx))
        return "sha256:" + h.hexdigest()[:32]

    def val(self, r: int) -> TensorBatches:
        r = int(r)
        return _recent(self._val, r, lambda: materialize(self.val_src.view(eval_transform(r), self.val_idx),
                                                           self.batch_size, self.num_workers, seed=self.seed + r),
                       self.max_resolutions)


# ============================================================================ BN calibration / evaluation
def _progress(it, total: int | None, desc: str, progress: bool):
    """``it`` with a progress bar on stderr when ``progress`` is set and stderr is a terminal (bars written into a
    pipe or a log file, ``... | tail``, are only noise)."""
    import sys

    if not progress or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr)


def _no_single_image(batches: Iterable) -> Iterable[torch.Tensor]:
    """The images of ``(x, y)`` batches, a batch of one image joined to the one before it: BN in training mode
    cannot take one image where the map is 1x1 (the SE layers), so 2001 calibration images in batches of 100 failed
    at the last one."""
    prev = None
    for x, _ in batches:
        if prev is not None and len(x) == 1:
            prev = torch.cat([prev, x])
            continue
        if prev is not None:
            yield prev
        prev = x
    if prev is not None:
        if len(prev) < 2:
            raise DataError("BN calibration needs at least 2 images (one image has no batch statistics); give n_calib >= 2")
        yield prev


@torch.no_grad()
def set_running_statistics(
    net: nn.Module, batches: Iterable, device: str | torch.device = "cpu", progress: bool = False
) -> int:
    """Re-compute every BN layer's running mean/var of ``net`` on ``batches`` (cumulative average over
    the batches, training-mode forward, no gradients). Returns the number of images used; ``net`` is left
    in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    n = 0
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        for x in _no_single_image(_progress(batches, total, "BN calibration", progress)):
            net(normalize(x.to(device, non_blocking=True)))
            n += len(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        net.eval()
    if n == 0:
        raise DataError("BN calibration got no images")
    return n


@torch.no_grad()
def evaluate(
    net: nn.Module, batches: Iterable, device: str | torch.device = "cpu", progress: bool = False
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions), mean cross-entropy, image count and throughput of ``net``."""
    net.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    t0 = time.perf_counter()
    total = len(batches) if hasattr(batches, "__len__") else None
    for x, y in _progress(batches, total, "evaluate", progress):
        x = normalize(x.to(device, non_blocking=True))
        y = y.to(device)
        logits = net(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        n += len(y)
    dt = time.perf_counter() - t0
    if n == 0:
        raise DataError("evaluation got no images")
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "n": n, "images_per_s": n / max(dt, 1e-9)}


def calibrate_and_evaluate(
    subnet: nn.Module,
    calib: Iterable,
    val: Iterable,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """BN re-calibration on ``calib`` followed by :func:`evaluate` on ``val``."""
    subnet.to(device)
    set_running_statistics(subnet, calib, device, progress)
    return evaluate(subnet, val, device, progress)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = [
    "CalibrationSet",
    "DataError",
    "ImageFolderSource",
    "TensorBatches",
    "TensorCache",
    "calibrate_and_evaluate",
    "default_device",
    "eval_transform",
    "evaluate",
    "make_loader",
    "materialize",
    "normalize",
    "set_running_statistics",
    "train_folder",
    "train_transform",
]
