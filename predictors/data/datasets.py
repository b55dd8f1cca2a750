"""Multi-device latency datasets: the same architectures measured on several devices.

File format (CSV, one row per arch): an arch column, then one numeric column per device
(milliseconds). hwnas writes the arch column as ``arch``: JSON for the MobileNet spaces, the usual
string for NAS-Bench-201 (``|op~0|+...``) and the ``op_idx`` string for FBNet. The reference files
(``latency/{ofa_mbv3,fbnet,nasbench201}.csv`` of the assets mirror) name it ``arch``, ``op_idx`` or
``arch_str``; all three are read. Non-numeric extra columns (``ops``) are ignored, integer metadata
columns such as NAS-Bench-201's ``index`` are kept in ``dataset.meta``. Missing values are NaN.

    ds = load_dataset("nasbench201")               # from the assets mirror / cache
    ds = LatencyDataset.from_csv("my.csv", space)  # a file written by hwnas (or by hand)
    y = ds["pixel3"]                                # np.ndarray (n,)
"""

from __future__ import annotations

import csv
import math
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_path, fetch
from hwnas.predictors.base import Predictor
from hwnas.spaces.errors import UserError

log = logging.getLogger("hwnas.data")

#: builtin datasets: name -> (asset path, space name)
BUILTIN = {
    "nasbench201": ("latency/nasbench201.csv", "nasbench201"),
    "fbnet": ("latency/fbnet.csv", "fbnet"),
    "ofa_mbv3": ("latency/ofa_mbv3.csv", "ofa_mbv3_w12"),
}
ARCH_COLUMNS = ("arch", "arch_str", "op_idx")
META_COLUMNS = ("index",)
IGNORED_COLUMNS = ("ops",)


class DatasetError(UserError, ValueError):
    """A latency dataset file or request is invalid; the message says what to fix."""


def _space(space: Any):
    from hwnas.spaces import create_space

    return create_space(space) if isinstance(space, str) else space


def arch_text(space: Any, arch: Any) -> str:
    """The text hwnas writes in the ``arch`` column for ``arch``."""
    a = space.validate(arch)
    if hasattr(a, "ks"):  # MobileNet spaces: OFA's JSON convention, as in the reference files
        return a.to_json()
    return a.to_str()


def guess_space(header: Sequence[str], first_arch: str) -> str:
    """Space name for a file from its arch column and first value."""
    if "arch_str" in header:
        return "nasbench201"
    if "op_idx" in header:
        return "fbnet"
    t = first_arch.strip()
    if t.startswith("|"):
        return "nasbench201"
    if t.startswith("{") and '"ks"' in t:
        import json

        n = len(json.loads(t)["ks"])
        return "ofa_mbv3_w12" if n == 20 else "ofa_proxyless_w13"
    if t.startswith("r") and ":" in t:
        return "ofa_mbv3_w12" if t.count("/") == 4 else "ofa_proxyless_w13"
    if len(t.split()) == 22:
        return "fbnet"
    raise DatasetError(f"cannot tell the space of arch {t[:60]!r}; pass space= explicitly")


