"""A device library: how other devices of the same space behave, as a prior for a new one.

The public datasets measure one set of archs on many devices (27 on NAS-Bench-201, 23 on FBNet, 9
GPU settings on OFA-MobileNetV3); a user may add their own columns. Each device becomes a per-position
linear model (:class:`~hwnas.predictors.linear.LinearLatencyPredictor` weights). To a new device the
library offers (see :mod:`.bayes`): each known device's direction as a candidate "it behaves like this
one", the mean direction, and the covariance of the directions -- the ways devices differ from each other.
That is what few-shot latency predictors get from pre-training on many devices, here in closed form.

``library="auto"`` uses the builtin dataset of the space when it can be read (mirror, cache, or its
public source); without one, adaptation falls back to the one-proxy prior and says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..linear import LinearLatencyPredictor, ridge_fit
from .basis import Basis, _space_key

log = logging.getLogger("hwnas.adapt")

#: devices whose predictions over the reference population correlate above this count as one device
#: when weighting the library's candidates (a library holding five near-identical GPUs must not give
#: "behaves like that GPU" five times the prior weight of a device it holds once)
DUPLICATE_CORRELATION = 0.98


@dataclass
class DeviceLibrary:
    """Per-position linear models of devices measured on one space: ``models[name] = (weights, bias)``."""

    space: Any
    models: dict[str, tuple[np.ndarray, float]]
    source: str = ""

    def __len__(self) -> int:
        return len(self.models)

    @property
    def devices(self) -> list[str]:
        return list(self.models)

    @classmethod
    def from_dataset(cls, dataset: Any, devices: Sequence[str] | None = None, exclude: Sequence[str] = (),
                     min_rows: int = 50, space: Any = None) -> "DeviceLibrary":
        """One linear model per device column of a :class:`~hwnas.predictors.data.LatencyDataset`, in the
        features of ``space`` (default: the dataset's). Rows whose arch ``space`` does not allow, or
        without a value for a device, are skipped; devices with fewer than ``min_rows`` are left out."""
        from hwnas.spaces import SpaceError

        from ..linear import latency_features

        space = space or dataset.space
        valid = []
        for a in dataset.archs:
            try:
                space.validate(a)
                valid.append(True)
            except SpaceError:
                valid.append(False)
        valid = np.array(valid)
        archs = [a for a, v in zip(dataset.archs, valid) if v]
        X = latency_features(space, archs) if archs else np.zeros((0, 0))
        models = {}
        for d in (devices or dataset.devices):
            if d in exclude:
                continue
            y = dataset[d][valid]
            ok = np.isfinite(y)
            if ok.sum() >= min_rows:
                w, b = ridge_fit(X[ok], y[ok])
                models[d] = (w, float(b))
        return cls(space, models, getattr(dataset, "name", "") or "dataset")

    @classmethod
    def from_predictors(cls, space: Any, predictors: Mapping[str, Any]) -> "DeviceLibrary":
        """From fitted :class:`LinearLatencyPredictor` objects, by device name."""
        models = {}
        for name, p in predictors.items():
            if not isinstance(p, LinearLatencyPredictor) or p.weights is None:
                raise TypeError(f"library[{name!r}]: a fitted LinearLatencyPredictor is needed, got {type(p).__name__}")
            models[str(name)] = (np.asarray(p.weights, dtype=float), float(p.bias))
        return cls(space, models, "predictors")

    def projected(self, space: Any, n: int = 2000, seed: int = 0) -> "DeviceLibrary":
        """The library in the features of ``space``, a restriction of its own (a space reduced by ``hwnas-profile``):
        each device's model refitted on what it predicts for ``n`` random archs of ``space`` (exact where the
        restricted features can express it). Fitted on the reduced space's own rows instead, a library keeps a
        handful of rows per device, below ``min_rows``: none."""
        from ..linear import latency_features

        archs = space.sample(n, np.random.default_rng(seed))
        Xf, Xr = latency_features(self.space, archs), latency_features(space, archs)
        models = {d: ridge_fit(Xr, Xf @ w + b) for d, (w, b) in self.models.items()}
        return DeviceLibrary(space, {d: (w, float(b)) for d, (w, b) in models.items()}, self.source)

    def without(self, names: Sequence[str]) -> "DeviceLibrary":
        drop = set(names)
        return DeviceLibrary(self.space, {k: v for k, v in self.models.items() if k not in drop}, self.source)

    def directions(self, basis: Basis) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """``(names, V, cvs, weights)``: unit directions ``V`` (one row per device), each device's
        coefficient of variation over the pool, and its prior weight (1 / the number of near-duplicates)."""
        names = list(self.models)
        bad = [n for n in names if np.shape(self.models[n][0]) != basis.mean.shape]
        if bad:
            from .core import AdaptationError

            raise AdaptationError(f"library: the models of {bad[:3]} have {np.shape(self.models[bad[0]][0])[0]} weights, the "
                                  f"space has {len(basis.mean)} features; build the library on the same space")
        V = np.stack([basis.unit(self.models[n][0]) for n in names])
        cvs = np.array([basis.cv(*self.models[n]) for n in names])
        if len(names) > 1:
            P = basis.pool_X @ V.T
            C = np.corrcoef(P.T)
            weights = 1.0 / (C > DUPLICATE_CORRELATION).sum(1)
        else:
            weights = np.ones(1)
        return names, V, cvs, weights


_CACHE: dict[tuple, DeviceLibrary] = {}


def _builtin_space(name: str, mirror: str | None) -> Any:
    from ..data import load_dataset

    return load_dataset(name, mirror=mirror, field="library").space


def _builtin_restricted_by(space: Any, mirror: str | None) -> str | None:
    """The builtin dataset whose space ``space`` is a restriction of (a space reduced by ``hwnas-profile``), if
    it can be read."""
    from hwnas.spaces import create_space

    from ..data import BUILTIN
    from ..data.datasets import fit_space

    if not hasattr(space, "is_restriction_of"):
        return None
    for key, (_, name) in BUILTIN.items():
        if type(create_space(name)) is not type(space):  # (cheap: the dataset is read only for its own family)
            continue
        try:
            if fit_space(space, key, mirror) is not space:
                return key
        except Exception:  # noqa: BLE001 - not readable here: not this one
            continue
    return None


def _builtin_for(space: Any) -> str | None:
    from ..data import BUILTIN

    names = {getattr(space, "registry_name", None), getattr(space, "name", None)}
    for key, (_, sp) in BUILTIN.items():
        if sp in names:
            return key
    return None


def resolve_library(library: Any, space: Any, exclude: Sequence[str] = (), mirror: str | None = None) -> DeviceLibrary | None:
    """A :class:`DeviceLibrary` from ``library``:

    * ``"auto"``: the builtin dataset of the space (``nasbench201``, ``fbnet``, ``ofa_mbv3``), if it can
      be read; otherwise ``None`` (the one-proxy prior), with a log line saying why;
    * ``None`` / ``False`` / ``"none"``: no library;
    * a dataset name or CSV path, a ``LatencyDataset``, a ``DeviceLibrary``, or ``{device: fitted
      LinearLatencyPredictor}``.

    ``exclude``: device names to leave out (the target itself, when it is in the library).
    """
    if library is None or library is False or (isinstance(library, str) and library.lower() in ("none", "off", "")):
        return None
    auto = isinstance(library, str) and library == "auto"
    if isinstance(library, DeviceLibrary):
        lib = library
    elif isinstance(library, Mapping):
        lib = DeviceLibrary.from_predictors(space, library)
    else:
        if auto:
            library = _builtin_for(space)
            if library is None:
                projected = _projected(space, exclude, mirror)  # a space reduced by hwnas-profile, of another name
                if projected is None:
                    log.info("device library: none for space %r (no builtin dataset); the one-proxy prior is used",
                             getattr(space, "name", space))
                return projected
        key = (os.fspath(library) if not hasattr(library, "archs") else id(library), _space_key(space), mirror)
        lib = _CACHE.get(key) if not hasattr(library, "archs") else None
        if lib is None:
            try:
                if hasattr(library, "archs"):
                    ds = library
                else:
                    from ..data import load_dataset

                    ds = load_dataset(os.fspath(library), space=space, mirror=mirror, field="library")
            except Exception as exc:  # noqa: BLE001 - no data, no library
                if not auto:
                    raise
                projected = _projected(space, exclude, mirror)  # no row in a space reduced by hwnas-profile
                if projected is not None:
                    return projected
                log.info("device library: %s unavailable (%s); the one-proxy prior is used", library,
                         str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return None
            lib = DeviceLibrary.from_dataset(ds, space=space)
            if not hasattr(library, "archs"):
                _CACHE[key] = lib
        if auto and not len(lib):  # a reduced space holds too few of the dataset's rows for any device
            return _projected(space, exclude, mirror)
    lib = lib.without(exclude)
    return lib if len(lib) else None


def _projected(space: Any, exclude: Sequence[str], mirror: str | None) -> DeviceLibrary | None:
    """The library of the builtin dataset whose space ``space`` restricts, in ``space``'s features
    (:meth:`DeviceLibrary.projected`); None when there is none."""
    full = _builtin_restricted_by(space, mirror)
    if full is None:
        return None
    key = ("projected", full, _space_key(space), mirror)
    if key not in _CACHE:
        whole = resolve_library(full, _builtin_space(full, mirror), mirror=mirror)
        if whole is None:
            return None
        _CACHE[key] = whole.projected(space)
    lib = _CACHE[key].without(exclude)
    return lib if len(lib) else None
