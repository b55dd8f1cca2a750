"""Once-for-All's official ImageNet accuracy predictor for OFA-MobileNetV3 (w1.2) subnets.

The predictor is a small MLP, ``Linear(128,400)-ReLU-Linear(400,400)-ReLU-Linear(400,400)-ReLU-
Linear(400,1)``, released as ``ofa/acc_predictor.pth`` (state dict keys ``0.*, 2.*, 4.*, 6.*``). Its
input is the 128-d encoding of :func:`hwnas.spaces.mbconv.ofa_predictor_features` (per slot one-hot
kernel and expand, zeros for inactive slots, one-hot resolution bin) and its output is top-1 as a
fraction.

The newer OFA layout of the same network (``layers.0.0.weight ... layers.3.weight`` + ``base_acc``) is
read too. Any other file is refused with an error that names the mismatching tensors.

The MLP runs in numpy (four float32 matrix products, batched in chunks of ``chunk`` archs), so a
search with this predictor never imports torch; its values equal torch's forward pass of the same
weights (tests/test_predictors_core.py). The file is read by :func:`hwnas.predictors.tensorfile.read_tensors`,
which refuses anything but tensors (nothing in the file is run). When the input is an
:class:`hwnas.spaces.ArchBatch` of an OFA-MobileNetV3 space the encoding is built directly from the
decoded genome arrays, without arch objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.spaces.base import ArchBatch, SpaceError
from hwnas.spaces.mbconv import (
    OFAMobileNetV3Arch,
    OFAMobileNetV3Space,
    ofa_predictor_features,
    ofa_predictor_features_arrays,
)

from .assets import find_file
from .base import Predictor
from .tensorfile import TensorFileError, read_tensors
from hwnas.spaces.errors import UserError

__all__ = ["OFAAccuracyPredictor", "PredictorLoadError", "load_ofa_mlp_state", "read_ofa_mlp"]

IN_FEATURES = 128
HIDDEN = 400

#: the expected tensors of the official file: name -> shape
EXPECTED: dict[str, tuple[int, ...]] = {
    "0.weight": (HIDDEN, IN_FEATURES),
    "0.bias": (HIDDEN,),
    "2.weight": (HIDDEN, HIDDEN),
    "2.bias": (HIDDEN,),
    "4.weight": (HIDDEN, HIDDEN),
    "4.bias": (HIDDEN,),
    "6.weight": (1, HIDDEN),
    "6.bias": (1,),
}

# newer OFA layout (nas/accuracy_predictor): Sequential of Sequential(Linear, ReLU) + Linear(no bias) + base_acc
_NEW_LAYOUT = {
    "layers.0.0.weight": "0.weight",
    "layers.0.0.bias": "0.bias",
    "layers.1.0.weight": "2.weight",
    "layers.1.0.bias": "2.bias",
    "layers.2.0.weight": "4.weight",
    "layers.2.0.bias": "4.bias",
    "layers.3.weight": "6.weight",
}


class PredictorLoadError(UserError, ValueError):
    """A predictor file could not be read or does not hold the expected tensors."""


def read_ofa_mlp(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check the accuracy-predictor weights at ``path`` (no torch needed); return them in the
    ``0/2/4/6`` layout as float32 arrays. Raises :class:`PredictorLoadError` naming what is wrong."""
    path = Path(path)
    try:
        obj = read_tensors(path)
    except TensorFileError as exc:
        raise PredictorLoadError(
            f"{path} is not a readable PyTorch state dict ({exc.reason}); it must be Once-for-All's "
            "ofa/acc_predictor.pth — delete it and fetch it again"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise PredictorLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    sd = {str(k).removeprefix("module."): v for k, v in obj.items()}
    if any(k in _NEW_LAYOUT for k in sd):
        base = sd.pop("base_acc", None)
        sd = {_NEW_LAYOUT.get(k, k): v for k, v in sd.items()}
        if "6.weight" in sd and "6.bias" not in sd:
            sd["6.bias"] = np.zeros(1, np.float32) if base is None else np.asarray(base, np.float32).reshape(1)
    missing = [k for k in EXPECTED if k not in sd]
    unexpected = sorted(k for k in sd if k not in EXPECTED)
    wrong = [
        f"{k}: {tuple(sd[k].shape)} (expected {EXPECTED[k]})"
        for k in EXPECTED
        if k in sd and tuple(sd[k].shape) != EXPECTED[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if wrong:
        problems.append("wrong shapes " + "; ".join(wrong))
    if problems:
        raise PredictorLoadError(
            f"{path} is not the OFA-MobileNetV3 accuracy predictor "
            f"(Linear(128,400)-ReLU-Linear(400,400)-ReLU-Linear(400,400)-ReLU-Linear(400,1)): " + ", ".join(problems)
        )
    out = {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in EXPECTED}
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise PredictorLoadError(f"{path}: tensor {k} contains NaN or inf values; the file is corrupt")
    return out


def load_ofa_mlp_state(path: str | os.PathLike) -> dict:
    """:func:`read_ofa_mlp` as a torch state dict (for ``nn.Module.load_state_dict``)."""
    import torch

    return {k: torch.from_numpy(v) for k, v in read_ofa_mlp(path).items()}


class OFAAccuracyPredictor(Predictor):
    """Predicted ImageNet top-1 (fraction) of OFA-MobileNetV3 subnets from the official MLP.

    ``path`` is an asset name below the OFA files base URL (fetched from the mirror / cache / web,
    checksum-verified) or an existing local file. ``space`` (optional) is the OFA-MobileNetV3 space
    whose archs are predicted; archs are also accepted as dicts / JSON / compact strings, which are then
    validated by that space (or by the arch type when no space is given).

    The official predictor was trained on w1.2 subnets; it accepts w1.0 archs (same encoding), but
    its values are then only a ranking proxy.
    """

    metric = "top1"

    def __init__(
        self,
        space: Any = None,
        path: str | os.PathLike = "ofa/acc_predictor.pth",
        mirror: str | os.PathLike | None = None,
        chunk: int = 4096,
    ) -> None:
        if space is not None and not isinstance(space, OFAMobileNetV3Space):
            raise SpaceError(
                f"OFAAccuracyPredictor: space {getattr(space, 'name', space)!r} is not an OFA-MobileNetV3 space; "
                "the official predictor only prices ofa_mbv3_w12 / ofa_mbv3_w10 archs; for this space use "
                "accuracy=supernet (a trained supernet), accuracy=mlp (a predictor you trained) or accuracy=custom"
            )
        self.space = space
        self.path = find_file(path, mirror, "accuracy.path")
        self.chunk = int(chunk)
        sd = read_ofa_mlp(self.path)
        # x @ W.T + b per layer; weights stored transposed (contiguous) for the row-major products
        self._layers = [(np.ascontiguousarray(sd[f"{i}.weight"].T), sd[f"{i}.bias"]) for i in (0, 2, 4, 6)]

    # ------------------------------------------------------------------ encoding
    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """The 128-d float32 encoding of ``archs`` (fast path for ArchBatch of an OFA-MBv3 space)."""
        if isinstance(archs, ArchBatch) and isinstance(archs.space, OFAMobileNetV3Space):
            ks, e, d, r = archs.arrays
            self._check_arrays(ks, e, r)
            return ofa_predictor_features_arrays(ks, e, d, r)
        return ofa_predictor_features([self._coerce(a) for a in archs])

    def _coerce(self, a: Any) -> OFAMobileNetV3Arch:
        if isinstance(a, OFAMobileNetV3Arch):
            return a
        if self.space is not None:
            return self.space.validate(a)
        if isinstance(a, (dict, str)):
            if isinstance(a, dict):
                return OFAMobileNetV3Arch.from_dict(a)
            s = a.strip()
            return OFAMobileNetV3Arch.from_json(s) if s.startswith("{") else OFAMobileNetV3Arch.from_str(s)
        raise SpaceError(
            f"OFAAccuracyPredictor takes OFA-MobileNetV3 archs (20 slots, 5 units); got {type(a).__name__}"
        )

    @staticmethod
    def _check_arrays(ks: np.ndarray, e: np.ndarray, r: np.ndarray) -> None:
        if not np.isin(ks, (3, 5, 7)).all() or not np.isin(e, (3, 4, 6)).all():
            raise SpaceError("the OFA accuracy predictor only encodes kernels {3,5,7} and expands {3,4,6}")
        r = np.asarray(r)
        if r.size and (r.min() < 112 or r.max() > 239):
            raise SpaceError(
                f"r={int(r.min()) if r.min() < 112 else int(r.max())} is outside the OFA predictor's resolution range 112..239"
            )

    # ------------------------------------------------------------------ prediction
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Run the MLP on an encoded matrix ``(n, 128)``; returns top-1 fractions ``(n,)``."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != IN_FEATURES:
            raise ValueError(f"features must have shape (n, {IN_FEATURES}); got {X.shape}")
        out = np.empty(len(X), dtype=np.float64)
        *hidden, (w_out, b_out) = self._layers
        for i in range(0, len(X), self.chunk):
            h = X[i : i + self.chunk]
            for w, b in hidden:
                h = h @ w
                h += b
                np.maximum(h, 0.0, out=h)
            out[i : i + len(h)] = (h @ w_out)[:, 0] + b_out[0]
        return out

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if len(archs) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.predict_features(self.features(archs))

    def __repr__(self) -> str:
        return f"OFAAccuracyPredictor(path={str(self.path)!r})"
