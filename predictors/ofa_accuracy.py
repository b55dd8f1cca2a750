"""Once-for-All's official ImageNet accuracy predictor for OFA-MobileNetV3 (w1.2) subnets.

The predictor is a small MLP, ``Linear(128,400)-ReLU-Linear(400,400)-ReLU-Linear(400,400)-ReLU-
Linear(400,1)``, released as ``ofa/acc_predictor.pth`` (state dict keys ``0.*, 2.*, 4.*, 6.*``). Its
input is the 128-d encoding of :func:`hwnas.spaces.mbconv.ofa_predictor_features` (per slot one-hot
kernel and expand, zeros for inactive slots, one-hot resolution bin) and its output is top-1 as a
fraction.

The newer OFA layout of the same network (``layers.0.0.weight ... layers.3.weight`` + ``base_acc``) is
read too. Any other file is refused with an error that names the mismatching tensors.

Prediction is batched (chunks of ``chunk`` archs) under ``torch.no_grad``; when the input is an
:class:`hwnas.spaces.ArchBatch` of an OFA-MobileNetV3 space the encoding is built directly from the
decoded genome arrays, without arch objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.spaces.base import ArchBatch, SpaceError
from hwnas.spaces.mbconv import (
    OFAMobileNetV3Arch,
    OFAMobileNetV3Space,
    ofa_predictor_features,
    ofa_predictor_features_arrays,
)

from .assets import fetch
from .base import Predictor
from hwnas.spaces.errors import UserError

__all__ = ["OFAAccuracyPredictor", "PredictorLoadError", "load_ofa_mlp_state"]

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


def load_ofa_mlp_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read and check the accuracy-predictor state dict at ``path``; return it in the ``0/2/4/6``
    layout (float32, CPU). Raises :class:`PredictorLoadError` naming what is wrong."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a torch file / not weights-only loadable
        raise PredictorLoadError(
            f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it must be Once-for-All's ofa/acc_predictor.pth — delete it and fetch it again"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PredictorLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    sd = {str(k).removeprefix("module."): v for k, v in obj.items()}
    if any(k in _NEW_LAYOUT for k in sd):
        base = sd.pop("base_acc", None)
        sd = {_NEW_LAYOUT.get(k, k): v for k, v in sd.items()}
        if "6.weight" in sd and "6.bias" not in sd:
            sd["6.bias"] = (
                base.reshape(1).to(sd["6.weight"].dtype) if base is not None else torch.zeros(1, dtype=sd["6.weight"].dtype)
            )
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
    out = {k: sd[k].detach().to(torch.float32).contiguous() for k in EXPECTED}
    for k, v in out.items():
        if not torch.isfinite(v).all():
            raise PredictorLoadError(f"{path}: tensor {k} contains NaN or inf values; the file is corrupt")
    return out


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
        device: str | torch.device = "cpu",
        chunk: int = 32768,
    ) -> None:
        if space is not None and not isinstance(space, OFAMobileNetV3Space):
            raise SpaceError(
                f"OFAAccuracyPredictor: space {getattr(space, 'name', space)!r} is not an OFA-MobileNetV3 space; "
                "the official predictor only prices ofa_mbv3_w12 / ofa_mbv3_w10 archs"
            )
        self.space = space
        p = Path(os.fspath(path)).expanduser()
        local = p if p.is_file() else fetch(str(path), mirror=mirror)
        self.path = Path(local)
        self.device = torch.device(device)
        self.chunk = int(chunk)
        sd = load_ofa_mlp_state(self.path)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(IN_FEATURES, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, 1),
        )
        self.model.load_state_dict(sd)
        self.model.to(self.device).eval()
        for prm in self.model.parameters():
            prm.requires_grad_(False)

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
    @torch.no_grad()
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Run the MLP on an encoded matrix ``(n, 128)``; returns top-1 fractions ``(n,)``."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != IN_FEATURES:
            raise ValueError(f"features must have shape (n, {IN_FEATURES}); got {X.shape}")
        out = np.empty(len(X), dtype=np.float64)
        for i in range(0, len(X), self.chunk):
            xb = torch.from_numpy(X[i : i + self.chunk]).to(self.device)
            out[i : i + len(xb)] = self.model(xb)[:, 0].double().cpu().numpy()
        return out

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if len(archs) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.predict_features(self.features(archs))

    def __repr__(self) -> str:
        return f"OFAAccuracyPredictor(path={str(self.path)!r}, device={str(self.device)!r})"
