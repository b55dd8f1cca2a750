"""Bring your own numbers: the K archs worth measuring, for devices only reachable through their own tools.

``hwnas-measure --plan 20 --space ofa_mbv3_w12 --out plan/`` picks the archs with the adaptation's own
selection (:func:`hwnas.predictors.adapt.select_samples` over a seeded pool of random archs) and writes

* ``plan/models/<id>.onnx`` (every axis fixed) and ``plan/models/<id>.pt`` (TorchScript) per arch;
* ``plan/plan.csv``: ``id, arch, onnx, torchscript, input_shape, latency_ms`` -- the last column empty;
* ``plan/plan.json``: what the plan is (space, device name, batch size, the arch of each id);
* ``plan/INSTRUCTIONS.md``: how to measure and fill the column.

The filled ``plan.csv`` is a latency dataset with one device column (the plan's device name):
``latency=adapted latency.target_samples=plan/plan.csv latency.target_device=<device>``, the pipeline's
``target=plan``, or :func:`read_plan`. Reading checks the fill and stops at the first problem with one
line: an empty cell, a value that is not a positive number, a duplicated id or arch, a row that is not
in the plan, and values in the wrong unit -- some rows 1000x off the others, or all of them implying
a speed no device has (seconds or microseconds typed as milliseconds; the bounds are in
:data:`THROUGHPUT_GMACS`, set ``"check_units": false`` in ``plan.json`` for a device beyond them).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_path, atomic_write
from hwnas.spaces.errors import UserError

FORMAT = "hwnas.plan/1"
CSV_NAME, META_NAME, README_NAME = "plan.csv", "plan.json", "INSTRUCTIONS.md"
COLUMN = "latency_ms"
FIELDS = ["id", "arch", "onnx", "torchscript", "input_shape", COLUMN]
#: implied work per second (GMAC/s, batch included) outside which a plan's values are taken for the wrong unit
THROUGHPUT_GMACS = (0.05, 3000.0)
#: rows whose ms per MAC is this far from the median row's are taken for another unit
MIXED_UNITS = 30.0


class PlanError(UserError, ValueError):
    """A plan is missing, or its filled latencies are unusable; the message names the row and the fix."""


def plan_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(plan.csv, plan.json)`` of a plan folder or of its ``plan.csv``."""
    p = Path(path)
    d = p if p.is_dir() or p.suffix == "" else p.parent
    return (d / CSV_NAME if p.is_dir() or p.suffix == "" else p), d / META_NAME


