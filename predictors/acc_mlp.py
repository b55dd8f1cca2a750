"""An accuracy predictor learned from evaluations: Once-for-All's MLP, trained on (arch, top-1) pairs.

:class:`MLPAccuracyPredictor` follows the protocol and the model of OFA's accuracy predictor: an MLP
``Linear(F, 400)-ReLU-Linear(400, 400)-ReLU-Linear(400, 400)-ReLU-Linear(400, 1)`` over a fixed encoding
of the arch. The encoding is

* ``"ofa"``: the 128-d Once-for-All encoding (per slot one-hot kernel and expand, zeros for inactive
  slots, one-hot resolution bin), for OFA-MobileNetV3 spaces — the official predictor's input, so the
  official weights can also serve as the starting point (``init="ofa"``);
* ``"onehot"``: the space's own one-hot features (:meth:`hwnas.spaces.SearchSpace.features`) for any
  other space.

Targets are standardised internally and predictions come back in the units they were given (fraction
or percent). Training is deterministic for a given ``seed`` (own torch generator; the global RNG state
is left untouched). :meth:`save` writes atomically; :meth:`load` reads with ``weights_only=True`` and
rebuilds the space from the file's data (:func:`hwnas.spaces.io.space_from_spec`), so a shared
predictor file never runs code.

Back into a search (``conf/accuracy/mlp.yaml``)::

    hwnas-search accuracy=mlp accuracy.path=acc_mlp.pt
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.spaces.base import ArchBatch, SearchSpace, SpaceError, create_space
from hwnas.spaces.checks import check_int
from hwnas.spaces.mbconv import OFAMobileNetV3Space, ofa_predictor_features, ofa_predictor_features_arrays

from .assets import atomic_path
from .base import Predictor
from .ofa_accuracy import PredictorLoadError
from .threads import torch_seeded, torch_threads

__all__ = ["MLPAccuracyPredictor", "build_mlp", "evaluations_from_cache"]

_FORMAT = "hwnas.acc_mlp/1"


def build_mlp(in_features: int, hidden: int = 400, n_layers: int = 3) -> nn.Sequential:
    """OFA's MLP: ``n_layers`` hidden ``Linear-ReLU`` pairs then ``Linear(hidden, 1)`` (keys 0, 2, 4, 6)."""
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


def _ofa_encodable(space: Any) -> bool:
    return (
        isinstance(space, OFAMobileNetV3Space)
        and set(space.kernel_choices) <= {3, 5, 7}
        and set(space.expand_choices) <= {3, 4, 6}
        and min(space.resolutions) >= 112
        and max(space.resolutions) <= 239
    )