@dataclass
class LatencyDataset:
    """Archs of one space with their latency on several devices (``table[device]`` aligned with ``archs``)."""

    space: Any
    archs: list
    table: dict[str, np.ndarray]
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        self.archs = list(self.archs)
        n = len(self.archs)
        tab = {}
        for dev, v in self.table.items():
            v = np.asarray(v, dtype=float).reshape(-1)
            if v.shape[0] != n:
                raise DatasetError(f"device {dev!r} has {v.shape[0]} values for {n} archs; give one per arch")
            tab[str(dev)] = v
        self.table = tab
        for k, v in self.meta.items():
            if len(v) != n:
                raise DatasetError(f"meta column {k!r} has {len(v)} values for {n} archs")
        self._pos: dict | None = None

    # ------------------------------------------------------------------ access
    @property
    def devices(self) -> list[str]:
        return list(self.table)

    def __len__(self) -> int:
        return len(self.archs)

    def __getitem__(self, device: str) -> np.ndarray:
        return self.latency(device)

    def latency(self, device: str) -> np.ndarray:
        if device not in self.table:
            raise DatasetError(f"device={device!r} is not in dataset {self.name or ''}; devices: {self.devices}")
        return self.table[device]

    def matrix(self, devices: Sequence[str] | None = None) -> np.ndarray:
        """``(n, n_devices)`` latency matrix."""
        devs = list(devices) if devices is not None else self.devices
        return np.stack([self.latency(d) for d in devs], axis=1)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "LatencyDataset":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return LatencyDataset(
            self.space,
            [self.archs[i] for i in idx],
            {d: v[idx] for d, v in self.table.items()},
            {k: np.asarray(v)[idx] for k, v in self.meta.items()},
            name=self.name,
        )

    def within(self, space: Any, field: str = "dataset") -> "LatencyDataset":
        """The rows whose arch is one of ``space`` (a space with fewer resolutions, e.g. the pipeline's OFA
        preset at 160..224 step 16 against a file measured at 128..224 step 4), as archs of ``space``. A
        builtin file read for such a space used to stop at its first other row, which silently cost the
        adaptation its device library. No row left is one error naming ``field``."""
        from hwnas.spaces import SpaceError

        if getattr(space, "name", None) == getattr(self.space, "name", None) and space.to_config() == self.space.to_config():
            return self
        keep, archs = [], []
        for i, a in enumerate(self.archs):
            try:
                archs.append(space.validate(a.to_dict() if hasattr(a, "to_dict") else a))
            except SpaceError:
                continue
            keep.append(i)
        if not keep:
            raise DatasetError(f"{field}: no arch of dataset {self.name or ''} is in space {getattr(space, 'name', space)!r} "
                               f"(its rows are archs of {getattr(self.space, 'name', '?')}); give a dataset of this space")
        idx = np.asarray(keep)
        out = LatencyDataset(space, archs, {d: v[idx] for d, v in self.table.items()},
                             {k: np.asarray(v)[idx] for k, v in self.meta.items()}, name=self.name)
        if len(keep) < len(self.archs):
            log.info("%s %s: %d of its %d rows are archs of space %s (the others are outside it)", field, self.name,
                     len(keep), len(self.archs), getattr(space, "name", space))
        return out

    def select_devices(self, devices: Sequence[str]) -> "LatencyDataset":
        return LatencyDataset(self.space, self.archs, {d: self.latency(d) for d in devices}, dict(self.meta), self.name)

    def position(self, arch: Any) -> int:
        """Row of ``arch`` (validated against the space)."""
        if self._pos is None:
            self._pos = {a: i for i, a in enumerate(self.archs)}
        a = self.space.validate(arch)
        if a not in self._pos:
            raise DatasetError(f"arch {a} is not in dataset {self.name or ''}")
        return self._pos[a]

    def lookup(self, archs: Sequence[Any], device: str) -> np.ndarray:
        """Latencies of ``archs`` on ``device`` (each arch must be in the dataset)."""
        y = self.latency(device)
        return np.array([y[self.position(a)] for a in archs], dtype=float)

    # ------------------------------------------------------------------ io
    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``arch`` + one column per device (+ meta columns first), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            metas = list(self.meta)
            w.writerow(metas + ["arch"] + self.devices)
            cols = [self.table[d] for d in self.devices]
            for i, a in enumerate(self.archs):
                row = [str(self.meta[m][i]) for m in metas] + [arch_text(self.space, a)]
                row += ["" if not np.isfinite(c[i]) else repr(float(c[i])) for c in cols]
                w.writerow(row)
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike, space: Any = None, name: str = "") -> "LatencyDataset":
        """Read a dataset file (hwnas format or a reference file); ``space`` (name or object) is guessed
        from the arch column when omitted."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"latency dataset {path} does not exist")
        try:  # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path} is not a text CSV file (byte {exc.start} is not UTF-8); give a CSV with a header "
                               "'arch,<device>,...' and one row per arch, saved as UTF-8 text") from None
        except csv.Error as exc:
            raise DatasetError(f"{path} is not a readable CSV file ({exc}); save it as a plain CSV with a header "
                               "'arch,<device>,...' and one row per arch") from None
        if len(rows) < 2:
            raise DatasetError(f"{path} has no data rows; expected a header 'arch,<device>,...' and one row per arch")
        header = [h.strip() for h in rows[0]]
        acols = [c for c in ARCH_COLUMNS if c in header]
        if not acols:
            raise DatasetError(f"{path} has no arch column; name one of {list(ARCH_COLUMNS)} (columns: {header[:6]}...)")
        ai = header.index(acols[0])
        if space is None:
            space = guess_space(header, rows[1][ai])
        space = _space(space)
        archs, devs, metas = [], {}, {}
        dev_cols = [(j, h) for j, h in enumerate(header) if j != ai and h not in ARCH_COLUMNS + IGNORED_COLUMNS + META_COLUMNS]
        meta_cols = [(j, h) for j, h in enumerate(header) if h in META_COLUMNS]
        vals = np.full((len(rows) - 1, len(dev_cols)), np.nan)
        for r, row in enumerate(rows[1:]):
            if len(row) != len(header):
                raise DatasetError(f"{path} line {r + 2} has {len(row)} fields; the header has {len(header)}")
            try:
                archs.append(space.validate(row[ai]))
            except ValueError as exc:
                raise DatasetError(f"{path} line {r + 2}: {exc}") from None
            for c, (j, h) in enumerate(dev_cols):
                t = row[j].strip()
                if t:
                    try:
                        v = float(t)
                    except ValueError:
                        raise DatasetError(f"{path} line {r + 2}: column {h!r} value {t!r} is not a number") from None
                    if not v > 0 and not math.isnan(v) or math.isinf(v):  # "nan" (a pandas export) is a cell not measured
                        raise DatasetError(f"{path} line {r + 2}: column {h!r} value {t!r} is not a latency; give a finite "
                                           "positive number of milliseconds, or leave the cell empty for an arch not measured")
                    vals[r, c] = v
        for j, h in meta_cols:
            try:
                metas[h] = np.array([int(row[j]) for row in rows[1:]])
            except ValueError:
                bad = next(r for r, row in enumerate(rows[1:]) if not row[j].strip().lstrip("-").isdigit())
                raise DatasetError(f"{path} line {bad + 2}: column {h!r} value {rows[bad + 1][j]!r} is not a whole number; "
                                   f"give the arch's {h} in the reference benchmark, or drop the column") from None
        devs = {h: vals[:, c] for c, (j, h) in enumerate(dev_cols)}
        return cls(space, archs, devs, metas, name=name or path.stem)


_CACHE: dict[tuple[str, str], LatencyDataset] = {}


def _read_only(ds: LatencyDataset) -> LatencyDataset:
    """A cached builtin dataset, shared by every caller: its latency columns cannot be changed in place (``y *= 1000``
    on one caller's column changed every later caller's data, the adaptation's device library included)."""
    for y in ds.table.values():
        y.flags.writeable = False
    return ds


def load_dataset(name_or_path: str | os.PathLike, space: Any = None, mirror: str | None = None,
                 field: str = "dataset") -> LatencyDataset:
    """A builtin dataset by name (``nasbench201``, ``fbnet``, ``ofa_mbv3``; fetched through the assets
    mirror/cache) or any dataset file by path. Builtins are cached in memory, their columns read-only (copy one to
    change it: ``ds.latency(d).copy()``).
    ``field``: the setting that named it, for the error when it is neither."""
    key = str(name_or_path)
    if key in BUILTIN:
        rel, sp = BUILTIN[key]
        path = fetch(rel, mirror=mirror)
        ck = (key, str(path))
        if ck not in _CACHE:
            _CACHE[ck] = _read_only(LatencyDataset.from_csv(path, sp, name=key))  # in the space the file was measured in
        full = _CACHE[ck]
        if space is None:
            return full
        want = _space(space)
        from hwnas.spaces.io import space_cache_key

        sk = (ck, space_cache_key(want))
        if sk not in _CACHE:
            _CACHE[sk] = _read_only(full.within(want, field))
        return _CACHE[sk]
    p = Path(key).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise DatasetError(f"{field}={key!r} is neither a builtin dataset ({sorted(BUILTIN)}) nor an existing CSV file "
                           f"({p} {what}); give one of those names or the path of a latency CSV")
    from hwnas.predictors.measure.plan import CSV_NAME, META_NAME, is_plan, plan_dataset

    if p.name == META_NAME and (p.parent / CSV_NAME).is_file():
        raise DatasetError(f"{field}={key!r} is the plan's settings file; give the filled table, {p.parent / CSV_NAME}")
    if is_plan(p):  # a filled plan of hwnas-measure --plan: checked row by row
        ds = plan_dataset(p)
        want = _space(space) if space is not None else None
        if want is not None and want.name != ds.space.name:
            if hasattr(ds.space, "is_restriction_of") and ds.space.is_restriction_of(want):
                return ds.within(want, field)  # a plan of a reduced space: its archs are archs of the full one
            raise DatasetError(f"{p} is a plan for space {ds.space.name!r}, not {want.name!r}")
        return ds
    try:
        return LatencyDataset.from_csv(p, space)
    except DatasetError as exc:  # the setting that named the file, as the checks of a filled plan say it
        raise DatasetError(f"{field}: {exc}") from None


def is_user_file(name_or_path: str | os.PathLike) -> bool:
    """Whether :func:`load_dataset` reads ``name_or_path`` as a CSV of the user's (not a builtin, not a
    filled plan, which :func:`~hwnas.predictors.measure.plan.read_plan` checks itself)."""
    from hwnas.predictors.measure.plan import is_plan

    key = os.fspath(name_or_path)
    return key not in BUILTIN and Path(key).expanduser().is_file() and not is_plan(Path(key).expanduser())


def check_measured(ds: LatencyDataset, device: str, path: str | os.PathLike, field: str = "target_samples",
                   check_units: bool = True) -> None:
    """Check the column ``device`` of a dataset file read by :meth:`LatencyDataset.from_csv` (row ``i`` on
    line ``i + 2``) as measured latencies, like a filled plan's: every value given is a finite positive
    number of milliseconds, an arch has one row, and the values are in one unit that some device can
    have (the plan's bounds: :data:`~hwnas.predictors.measure.plan.THROUGHPUT_GMACS` and its per-row
    check). The first problem is one :class:`DatasetError` naming the file, the line and the fix; an
    empty cell is an arch not measured and is skipped. ``check_units=False`` skips the unit check (a
    device beyond the bounds)."""
    from hwnas.predictors.measure.plan import PlanError, _check_units, implied_gmacs, throughput_off

    y = ds.latency(device)
    first: dict[Any, int] = {}
    rows = []
    for i, (a, v) in enumerate(zip(ds.archs, y)):
        where = f"{field}: {path} line {i + 2}"
        if np.isnan(v):  # (from_csv has refused values that are not finite positive numbers)
            continue
        if a in first:
            j = first[a]
            same = "with the same value" if y[j] == v else f"with another value ({y[j]:g} there, {v:g} here)"
            raise DatasetError(f"{where}: the same arch as line {j + 2} {same}; keep one row per arch (measure it "
                               "again if the two disagree)")
        first[a] = i
        rows.append(i)
    if not check_units or not rows or not callable(getattr(ds.space, "macs", None)):
        return
    archs = [ds.archs[i] for i in rows]
    macs = np.array([ds.space.macs(a) for a in archs], dtype=float)
    gmacs = implied_gmacs(macs, y[rows])
    bound = throughput_off(gmacs)
    if bound:
        raise DatasetError(f"{field}: {path}: the {device} values {bound}, or pass "
                           "+latency.check_units=false for a device beyond that")
    try:
        _check_units(Path(path), ds.space, archs, y[rows], 1, [f"line {i + 2}" for i in rows],
                     switch_off="+latency.check_units=false")
    except PlanError as exc:
        raise DatasetError(f"{field}: {str(exc).replace(' id line ', ' line ')}") from None


class DatasetLatency(Predictor):
    """The latency of one device column of a dataset: a simulated target (or a proxy) for studies.

    ``outside``: what an arch that the dataset does not hold gets -- ``"error"`` (the default; use a
    space the dataset covers completely, such as NAS-Bench-201) or ``"fit"``: a linear predictor fitted
    on the whole column prices it (a simulation of the device, not a measurement; reports say so).
    ``candidates(n, rng)`` draws archs from the dataset (the pipeline picks its samples among them).
    """

    metric = "latency_ms"

    def __init__(self, space: Any, dataset: str = "nasbench201", device: str = "titan_rtx_1", outside: str = "error",
                 mirror: str | None = None) -> None:
        if outside not in ("error", "fit"):
            raise DatasetError(f"outside={outside!r} is unknown; allowed values: ['error', 'fit']")
        self.space = _space(space)
        base = fit_space(self.space, dataset, mirror)  # (a reduced space: the dataset's own, whose rows it holds)
        self.data = load_dataset(dataset, space=base, mirror=mirror)
        self.y = self.data.latency(device)
        self.dataset, self.device, self.outside = str(dataset), str(device), outside
        self._fit = None
        if outside == "fit":  # fitted on every row of the column (a reduced space holds only a few of them)
            self._fit = fit_linear(base, dataset, device, mirror=mirror)

    @property
    def identity(self) -> dict:
        return {"dataset": self.dataset, "device": self.device, "outside": self.outside}

    def candidates(self, n: int, rng: Any = None) -> list:
        ok = np.flatnonzero(np.isfinite(self.y) & self._in_space())
        pick = np.sort(np.random.default_rng(rng).choice(ok, min(int(n), len(ok)), replace=False))
        return [self.data.archs[i] for i in pick]

    def _in_space(self) -> np.ndarray:
        """Which rows are archs of the space (all of them, unless the space is a reduced one of the dataset's)."""
        if self.data.space is self.space or getattr(self.space, "base", None) is self.data.space:
            return np.ones(len(self.data), dtype=bool)
        ok = np.zeros(len(self.data), dtype=bool)
        for i, a in enumerate(self.data.archs):
            try:
                self.space.validate(a)
                ok[i] = True
            except Exception:  # noqa: BLE001 - SpaceError: a choice the reduced space dropped
                pass
        return ok

    def holds(self, archs: Sequence[Any]) -> np.ndarray:
        """Which of ``archs`` are rows of the dataset with a value: the others' latencies (``outside="fit"``) are the
        linear fit's, not the device's (the pipeline labels them so)."""
        if self.data._pos is None:
            self.data._pos = {a: i for i, a in enumerate(self.data.archs)}
        pos = [self.data._pos.get(a) for a in archs]
        return np.array([i is not None and bool(np.isfinite(self.y[i])) for i in pos], dtype=bool)

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if self.data._pos is None:
            self.data._pos = {a: i for i, a in enumerate(self.data.archs)}
        out = np.empty(len(archs))
        miss = []
        for j, a in enumerate(archs):
            i = self.data._pos.get(a)
            if i is None or not np.isfinite(self.y[i]):
                miss.append(j)
            else:
                out[j] = self.y[i]
        if miss:
            if self._fit is None:
                raise DatasetError(
                    f"arch {archs[miss[0]]} is not in dataset {self.dataset!r}, so its {self.device} latency is unknown; "
                    "use a space the dataset covers completely (nasbench201) or outside=fit (a linear simulation)")
            out[miss] = self._fit.predict([archs[j] for j in miss])
        return out


def fit_space(space: Any, dataset: Any, mirror: str | None = None, field: str = "dataset") -> Any:
    """The space a predictor of ``space`` is fitted in on ``dataset``: the builtin dataset's own space when
    ``space`` is a restriction of it (a space reduced by ``hwnas-profile``), so that the rows with the dropped
    choices still inform the fit (only a handful of the dataset's archs lie inside a reduced space); a
    restricted categorical space's base; else ``space``. Its predictions take archs of ``space``."""
    sp = _space(space)
    base = getattr(sp, "base", None)
    if base is not None:
        return base
    if isinstance(dataset, str) and dataset in BUILTIN and hasattr(sp, "is_restriction_of"):
        full = load_dataset(dataset, mirror=mirror, field=field).space
        if sp.to_config() != full.to_config() and sp.is_restriction_of(full):
            log.info("%s: fitted in space %s (the search space %s is a restriction of it)", dataset, full.name, sp.name)
            return full
    return sp


def fit_linear(space: Any, dataset: Any = "nasbench201", device: str = "pixel3", mirror: str | None = None):
    """A :class:`~hwnas.predictors.linear.LinearLatencyPredictor` fitted on every measured row of one
    device column of a dataset (name, path or :class:`LatencyDataset`): a proxy device's predictor (fitted in
    :func:`fit_space`)."""
    from hwnas.predictors.linear import LinearLatencyPredictor

    sp = fit_space(space, dataset, mirror)
    ds = dataset if isinstance(dataset, LatencyDataset) else load_dataset(dataset, space=sp, mirror=mirror)
    y = ds.latency(device)
    ok = np.isfinite(y)
    if ok.sum() < 3:
        raise DatasetError(f"device {device!r} of dataset {ds.name!r} has {int(ok.sum())} values; a proxy needs at least 3")
    pred = LinearLatencyPredictor(sp).fit([a for a, o in zip(ds.archs, ok) if o], y[ok])
    pred.device_name = str(device)
    return pred
