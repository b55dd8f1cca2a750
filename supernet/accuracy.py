"""``accuracy=supernet``: top-1 of each candidate measured with the weight-sharing supernet.

Each arch is extracted from the supernet, its BN statistics are re-calibrated on ``n_calib`` training
images and it is evaluated on ``n_val`` validation images (see :mod:`hwnas.supernet.data`). Results are
cached by canonical arch — in memory and, with ``cache=<file.sqlite>``, on disk across runs — under a
fingerprint of the protocol (space, checkpoint, data, subset sizes, seed), so a changed protocol never
reuses stale numbers. A population is de-duplicated, the cached archs are skipped, and the rest is
evaluated grouped by resolution (decoded images are reused for every arch of one resolution).

Hydra::

    accuracy:
      _target_: hwnas.supernet.accuracy.SupernetAccuracy
      space: ofa_mbv3_w12
      checkpoint: auto
      data: /datasets/imagenet        # with train/ and val/ ImageFolders
      n_calib: 2000
      n_val: 10000
      cache: runs/supernet_acc.sqlite
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.base import Predictor
from hwnas.predictors.fingerprint import local_file_fingerprint
from hwnas.spaces import create_space
from hwnas.spaces.io import arch_key
from hwnas.spaces.mbconv import MBConvSpace

from .checkpoint import load_checkpoint
from .data import DataError, ImageFolderSource, TensorCache, calibrate_and_evaluate, default_device
from .elastic import OFA_CHECKPOINTS, ElasticMBConvNet


def split_data_root(data: Any) -> tuple[Path, Path]:
    """``(train, val)`` folders from ``{"train": .., "val": ..}``, a root with ``train/`` and ``val/``, or
    one ImageFolder used for both (calibration then sees the evaluation images: fine for smoke tests only)."""
    if isinstance(data, dict) or hasattr(data, "keys"):
        try:
            return Path(data["train"]).expanduser(), Path(data["val"]).expanduser()
        except KeyError:
            raise DataError("data must name both folders: {'train': <ImageFolder>, 'val': <ImageFolder>}") from None
    if data in (None, ""):
        raise DataError("data is not set; give an ImageFolder root with train/ and val/ (data=/path/to/imagenet)")
    root = Path(data).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / "train", root / "val"
    if (root / "train").is_dir() or (root / "val").is_dir():
        have, lack = ("train", "val") if (root / "train").is_dir() else ("val", "train")
        raise DataError(f"data folder {root} has {have}/ but no {lack}/: give a root with both (train/ for the BN "
                        "re-calibration, val/ for top-1), or one ImageFolder for both (a smoke test)")
    if root.is_dir():
        import logging

        logging.getLogger("hwnas.supernet").warning(
            "data %s is one ImageFolder: its images serve both the BN re-calibration and top-1 (fine for a smoke "
            "test; give a root with train/ and val/ for real accuracy)", root)
        return root, root
    raise DataError(f"data folder {root} does not exist; expected an ImageFolder root with train/ and val/")


class SupernetAccuracy(Predictor):
    """Predictor protocol over supernet evaluation: ``predict(archs)`` → top-1 fractions.

    ``checkpoint="auto"`` picks the official OFA supernet of the space (``ofa_mbv3_w12`` →
    ``ofa_mbv3_d234_e346_k357_w1.2`` …); ``checkpoint=None`` keeps a randomly initialised supernet
    (tests) with as many classes as the data; ``supernet=`` passes a ready network.
    """

    metric = "top1"
    kind = "measured"  # top-1 of each subnet on the validation images

    def __init__(
        self,
        space: MBConvSpace | str,
        checkpoint: str | os.PathLike | None = "auto",
        data: Any = None,
        n_calib: int = 2000,
        n_val: int | None = 10000,
        batch_size: int = 100,
        device: str | None = None,
        cache: str | os.PathLike | None = None,
        seed: int = 0,
        num_workers: int = 0,
        progress: bool = False,
        supernet: ElasticMBConvNet | None = None,
        mirror: str | os.PathLike | None = None,
    ) -> None:
        self.space = create_space(space) if isinstance(space, str) else space
        self.device = device or default_device()
        if checkpoint == "auto":
            if supernet is not None:
                checkpoint = None
            else:
                names = [k for k, v in OFA_CHECKPOINTS.items() if v == self.space.name]
                if not names:
                    raise DataError(
                        f"checkpoint='auto': space {self.space.name} has no official OFA supernet; "
                        f"give checkpoint=<file> (official ones: {sorted(OFA_CHECKPOINTS)})"
                    )
                checkpoint = names[0]
        train_dir, val_dir = split_data_root(data)
        train_src = ImageFolderSource(train_dir)
        val_src = train_src if val_dir == train_dir else ImageFolderSource(val_dir)
        self.data = TensorCache(
            train_src,
            val_src,
            n_calib=n_calib, n_val=n_val, batch_size=batch_size, seed=seed, num_workers=num_workers,
        )
        n_classes = self.data.train.n_classes if checkpoint is None and supernet is None else None
        if supernet is None:
            if checkpoint is not None:  # the classifier's size comes from the file: a supernet trained
                # with hwnas-train on one's own classes is evaluated on that data
                from .checkpoint import read_state_dict, resolve_checkpoint

                path = resolve_checkpoint(checkpoint, mirror)
                head = read_state_dict(path).get("classifier.linear.weight")
                n_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else None
                supernet = ElasticMBConvNet(self.space, n_classes=n_classes)
                load_checkpoint(supernet, path)
            else:
                supernet = ElasticMBConvNet(self.space, n_classes=n_classes)
        head, n_data = int(supernet.n_classes), self.data.train.n_classes
        if head != n_data:
            raise DataError(
                f"data {train_dir} has {n_data} classes but the supernet's classifier has {head} outputs"
                f" (checkpoint {checkpoint}); top-1 would compare unrelated labels. Give the dataset the supernet was"
                " trained on (ImageNet: 1000 class folders) or a supernet trained on this data"
            )
        self.supernet = supernet.to(self.device).eval()
        self.progress = progress
        self.n_evaluated = 0  # archs actually measured (cache misses)
        proto = {
            "space": self.space.name,
            "space_cfg": self.space.to_config(),
            "checkpoint": str(checkpoint) if checkpoint is not None else "random-init",
            "train": str(train_dir.resolve()),
            "val": str(val_dir.resolve()),
            "n_calib": int(n_calib),
            "n_val": None if n_val is None else int(n_val),
            "seed": int(seed),
        }
        proto["data_files"] = self.data.files_fingerprint()  # images replaced or classes renamed in place
        contents = local_file_fingerprint(checkpoint) if checkpoint is not None else None
        if contents is not None:  # a local file retrained into the same path must not be served the old
            proto["checkpoint_contents"] = contents  # cached accuracies (official names keep their keys)
        self.fingerprint = hashlib.sha1(json.dumps(proto, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self._mem: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.cache_path = None if cache in (None, "") else str(Path(cache).expanduser())
        self._db: sqlite3.Connection | None = None
        self._open_db()

    def _open_db(self) -> None:
        if self.cache_path is None:
            return
        p = Path(self.cache_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():  # a folder it cannot be made in: the OS's reason (sqlite says "unable to open database file")
            from hwnas.spaces.errors import writable_dir

            writable_dir(p.parent, "accuracy cache folder")
        try:
            self._db = sqlite3.connect(str(p), check_same_thread=False, timeout=60)
            row = self._db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS supernet_accuracy (fingerprint TEXT, arch TEXT, top1 REAL, top5 REAL, "
                "loss REAL, n INTEGER, PRIMARY KEY (fingerprint, arch))"
            )
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            raise sqlite3.DatabaseError(
                f"accuracy cache {p} is corrupted or not an hwnas cache ({exc}); it was left untouched: "
                "move or delete it, or set accuracy.cache to another file"
            ) from None

    # pickling (e.g. to Dask workers): the connection and the lock are re-created on the other side
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_db"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._open_db()

    # ------------------------------------------------------------------ cache
    def _key(self, arch: Any) -> str:
        return arch_key(self.space, arch)

    def _lookup(self, key: str) -> dict | None:
        if key in self._mem:
            return self._mem[key]
        if self._db is not None:
            row = self._db.execute(
                "SELECT top1, top5, loss, n FROM supernet_accuracy WHERE fingerprint=? AND arch=?", (self.fingerprint, key)
            ).fetchone()
            if row is not None:
                res = {"top1": row[0], "top5": row[1], "loss": row[2], "n": row[3]}
                self._mem[key] = res
                return res
        return None

    def _store(self, key: str, res: dict) -> None:
        self._mem[key] = res
        if self._db is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO supernet_accuracy VALUES (?, ?, ?, ?, ?, ?)",
                (self.fingerprint, key, res["top1"], res["top5"], res["loss"], res["n"]),
            )
            self._db.commit()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, arch: Any) -> dict:
        """Full result (top1, top5, loss, n) of one arch (cached)."""
        a = self.space.validate(arch)
        key = self._key(a)
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            sub = self.supernet.get_active_subnet(a)
            res = calibrate_and_evaluate(sub, self.data.calib(a.r), self.data.val(a.r), self.device, self.progress)
            res = {k: res[k] for k in ("top1", "top5", "loss", "n")}
            self.n_evaluated += 1
            self._store(key, res)
            return res

    def evaluate_many(self, archs: Sequence[Any]) -> list[dict]:
        """Results for a population: duplicates and cached archs are not recomputed; the rest is
        evaluated grouped by resolution."""
        canon = [self.space.validate(a) for a in archs]
        todo = {}
        for a in canon:
            k = self._key(a)
            if k not in todo and self._lookup(k) is None:
                todo[k] = a
        for a in sorted(todo.values(), key=lambda x: x.r):
            self.evaluate(a)
        return [self._lookup(self._key(a)) for a in canon]

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        return np.array([r["top1"] for r in self.evaluate_many(list(archs))], dtype=float)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


__all__ = ["SupernetAccuracy", "split_data_root"]