def is_plan(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a plan's CSV (a ``plan.json`` written by :func:`write_plan` beside it)."""
    csv_path, meta = plan_paths(path)
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT and m.get("csv") == csv_path.name


def plan_started(path: str | os.PathLike) -> bool:
    """Whether any latency of the plan at ``path`` has been filled in."""
    csv_path, _ = plan_paths(path)
    return csv_path.is_file() and any((r.get(COLUMN) or "").strip() for r in _read_rows(csv_path))


def select_plan_archs(space: Any, k: int, seed: int = 0, pool: int = 2000, selection: str = "auto") -> list:
    """The ``k`` archs the adaptation would measure: ``selection`` over ``pool`` random archs."""
    from hwnas.predictors.adapt import select_samples

    rng = np.random.default_rng(seed)
    cands = list(dict.fromkeys(space.sample(int(pool), rng)))
    if not 1 <= int(k) <= len(cands):
        raise PlanError(f"--plan {k}: choose between 1 and {len(cands)} archs")
    return [cands[i] for i in select_samples(space, cands, int(k), selection, rng)]


def write_plan(space: Any, archs: Sequence[Any], out_dir: str | os.PathLike, device: str = "my-device", batch_size: int = 1,
               formats: Sequence[str] = ("onnx", "torchscript"), note: str = "") -> Path:
    """Write a plan for ``archs`` into ``out_dir`` (see the module doc); returns the ``plan.csv`` path.

    An existing filled plan is never overwritten: a folder whose ``plan.csv`` has values is refused."""
    import torch

    from hwnas.spaces.io import arch_key, space_spec
    from hwnas.supernet.onnx import export_onnx
    from hwnas.supernet.static import build_static

    from hwnas.predictors.threads import torch_threads

    out = Path(out_dir)
    csv_path = out / CSV_NAME
    if plan_started(csv_path):
        raise PlanError(f"{csv_path} already holds measured latencies; choose another --out folder (nothing was overwritten)")
    (out / "models").mkdir(parents=True, exist_ok=True)
    archs = [space.validate(a) for a in archs]
    rows, keys = [], {}
    with torch_threads(1):
        for i, a in enumerate(archs):
            pid = f"a{i:03d}"
            shape = [int(batch_size), 3, int(a.r), int(a.r)]
            torch.manual_seed(i)
            net = build_static(space, a).eval()
            onnx_rel = ts_rel = ""
            if "onnx" in formats:
                onnx_rel = f"models/{pid}.onnx"
                export_onnx(net, shape, out / onnx_rel, dynamic="none", metadata={"hwnas.arch": arch_key(space, a), "hwnas.plan_id": pid})
            if "torchscript" in formats:
                import warnings

                ts_rel = f"models/{pid}.pt"
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    ts = torch.jit.trace(net, torch.randn(*shape), check_trace=False)
                with atomic_path(out / ts_rel) as tmp:
                    ts.save(str(tmp))
            rows.append({"id": pid, "arch": a.to_str(), "onnx": onnx_rel, "torchscript": ts_rel,
                         "input_shape": "x".join(map(str, shape)), COLUMN: ""})
            keys[pid] = arch_key(space, a)
    meta = {"format": FORMAT, "csv": CSV_NAME, "space": space_spec(space), "device": str(device), "batch_size": int(batch_size),
            "column": COLUMN, "unit": "ms", "check_units": True, "archs": keys, "note": note}
    atomic_write(out / META_NAME, json.dumps(meta, indent=1) + "\n")
    atomic_write(out / README_NAME, instructions(out, len(rows), device, batch_size))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(csv_path, buf.getvalue())
    return csv_path


def instructions(out: Path, n: int, device: str, batch_size: int) -> str:
    return f"""# Measuring this plan on `{device}`

This folder holds {n} networks picked by hwnas to adapt a latency predictor to your device.

1. Time every network of `{CSV_NAME}` on the device with your own tool, at the input shape of its
   `input_shape` column (batch {batch_size}, NCHW, float32):
   - `models/<id>.onnx` (every axis fixed; e.g. `trtexec --onnx=models/a000.onnx`, or convert it with
     your vendor's converter), or `models/<id>.pt` (TorchScript, `torch.jit.load`);
   - use one setting for all of them (threads, clocks, precision), warm up first, and take the
     **median** of many runs.
2. Write each median, **in milliseconds**, into the `{COLUMN}` column of its row. Keep the other
   columns and the rows as they are: every row needs a positive number; do not add, repeat or edit rows.
3. Give the numbers to hwnas:

       hwnas-search latency=adapted latency.target_samples={out / CSV_NAME} latency.target_device={device} latency.k=null
       hwnas-pipeline target=plan target.plan={out / CSV_NAME}

hwnas checks the fill when it reads it and names the row of the first problem (an empty cell, a value
that is not a positive number, a duplicated or unknown row, values 1000x off: seconds or microseconds).
If your device is really faster than {THROUGHPUT_GMACS[1]:g} or slower than {THROUGHPUT_GMACS[0]:g}
GMAC/s, set `"check_units": false` in `{META_NAME}`.
"""


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PlanError(f"{path} is not a text CSV file; fill the {COLUMN} column of the plan's plan.csv and save it as CSV") from None
    return list(csv.DictReader(io.StringIO(text)))


def read_plan(path: str | os.PathLike) -> tuple[Any, list, np.ndarray, dict]:
    """A filled plan: ``(space, archs, latencies_ms, meta)``, checked row by row (see the module doc)."""
    from hwnas.spaces.io import arch_key, space_from_spec

    csv_path, meta_path = plan_paths(path)
    if not csv_path.is_file():
        raise PlanError(f"{csv_path}: no such plan; write one with hwnas-measure --plan K --out <folder>")
    if not meta_path.is_file():
        raise PlanError(f"{meta_path} is missing; a plan's CSV is read with the plan.json written beside it by hwnas-measure --plan")
    meta = json.loads(meta_path.read_text())
    space = space_from_spec(meta.get("space"), meta_path)
    keys: dict[str, str] = dict(meta.get("archs") or {})
    rows = _read_rows(csv_path)
    if not rows or COLUMN not in rows[0] or "id" not in rows[0]:
        raise PlanError(f"{csv_path}: the header must keep the columns {FIELDS}; fill only the {COLUMN} column")
    seen_ids: dict[str, int] = {}
    seen_archs: dict[str, str] = {}
    archs, values = [], []
    for line, r in enumerate(rows, start=2):
        pid = (r.get("id") or "").strip()
        where = f"{csv_path} line {line} (id {pid or '?'})"
        if pid not in keys:
            raise PlanError(f"{where}: this row is not in the plan (plan ids {sorted(keys)[:3]}...); remove it, "
                            "or make a new plan for other archs")
        try:
            key = arch_key(space, r.get("arch", ""))
        except ValueError as exc:
            raise PlanError(f"{where}: arch {r.get('arch', '')[:60]!r} is not valid ({exc}); restore the plan's arch") from None
        if key != keys[pid]:
            raise PlanError(f"{where}: its arch is not the one the plan gave this id; restore the row as hwnas wrote it")
        if pid in seen_ids:
            raise PlanError(f"{where}: id {pid} is repeated (first on line {seen_ids[pid]}); keep one row per id")
        if key in seen_archs:
            raise PlanError(f"{where}: the same arch as id {seen_archs[key]}; keep one row per arch")
        seen_ids[pid], seen_archs[key] = line, pid
        text = (r.get(COLUMN) or "").strip()
        if not text:
            raise PlanError(f"{where}: {COLUMN} is empty; measure models/{pid}.onnx and write its median in ms "
                            f"(see {csv_path.parent / README_NAME})")
        try:
            v = float(text)
        except ValueError:
            raise PlanError(f"{where}: {COLUMN}={text!r} is not a number; write the median latency in milliseconds") from None
        if not (np.isfinite(v) and v > 0):
            raise PlanError(f"{where}: {COLUMN}={text} must be a positive number of milliseconds")
        archs.append(space.validate(key))
        values.append(v)
    missing = [p for p in keys if p not in seen_ids]
    if missing:
        raise PlanError(f"{csv_path}: ids {missing[:5]} of the plan have no row; restore them and fill their {COLUMN}")
    y = np.asarray(values, dtype=float)
    if meta.get("check_units", True):
        _check_units(csv_path, space, archs, y, int(meta.get("batch_size", 1)), list(seen_ids))
    return space, archs, y, meta


def _check_units(csv_path: Path, space: Any, archs: list, y: np.ndarray, batch: int, ids: list[str]) -> None:
    macs = np.array([space.macs(a) for a in archs], dtype=float) * batch
    per_mac = y / macs
    med = float(np.median(per_mac))
    off = np.flatnonzero((per_mac > med * MIXED_UNITS) | (per_mac < med / MIXED_UNITS))
    if len(off):
        i = int(off[0])
        factor = per_mac[i] / med
        raise PlanError(f"{csv_path} id {ids[i]}: {COLUMN}={y[i]:g} is {factor:.0f}x the other rows' time per MAC "
                        f"(a different unit?); write every value in milliseconds")
    gmacs = float(np.median(macs / (y * 1e-3) / 1e9))
    lo, hi = THROUGHPUT_GMACS
    if gmacs > hi:
        raise PlanError(f"{csv_path}: the values imply {gmacs:.0f} GMAC/s, faster than any device ({hi:g}); are they in "
                        f"seconds? write milliseconds (x1000), or set \"check_units\": false in {META_NAME}")
    if gmacs < lo:
        raise PlanError(f"{csv_path}: the values imply {gmacs:.3f} GMAC/s, slower than any device ({lo:g}); are they in "
                        f"microseconds? write milliseconds (/1000), or set \"check_units\": false in {META_NAME}")


def plan_dataset(path: str | os.PathLike):
    """A filled plan as a :class:`~hwnas.predictors.data.LatencyDataset` (one column: the plan's device)."""
    from hwnas.predictors.data import LatencyDataset

    space, archs, y, meta = read_plan(path)
    return LatencyDataset(space, archs, {meta["device"]: y}, name=f"plan:{plan_paths(path)[0]}")


class PlanMissing(PlanError):
    """Archs that no filled plan holds; ``archs`` lists them."""

    def __init__(self, message: str, archs: Sequence[Any]) -> None:
        super().__init__(message)
        self.archs = list(archs)


class PlanLatency:
    """Target latency from filled plans (numbers measured with the user's own tools).

    ``plan``: a filled ``plan.csv`` (or its folder), or None to start without numbers. ``predict``
    answers the archs the plans hold and raises :class:`PlanMissing` for the others;
    :meth:`request` writes a new plan for those (the pipeline then stops until it is filled).
    """

    metric = "latency_ms"

    def __init__(self, space: Any, plan: str | os.PathLike | None = None, device: str = "my-device") -> None:
        self.space, self.device = space, str(device)
        self.values: dict[str, float] = {}
        self.plans: list[str] = []
        if plan:
            self.add_plan(plan)

    @property
    def identity(self) -> dict:
        return {"plan_device": self.device}

    def add_plan(self, path: str | os.PathLike) -> None:
        from hwnas.spaces.io import arch_key

        space, archs, y, meta = read_plan(path)
        if meta.get("device") != self.device:
            raise PlanError(f"{plan_paths(path)[0]} was made for device {meta.get('device')!r}, not {self.device!r}; "
                            f"set target.device={meta.get('device')} or use that device's plan")
        self.values.update({arch_key(self.space, a): float(v) for a, v in zip(archs, y)})
        self.plans.append(str(plan_paths(path)[0]))

    @property
    def fixed_samples(self) -> list | None:
        """The archs of the plan given at construction (the pipeline's K samples), or None."""
        return [self.space.validate(k) for k in self.values] if self.values else None

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        from hwnas.spaces.io import arch_key

        keys = [arch_key(self.space, a) for a in archs]
        missing = [a for a, k in zip(archs, keys) if k not in self.values]
        if missing:
            raise PlanMissing(f"{len(missing)} arch(s) are in no filled plan of device {self.device!r}", missing)
        return np.array([self.values[k] for k in keys], dtype=float)

    def request(self, archs: Sequence[Any], out_dir: str | os.PathLike, note: str = "") -> Path:
        """Write a plan for ``archs`` into ``out_dir`` (unless one is already there); returns its CSV."""
        csv_path = Path(out_dir) / CSV_NAME
        if not csv_path.is_file():
            write_plan(self.space, archs, out_dir, device=self.device, note=note)
        return csv_path