class MLPAccuracyPredictor(Predictor):
    """Accuracy predictor trained on evaluations (OFA's MLP and encoding).

    Parameters
    ----------
    space: the space (or its registered name) whose archs are priced.
    hidden, n_layers: MLP width and number of hidden layers (OFA: 400, 3).
    encoding: ``"auto"`` (OFA encoding for OFA-MobileNetV3 spaces, one-hot features otherwise),
        ``"ofa"`` or ``"onehot"``.
    epochs, batch_size, lr, weight_decay: Adam with cosine decay; at least ``min_steps`` steps are run.
    init: ``None`` (random init) or ``"ofa"`` / a path: start from Once-for-All's official predictor
        weights (needs ``encoding="ofa"``, ``hidden=400``, ``n_layers=3``) and fine-tune them.
    seed: makes initialisation and shuffling reproducible.
    threads: torch CPU threads while training (1 by default: the MLP is too small to gain from more,
        and one thread keeps results bit-identical across machines); ``None`` leaves torch's setting.
    """

    metric = "top1"

    def __init__(
        self,
        space: SearchSpace | str,
        hidden: int = 400,
        n_layers: int = 3,
        encoding: str = "auto",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        min_steps: int = 300,
        init: str | os.PathLike | None = None,
        seed: int = 0,
        device: str = "cpu",
        threads: int | None = 1,
    ) -> None:
        if isinstance(space, str):
            space = create_space(space)
        if not isinstance(space, SearchSpace):
            raise SpaceError(f"MLPAccuracyPredictor: space must be a SearchSpace or a registered name; got {type(space).__name__}")
        self.space = space
        if encoding == "auto":
            encoding = "ofa" if _ofa_encodable(space) else "onehot"
        if encoding not in ("ofa", "onehot"):
            raise ValueError(f"encoding={encoding!r} is unknown; allowed values: ['auto', 'ofa', 'onehot']")
        if encoding == "ofa" and not _ofa_encodable(space):
            raise SpaceError(
                f"encoding='ofa' needs an OFA-MobileNetV3 space with k in {{3,5,7}}, e in {{3,4,6}} and r in 112..239; "
                f"space {space.name} is not one — use encoding='onehot'"
            )
        for name, v in (("hidden", hidden), ("n_layers", n_layers), ("epochs", epochs), ("batch_size", batch_size)):
            check_int(v, name, 1, error=ValueError)
        self.encoding = encoding
        self.hidden, self.n_layers = int(hidden), int(n_layers)
        self.epochs, self.batch_size, self.min_steps = int(epochs), int(batch_size), int(min_steps)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.init = None if init in (None, "") else str(init)
        if self.init is not None and (encoding != "ofa" or self.hidden != 400 or self.n_layers != 3):
            raise ValueError("init from the official OFA predictor needs encoding='ofa', hidden=400, n_layers=3")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.threads = threads
        self.in_features = 128 if encoding == "ofa" else len(space.features(space.sample(1, 0))[0])
        self.model: nn.Sequential | None = None
        self.y_mean = 0.0
        self.y_std = 1.0
        self.n_train = 0

    # ------------------------------------------------------------------ encoding
    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """The encoding of ``archs`` (float32 ``(n, in_features)``); archs are validated by the space."""
        if self.encoding == "ofa":
            if isinstance(archs, ArchBatch) and archs.space is self.space:
                return ofa_predictor_features_arrays(*archs.arrays)
            return ofa_predictor_features([self.space.validate(a) for a in archs])
        if isinstance(archs, ArchBatch) and archs.space is self.space:
            return self.space.features(archs.archs)
        return self.space.features([self.space.validate(a) for a in archs])

    # ------------------------------------------------------------------ training
    def _init_model(self) -> nn.Sequential:
        model = build_mlp(self.in_features, self.hidden, self.n_layers)
        if self.init is not None:
            from .ofa_accuracy import load_ofa_mlp_state
            from .assets import fetch

            p = Path(self.init if self.init != "ofa" else "ofa/acc_predictor.pth").expanduser()
            local = p if p.is_file() else fetch(str(p))
            model.load_state_dict(load_ofa_mlp_state(local))
        return model

    def fit(self, archs: Sequence[Any], values: Sequence[float]) -> "MLPAccuracyPredictor":
        """Train on ``archs`` and their measured accuracies ``values`` (any units; kept for predict)."""
        X = self.features(archs)
        y = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(y) != len(X):
            raise ValueError(f"fit: got {len(X)} archs and {len(y)} values; give one value per arch")
        if len(y) < 2:
            raise ValueError(f"fit: needs at least 2 evaluated archs; got {len(y)}")
        if not np.isfinite(y).all():
            raise ValueError("fit: values contain NaN or inf; drop the failed evaluations first")
        with torch_threads(self.threads):
            return self._fit(X, y)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> "MLPAccuracyPredictor":
        gen = torch.Generator().manual_seed(self.seed)
        with torch_seeded(self.seed):
            model = self._init_model()
        if self.init is not None:
            # the official MLP outputs a fraction: keep its scale, learn in its units
            self.y_mean, self.y_std = 0.0, (100.0 if np.median(y) > 1.5 else 1.0)
        else:
            self.y_mean, self.y_std = float(y.mean()), float(y.std() or 1.0)
        model.to(self.device).train()
        Xt = torch.from_numpy(X).to(self.device)
        yt = torch.from_numpy(((y - self.y_mean) / self.y_std).astype(np.float32)).to(self.device)
        n = len(yt)
        bs = min(self.batch_size, n)
        per_epoch = math.ceil(n / bs)
        epochs = max(self.epochs, math.ceil(self.min_steps / per_epoch))
        total = epochs * per_epoch
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(self.device)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                loss = torch.nn.functional.mse_loss(model(Xt[idx])[:, 0], yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.n_train = n
        return self

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("MLPAccuracyPredictor is not trained; call fit(archs, values) or load(path) first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.in_features:
            raise ValueError(f"features must have shape (n, {self.in_features}); got {X.shape}")
        out = np.empty(len(X), dtype=np.float64)
        for i in range(0, len(X), 65536):
            xb = torch.from_numpy(X[i : i + 65536]).to(self.device)
            out[i : i + len(xb)] = self.model(xb)[:, 0].double().cpu().numpy()
        return out * self.y_std + self.y_mean

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if len(archs) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.predict_features(self.features(archs))

    # ------------------------------------------------------------------ io
    def _settings(self) -> dict:
        return {
            "hidden": self.hidden,
            "n_layers": self.n_layers,
            "encoding": self.encoding,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "min_steps": self.min_steps,
            "seed": self.seed,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trained predictor to ``path`` atomically (temp file, then rename)."""
        if self.model is None:
            raise RuntimeError("MLPAccuracyPredictor is not trained; nothing to save")
        path = Path(path)
        if path.is_dir():
            from hwnas.spaces.errors import UserError

            raise UserError(f"{path} is a folder; give the predictor's file path, e.g. {path / 'acc_mlp.pt'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        from hwnas.spaces.io import space_spec

        blob = {
            "format": _FORMAT,
            "space": space_spec(self.space),
            "settings": self._settings(),
            "in_features": self.in_features,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
            "n_train": self.n_train,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        with atomic_path(path) as tmp:
            from hwnas.supernet.checkpoint import torch_save

            torch_save(blob, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace | None = None, device: str = "cpu") -> "MLPAccuracyPredictor":
        """Read a predictor written by :meth:`save` (``weights_only=True``). ``space`` defaults to the
        saved space, rebuilt from the file's data through the space registry (nothing named in the file is
        imported); a given space (e.g. the search's) must produce the same feature size."""
        from hwnas.predictors.build import abs_path

        path = Path(abs_path(path))
        if not path.is_file():
            raise PredictorLoadError(f"accuracy predictor file {path} does not exist; train one and save() it first")
        from .tensorfile import TensorFileError, torch_load_weights

        try:
            blob = torch_load_weights(path)
        except TensorFileError as exc:
            raise PredictorLoadError(f"{exc.source} is not a readable predictor file: {exc.reason} (an MLP predictor: "
                                     "MLPAccuracyPredictor.save(path))") from None
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise PredictorLoadError(f"{path} is not an MLPAccuracyPredictor file (format {_FORMAT!r} expected)")
        saved = _saved_space(blob, path)
        if space is None:
            space = saved
        elif getattr(space, "width_mult", None) != getattr(saved, "width_mult", None) or type(space) is not type(saved):
            # (the same encoding, other networks: a w1.2 predictor would price w1.0 archs without a word)
            raise SpaceError(f"{path} was trained on space {saved.name} and cannot price space {space.name} (another "
                             "network: other widths); train one on this space's evaluations")
        try:
            pred = cls(space, device=device, **blob["settings"])
        except SpaceError as exc:
            raise SpaceError(f"{path} was trained on space {saved.name} and cannot price space {space.name}: {exc}") from None
        if pred.in_features != blob["in_features"]:
            raise SpaceError(
                f"{path} was trained on {blob['in_features']} features but space {space.name} gives {pred.in_features}; "
                f"load it with the space it was trained on ({saved.name})"
            )
        model = build_mlp(pred.in_features, pred.hidden, pred.n_layers)
        model.load_state_dict(blob["state_dict"])
        model.to(pred.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        pred.model = model
        pred.y_mean, pred.y_std = float(blob["y_mean"]), float(blob["y_std"])
        pred.n_train = int(blob["n_train"])
        return pred

    def __repr__(self) -> str:
        state = f"trained on {self.n_train}" if self.model is not None else "untrained"
        return f"MLPAccuracyPredictor(space={self.space.name!r}, encoding={self.encoding!r}, hidden={self.hidden}, {state})"


def evaluations_from_cache(
    path: str | os.PathLike, space: SearchSpace, fingerprint: str | None = None, metric: str = "top1"
) -> tuple[list, np.ndarray]:
    """``(archs, values)`` of the supernet evaluations stored in a ``SupernetAccuracy`` SQLite cache
    (table ``supernet_accuracy``), to train :class:`MLPAccuracyPredictor` on them. ``fingerprint``
    selects one evaluation protocol (checkpoint, data, calibration); required when the cache holds several."""
    import sqlite3

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation cache {path} does not exist; run a search with accuracy=supernet and a cache first")
    if metric not in ("top1", "top5"):
        raise ValueError(f"metric={metric!r} is unknown; allowed: ['top1', 'top5']")
    con = sqlite3.connect(str(path))
    try:
        fps = [r[0] for r in con.execute("SELECT DISTINCT fingerprint FROM supernet_accuracy")]
        if fingerprint is None:
            if len(fps) > 1:
                raise ValueError(f"{path} holds evaluations of {len(fps)} protocols; pass fingerprint= one of: "
                                 + "; ".join(f"{fp!r} ({_protocol_text(con, fp)})" for fp in fps))
            fingerprint = fps[0] if fps else ""
        rows = con.execute(f"SELECT arch, {metric} FROM supernet_accuracy WHERE fingerprint=? ORDER BY rowid", (fingerprint,)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a SupernetAccuracy cache ({exc})") from None
    finally:
        con.close()
    if not rows:
        raise ValueError(f"{path} has no evaluations for fingerprint {fingerprint!r}")
    archs = [space.validate(a) for a, _ in rows]
    return archs, np.array([v for _, v in rows], dtype=float)


def _protocol_text(con: Any, fp: str) -> str:
    """What fingerprint ``fp`` of an accuracy cache stands for, in a few words (caches of older versions: unknown)."""
    import sqlite3

    try:
        row = con.execute("SELECT protocol FROM supernet_protocols WHERE fingerprint=?", (fp,)).fetchone()
        proto = json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, ValueError, TypeError):
        proto = None
    if not isinstance(proto, dict):
        return "protocol not recorded"
    return (f"checkpoint {proto.get('checkpoint_path') or 'random-init'}, val {proto.get('val')}, "
            f"n_calib {proto.get('n_calib')}, n_val {proto.get('n_val')}, seed {proto.get('seed')}")


def _saved_space(blob: dict, path: Path) -> SearchSpace:
    """The space a predictor file was trained on, rebuilt from its data (files of older versions held
    the space's name and ``to_config()``; those are read through the same registry table)."""
    from hwnas.spaces.io import space_from_spec

    spec = blob.get("space")
    if isinstance(spec, str):  # older files: name + to_config()
        cfg = dict(blob.get("space_config") or {})
        if "_target_" not in cfg:
            cfg = {"space": spec, "options": {k: v for k, v in cfg.items() if k != "name"}}
        spec = cfg
    return space_from_spec(spec, path)
