"""``accuracy=supernet``: top-1 of each candidate measured with the weight-sharing supernet.

Each arch is extracted from the supernet, its BN statistics are re-calibrated on ``n_calib`` training
images and it is evaluated on ``n_val`` validation images (see :mod:`hwnas.supernet.data`). Results are
cached by canonical arch — in memory and, with ``cache=<file.sqlite>``, on disk across runs — under a
fingerprint of the protocol (the network's shape, the checkpoint's contents, data, subset sizes, seed), so
a changed protocol never reuses stale numbers, and the same file given by another path (or another
resolution list of the same space) finds its numbers again. A population is de-duplicated, the cached archs are skipped, and the rest is
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
from hwnas.predictors.fingerprint import file_fingerprint
from hwnas.spaces import create_space
from hwnas.spaces.io import arch_key
from hwnas.spaces.mbconv import MBConvSpace

from .checkpoint import load_checkpoint
from .data import DataError, ImageFolderSource, TensorCache, calibrate_and_evaluate, default_device, loader_workers
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
    if root.exists():
        raise DataError(f"data {root} is a file, not a folder; give the ImageFolder root with train/ and val/ (class sub-folders "
                        "in each: data=/path/to/imagenet)")
    raise DataError(f"data folder {root} does not exist; expected an ImageFolder root with train/ and val/")


def _check_trained_classes(path: Any, classes: list[str], folder: Path) -> None:
    """A supernet that records its classes (hwnas-train on an ImageFolder) is evaluated on data of the same classes
    in the same label order: the same number of other (or re-ordered) class folders gave top-1 of unrelated labels."""
    from .checkpoint import recorded_classes

    trained = recorded_classes(path)
    if trained is None or list(trained) == list(classes):
        return
    diff = next((i for i, (a, b) in enumerate(zip(trained, classes)) if a != b), min(len(trained), len(classes)))
    raise DataError(f"accuracy.checkpoint {path} was trained on the classes {_few(trained)}; data {folder} has "
                    f"{_few(classes)} (label {diff}: {trained[diff] if diff < len(trained) else '-'!r} there, "
                    f"{classes[diff] if diff < len(classes) else '-'!r} here), so its top-1 would compare other labels: "
                    "give the data it was trained on, or a supernet trained on this data")


def _few(names: Sequence[str]) -> str:
    return f"{list(names[:4])}{f' ... ({len(names)})' if len(names) > 4 else ''}"


def _check_trained_resolutions(space: MBConvSpace, path: Any) -> None:
    """A supernet that records its training resolutions (hwnas-train) is not evaluated outside their range: its
    subnets' accuracy there is not what it learned. Resolutions inside the range that it was not trained at
    (176 between 160 and 192) are said once: an elastic supernet's accuracy there is interpolated."""
    from .checkpoint import recorded_space

    spec = recorded_space(path)
    trained = (spec.get("options") or {}).get("resolutions") if isinstance(spec, dict) else None
    if not isinstance(trained, list) or not trained or not all(isinstance(r, int) for r in trained):
        return
    mine = list(getattr(space, "resolutions", []))
    outside = [r for r in mine if not min(trained) <= r <= max(trained)]
    if outside:
        inside = [r for r in mine if min(trained) <= r <= max(trained)]
        fix = f"space.resolutions=[{','.join(map(str, inside or trained))}]"
        raise DataError(f"accuracy.checkpoint {path} was trained at resolutions {trained}; space.resolutions {mine} also "
                        f"holds {outside}, outside them, where its accuracies mean nothing: give {fix}")
    between = [r for r in mine if r not in trained]
    if between:
        import logging

        logging.getLogger("hwnas.supernet").warning(
            f"accuracy.checkpoint {path} was trained at resolutions {trained}; the search evaluates it at {between} too "
            f"(between them: interpolated by the elastic supernet; space.resolutions=[{','.join(map(str, trained))}] keeps to them)")


#: the tables of an accuracy cache (a file with others is another program's, and is not written to)
CACHE_TABLES = ("supernet_accuracy", "supernet_protocols")


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
        num_workers: int | None = 0,
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
            n_calib=n_calib, n_val=n_val, batch_size=batch_size, seed=seed,
            num_workers=loader_workers(None, 4) if num_workers is None else num_workers,  # None: one per CPU, at most 4
        )
        n_classes = self.data.train.n_classes if checkpoint is None and supernet is None else None
        path = None
        if supernet is None:
            if checkpoint is not None:  # the classifier's size comes from the file: a supernet trained
                # with hwnas-train on one's own classes is evaluated on that data
                from .checkpoint import read_state_dict, resolve_checkpoint

                path = resolve_checkpoint(checkpoint, mirror)
                head = read_state_dict(path).get("classifier.linear.weight")
                n_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else None
                supernet = ElasticMBConvNet(self.space, n_classes=n_classes)
                load_checkpoint(supernet, path)
                _check_trained_resolutions(self.space, path)
                _check_trained_classes(path, self.data.train.classes, train_dir)
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
        # what decides an arch's accuracy: the network (its tensors' names and shapes: the space's family and
        # width, not its resolutions or other choices, which an arch carries), its weights (a local file by its
        # contents, however its path is written; an official one by name), the images and the protocol
        shapes = sorted((k, list(v.shape)) for k, v in self.supernet.state_dict().items())
        contents = file_fingerprint(Path(path)) if path is not None else None
        #: the weights these accuracies are of (recorded in pareto.json: hwnas-export checks its own against them)
        self.weights_source = {"checkpoint": str(Path(path).resolve()) if path is not None else None, "checkpoint_fingerprint": contents,
                               "calibration": self.data.calibration.identity()}
        proto = {
            "network": hashlib.sha1(json.dumps(shapes).encode()).hexdigest(),
            "checkpoint": contents or (str(checkpoint) if checkpoint is not None else "random-init"),
            "train": str(train_dir.resolve()),
            "val": str(val_dir.resolve()),
            "n_calib": int(n_calib),
            "n_val": None if n_val is None else int(n_val),
            "seed": int(seed),
        }
        proto["data_files"] = self.data.files_fingerprint()  # images replaced or classes renamed in place
        self.protocol = {**proto, "checkpoint_path": self.weights_source["checkpoint"] or (str(checkpoint) if checkpoint is not None else None)}
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
        if p.is_dir():
            raise DataError(f"accuracy.cache={self.cache_path!r} is a folder; give a file path in it, e.g. {p / 'accuracy.sqlite'}")
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():  # a folder it cannot be made in: the OS's reason (sqlite says "unable to open database file")
            from hwnas.spaces.errors import writable_dir

            writable_dir(p.parent, "accuracy cache folder")
        try:
            self._db = sqlite3.connect(str(p), check_same_thread=False, timeout=60)
            row = self._db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables - set(CACHE_TABLES):  # checked before anything is written: another program's file stays as it was
                raise sqlite3.DatabaseError(f"it is an SQLite file with other tables ({sorted(tables - set(CACHE_TABLES))[:5]})")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS supernet_accuracy (fingerprint TEXT, arch TEXT, top1 REAL, top5 REAL, "
                "loss REAL, n INTEGER, PRIMARY KEY (fingerprint, arch))"
            )
            # what each fingerprint stands for (checkpoint, data, calibration ...), for evaluations_from_cache and people
            self._db.execute("CREATE TABLE IF NOT EXISTS supernet_protocols (fingerprint TEXT PRIMARY KEY, protocol TEXT)")
            self._db.execute("INSERT OR IGNORE INTO supernet_protocols VALUES (?, ?)",
                             (self.fingerprint, json.dumps(self.protocol, sort_keys=True, default=str)))
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
