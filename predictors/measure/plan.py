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
:data:`THROUGHPUT_GMACS`, set ``"check_units": false`` in ``plan.json`` for a device beyond them); a
``plan.json`` that is not valid JSON any more is one line naming it.

A plan folder is written whole (built beside it, renamed into place) and never over a filled plan. A
plan that asks for other archs than the ones now wanted (:meth:`PlanLatency.request`: the pipeline's
stage ran again with other settings) is renamed ``plan.old-N``, never deleted: it holds the user's numbers.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_path, atomic_write, remove_stale_temps, replace_folder, temp_prefix
from hwnas.spaces.errors import UserError

FORMAT = "hwnas.plan/1"
CSV_NAME, META_NAME, README_NAME = "plan.csv", "plan.json", "INSTRUCTIONS.md"
COLUMN = "latency_ms"
FIELDS = ["id", "arch", "onnx", "torchscript", "input_shape", COLUMN]
#: what :func:`write_plan` puts into a plan folder (a folder holding anything else is not replaced)
PLAN_FILES = {CSV_NAME, META_NAME, README_NAME, "models"}
#: implied work per second (GMAC/s, batch included) outside which a plan's values are taken for the wrong unit
THROUGHPUT_GMACS = (0.05, 3000.0)
#: rows whose ms per MAC is this far from the median row's are taken for another unit
MIXED_UNITS = 30.0
#: a row this far off the others' trend of latency over MACs (log-log, robust fit) gets a warning: a decimal slip
#: (187 for 18.7) is 10x; the archs of one space scatter within about 2x of it on the datasets' devices
SLIP_WARN = 5.0

log = logging.getLogger("hwnas.measure")


class PlanError(UserError, ValueError):
    """A plan is missing, or its filled latencies are unusable; the message names the row and the fix."""


def plan_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(plan.csv, plan.json)`` of a plan folder or of its ``plan.csv``."""
    p = Path(path)
    d = p if p.is_dir() or p.suffix == "" else p.parent
    return (d / CSV_NAME if p.is_dir() or p.suffix == "" else p), d / META_NAME


def is_plan(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a plan's CSV (a ``plan.json`` written by :func:`write_plan` beside it).

    A ``plan.json`` beside it that is not valid JSON counts as a plan: users edit that file (``check_units``),
    and a broken edit must be reported by :func:`read_plan` naming it, not make the filled plan be read
    as some other CSV (or ignored)."""
    csv_path, meta = plan_paths(path)
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return csv_path.name == CSV_NAME
    except OSError:
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT and m.get("csv") == csv_path.name


def read_meta(path: str | os.PathLike) -> dict:
    """The checked ``plan.json`` of the plan at ``path``; a missing or broken one is one :class:`PlanError`
    naming the file and the fix."""
    _, meta_path = plan_paths(path)
    if not meta_path.is_file():
        raise PlanError(f"{meta_path} is missing; a plan's CSV is read with the plan.json written beside it by hwnas-measure --plan")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{meta_path} is not valid JSON ({exc}); it describes the plan and only its \"check_units\": true/false "
                        "may be edited: undo the edit (keep the quotes, commas and braces), or write the plan again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("archs"), dict):
        raise PlanError(f"{meta_path} is not the description of an hwnas plan (format {FORMAT!r} with the plan's archs); "
                        "restore the file hwnas-measure --plan wrote, or write the plan again")
    return meta


def plan_keys(path: str | os.PathLike) -> set[str]:
    """The arch keys a plan asks for (from its ``plan.json``; :func:`read_meta` checks it)."""
    return {str(k) for k in read_meta(path)["archs"].values()}


def plan_fingerprint(path: str | os.PathLike) -> dict:
    """What identifies the numbers of a plan: its resolved path and the sha256 of its ``plan.csv`` and
    ``plan.json`` (a result computed from a plan is stale once either changes)."""
    from hwnas.predictors.fingerprint import fingerprint_paths

    csv_path, meta_path = plan_paths(path)
    return {"plan": str(csv_path.resolve()), "sha256": fingerprint_paths([csv_path, meta_path])}


def set_aside(folder: str | os.PathLike) -> Path:
    """Rename ``folder`` to ``<name>.old-<N>`` (the first free N) beside it and return the new path: a plan
    that is no longer wanted still holds what the user measured, so it is kept, never deleted."""
    folder = Path(folder)
    n = 1
    while True:
        dest = folder.with_name(f"{folder.name}.old-{n}")
        if not dest.exists() and not dest.is_symlink():
            try:
                os.rename(folder, dest)  # one rename: the folder is either here or there
                return dest
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        n += 1


def plan_started(path: str | os.PathLike) -> bool:
    """Whether any latency of the plan at ``path`` has been filled in."""
    csv_path, _ = plan_paths(path)
    return csv_path.is_file() and any((r.get(COLUMN) or "").strip() for r in _read_rows(csv_path))


def select_plan_archs(space: Any, k: int, seed: int = 0, pool: int = 2000, selection: str = "auto") -> list:
    """The ``k`` archs the adaptation would measure: ``selection`` over ``pool`` random archs."""
    from hwnas.predictors.adapt import SELECTIONS, select_samples

    if selection != "auto" and selection not in SELECTIONS:
        raise PlanError(f"--selection {selection!r} is unknown; choose from {['auto'] + sorted(SELECTIONS)}")
    rng = np.random.default_rng(seed)
    cands = list(dict.fromkeys(space.sample(int(pool), rng)))
    if not 1 <= int(k) <= len(cands):
        raise PlanError(f"--plan {k}: choose between 1 and {len(cands)} archs")
    return [cands[i] for i in select_samples(space, cands, int(k), selection, rng)]


def write_plan(space: Any, archs: Sequence[Any], out_dir: str | os.PathLike, device: str = "my-device", batch_size: int = 1,
               formats: Sequence[str] = ("onnx", "torchscript"), note: str = "", then: str | None = None) -> Path:
    """Write a plan for ``archs`` into ``out_dir`` (see the module doc); returns the ``plan.csv`` path.

    The plan is built in a temporary folder beside ``out_dir`` and renamed into place when complete: a run
    killed during the (long) model export leaves the folder as it was, never new models beside an older
    ``plan.csv`` (they would be measured into the old rows), and no model of an earlier, larger plan
    survives into this one. An existing unfilled plan is replaced; a filled one is never overwritten (nor a
    folder holding anything else than a plan): it is refused with one line."""
    import torch

    from hwnas.spaces.io import arch_key, space_spec
    from hwnas.supernet.onnx import export_onnx
    from hwnas.supernet.static import build_static

    from hwnas.predictors.threads import torch_seeded, torch_threads

    out = Path(out_dir)
    csv_path = out / CSV_NAME

    def refuse_if_kept() -> None:
        if out.exists() and not out.is_dir():
            raise PlanError(f"--out {out} is a file; give a folder for the plan (it is created if missing)")
        if plan_started(csv_path):
            raise PlanError(f"{csv_path} already holds measured latencies; choose another --out folder (nothing was overwritten)")
        other = sorted(p.name for p in out.iterdir() if p.name not in PLAN_FILES) if out.is_dir() else []
        if other:
            raise PlanError(f"--out {out} holds files that are not a plan's ({', '.join(other[:3])}); choose a new or empty "
                            "folder for the plan (nothing was written)")

    if out.is_dir():
        remove_stale_temps(out)  # what the writes of a killed run left inside
    refuse_if_kept()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # the half-built plans of killed runs
    archs = [space.validate(a) for a in archs]
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_prefix(out), suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; give it the usual permissions
        (tmp / "models").mkdir()
        rows, keys = [], {}
        with torch_threads(1):
            for i, a in enumerate(archs):
                pid = f"a{i:03d}"
                shape = [int(batch_size), 3, int(a.r), int(a.r)]
                with torch_seeded(i):
                    net = build_static(space, a).eval()
                onnx_rel = ts_rel = ""
                if "onnx" in formats:
                    onnx_rel = f"models/{pid}.onnx"
                    export_onnx(net, shape, tmp / onnx_rel, dynamic="none", metadata={"hwnas.arch": arch_key(space, a), "hwnas.plan_id": pid})
                if "torchscript" in formats:
                    import warnings

                    ts_rel = f"models/{pid}.pt"
                    with warnings.catch_warnings(), torch.no_grad():
                        warnings.simplefilter("ignore")
                        ts = torch.jit.trace(net, torch.randn(*shape), check_trace=False)
                    with atomic_path(tmp / ts_rel) as t:
                        ts.save(str(t))
                rows.append({"id": pid, "arch": a.to_str(), "onnx": onnx_rel, "torchscript": ts_rel,
                             "input_shape": "x".join(map(str, shape)), COLUMN: ""})
                keys[pid] = arch_key(space, a)
        meta = {"format": FORMAT, "csv": CSV_NAME, "space": space_spec(space), "device": str(device), "batch_size": int(batch_size),
                "column": COLUMN, "unit": "ms", "check_units": True, "archs": keys, "note": note}
        atomic_write(tmp / META_NAME, json.dumps(meta, indent=1) + "\n")
        atomic_write(tmp / README_NAME, instructions(out, len(rows), device, batch_size, then))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write(tmp / CSV_NAME, buf.getvalue())
        refuse_if_kept()  # filled while the models were exported: kept as it is
        replace_folder(tmp, out)  # an unfilled plan (checked above) is replaced whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return csv_path


def instructions(out: Path, n: int, device: str, batch_size: int, then: str | None = None) -> str:
    """The plan's INSTRUCTIONS.md; ``then``: step 3 for a plan a running command asked for (the pipeline:
    run the same command again), instead of the commands that take a plan of ``hwnas-measure --plan``."""
    step3 = then or f"""Give the numbers to hwnas:

       hwnas-search latency=adapted latency.target_samples={out / CSV_NAME} latency.target_device={device} latency.k=null
       hwnas-pipeline target=plan target.plan={out / CSV_NAME} target.device={device}

   (the pipeline searches its own space: for it, a plan must hold archs of that space -- e.g.
   `--resolutions 160 176 192 208 224` for its OFA preset -- or let it write its plan itself:
   `hwnas-pipeline target=plan target.device={device}`)"""
    return f"""# Measuring this plan on `{device}`

This folder holds {n} networks picked by hwnas{' for the run that asked for them' if then else ' to adapt a latency predictor to your device'}.

1. Time every network of `{CSV_NAME}` on the device with your own tool, at the input shape of its
   `input_shape` column (batch {batch_size}, NCHW, float32):
   - `models/<id>.onnx` (every axis fixed; e.g. `trtexec --onnx=models/a000.onnx`, or convert it with
     your vendor's converter), or `models/<id>.pt` (TorchScript, `torch.jit.load`);
   - use one setting for all of them (threads, clocks, precision), warm up first, and take the
     **median** of many runs.
2. Write each median, **in milliseconds**, into the `{COLUMN}` column of its row. Keep the other
   columns and the rows as they are: every row needs a positive number; do not add, repeat or edit rows.
3. {step3}

hwnas checks the fill when it reads it and names the row of the first problem (an empty cell, a value
that is not a positive number, a duplicated or unknown row, values 1000x off: seconds or microseconds).
If your device is really faster than {THROUGHPUT_GMACS[1]:g} or slower than {THROUGHPUT_GMACS[0]:g}
GMAC/s, set `"check_units": false` in `{META_NAME}`.
"""


def _read_rows(path: Path) -> list[dict]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if b"\0" in raw[:4096]:
        raise PlanError(f"{path} is not a text CSV file; fill the {COLUMN} column of the plan's plan.csv and save it as CSV")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PlanError(f"{path} is not UTF-8 text (saved in another encoding, e.g. by a spreadsheet's plain 'CSV'); "
                        "save it as 'CSV UTF-8'") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if any((v or "").strip() for k, v in r.items() if k is not None)]  # a spreadsheet's ",,,," rows


def read_plan(path: str | os.PathLike, partial: bool = False) -> tuple[Any, list, np.ndarray, dict]:
    """A filled plan: ``(space, archs, latencies_ms, meta)``, checked row by row (see the module doc).

    ``partial``: only the rows filled so far (an empty cell is skipped, not an error; the filled ones are
    checked as always) -- what a plan that is set aside still holds."""
    from hwnas.spaces.io import arch_key, space_from_spec

    csv_path, meta_path = plan_paths(path)
    if not csv_path.is_file():
        raise PlanError(f"{csv_path}: no such plan; write one with hwnas-measure --plan K --out <folder>")
    meta = read_meta(csv_path)
    space = space_from_spec(meta.get("space"), meta_path)
    keys: dict[str, str] = dict(meta.get("archs") or {})
    rows = _read_rows(csv_path)
    if not rows or COLUMN not in rows[0] or "id" not in rows[0]:
        header = [str(k) for k in (rows[0] if rows else {}) if k is not None]
        first = header[0] if header else ""
        why = ""
        if ";" in first or "\t" in first:
            why = f" (its columns are separated by {'semicolons' if ';' in first else 'tabs'}: save it with commas)"
        elif any(h != h.strip() for h in header):
            why = f" (a column name has spaces around it: {[h for h in header if h != h.strip()][0]!r})"
        elif header:
            why = f" (it has {header})"
        raise PlanError(f"{csv_path}: the header must keep the columns {FIELDS}{why}; fill only the {COLUMN} column")
    seen_ids: dict[str, int] = {}
    seen_archs: dict[str, str] = {}
    archs, values, ids = [], [], []
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
        if not text and partial:
            continue
        if not text:
            raise PlanError(f"{where}: {COLUMN} is empty; measure models/{pid}.onnx and write its median in ms "
                            f"(see {csv_path.parent / README_NAME})")
        try:
            if "_" in text:  # (Python's float reads "1_2.1" as 121)
                raise ValueError(text)
            v = float(text)
        except ValueError:
            raise PlanError(f"{where}: {COLUMN}={text!r} is not a number; write the median latency in milliseconds") from None
        if not (np.isfinite(v) and v > 0):
            raise PlanError(f"{where}: {COLUMN}={text} must be a positive number of milliseconds")
        archs.append(space.validate(key))
        values.append(v)
        ids.append(pid)
    missing = [p for p in keys if p not in seen_ids]
    if missing and not partial:
        raise PlanError(f"{csv_path}: ids {missing[:5]} of the plan have no row; restore them and fill their {COLUMN}")
    y = np.asarray(values, dtype=float)
    check = meta.get("check_units", True)
    if not isinstance(check, bool):
        raise PlanError(f'{plan_paths(csv_path)[1]}: "check_units" is {check!r}; write true or false without quotes '
                        '(e.g. "check_units": false)')
    if check and len(y):
        _check_units(csv_path, space, archs, y, int(meta.get("batch_size", 1)), ids)
    return space, archs, y, meta


def implied_gmacs(macs: np.ndarray, latency_ms: np.ndarray) -> float:
    """The median throughput (GMAC/s) that latencies in ms imply for networks of ``macs`` multiply-adds."""
    return float(np.median(np.asarray(macs, float) / (np.asarray(latency_ms, float) * 1e-3) / 1e9))


def throughput_off(gmacs: float) -> str | None:
    """For a throughput outside :data:`THROUGHPUT_GMACS`, what it is and the fix ("imply 19,930 GMAC/s, faster
    than any device (3000 GMAC/s); are they in seconds? write milliseconds (x1000)"); None for one some device has."""
    lo, hi = THROUGHPUT_GMACS
    figure = f"imply {gmacs:,.0f} GMAC/s" if gmacs >= 100 else f"imply {gmacs:.3g} GMAC/s"
    if gmacs > hi:
        return f"{figure}, faster than any device ({hi:g} GMAC/s); are they in seconds? write milliseconds (x1000)"
    if gmacs < lo:
        return f"{figure}, slower than any device ({lo:g} GMAC/s); are they in microseconds? write milliseconds (/1000)"
    return None


def unit_warning(space: Any, archs: Sequence[Any], latency_ms: np.ndarray, who: str) -> str | None:
    """A sentence if the latencies ``who`` gave for ``archs`` imply a throughput no device has (outside
    :data:`THROUGHPUT_GMACS`: seconds or microseconds taken for milliseconds); None if they are plausible or
    the space counts no MACs."""
    macs_of = getattr(space, "macs", None)
    if not callable(macs_of) or not len(archs):
        return None
    try:
        macs = np.array([macs_of(a) for a in archs], dtype=float)
    except Exception:  # noqa: BLE001 - a space without a MAC count for these archs: nothing to say
        return None
    y = np.asarray(latency_ms, float)
    if not (np.isfinite(y).all() and (y > 0).all() and (macs > 0).all()):
        return None
    g = implied_gmacs(macs, y)
    off = throughput_off(g)
    return f"{who} gives latencies that {off} (hwnas reads latencies as milliseconds: budgets, reports)" if off else None


def _check_units(csv_path: Path, space: Any, archs: list, y: np.ndarray, batch: int, ids: list[str],
                 switch_off: str = f'"check_units": false in {META_NAME}') -> None:
    macs = np.array([space.macs(a) for a in archs], dtype=float) * batch
    per_mac = y / macs
    med = float(np.median(per_mac))
    off = np.flatnonzero((per_mac > med * MIXED_UNITS) | (per_mac < med / MIXED_UNITS))
    if len(off):
        i = int(off[0])
        factor = per_mac[i] / med
        size = f"{factor:.0f}x" if factor > 1 else f"1/{1 / factor:.0f} of"
        raise PlanError(f"{csv_path} id {ids[i]}: {COLUMN}={y[i]:g} is {size} the other rows' time per MAC "
                        f"(a different unit?); write every value in milliseconds (if it is right -- e.g. a layer the "
                        f"device runs elsewhere -- set {switch_off})")
    gmacs = implied_gmacs(macs, y)
    off = throughput_off(gmacs)
    if off:
        raise PlanError(f"{csv_path}: the values {off}, or set {switch_off}")
    for i, factor in slips(macs, y):
        log.warning(f"{csv_path} id {ids[i]}: {COLUMN}={y[i]:g} is {factor:.0f}x off the other rows' trend of latency over "
                    "MACs -- a decimal slip? (it is used as written; correct the row if it is one)")


def slips(macs: np.ndarray, y: np.ndarray) -> list[tuple[int, float]]:
    """``(row, factor)`` of the rows more than :data:`SLIP_WARN` times off a robust log-log fit of latency over MACs
    (Theil-Sen; at least 5 rows, else nothing); factor > 1 either way."""
    if len(y) < 5 or len(set(np.round(np.log(macs), 6))) < 2:
        return []
    from scipy.stats import theilslopes

    lx, ly = np.log(macs), np.log(y)
    slope, icpt, _, _ = theilslopes(ly, lx)
    res = ly - (icpt + slope * lx)
    res -= np.median(res)
    return [(int(i), float(np.exp(abs(res[i])))) for i in np.flatnonzero(np.abs(res) > np.log(SLIP_WARN))]


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
        self.kind, self.device_name = "measured", self.device  # (hwnas.predictors.base.provenance)
        self.values: dict[str, float] = {}
        self.plans: list[str] = []
        self.given: list[dict] = []
        if plan:
            self.add_plan(plan)
            self.given.append(plan_fingerprint(plan))

    @property
    def identity(self) -> dict:
        """The measurer (the device): measurements of any plan of it are the same device's numbers."""
        return {"plan_device": self.device}

    @property
    def plan_identity(self) -> list[dict] | None:
        """The plan given at construction (path and contents), or None: what decides :attr:`fixed_samples`
        (a result computed from them is stale once the plan is another one or was edited)."""
        return list(self.given) or None

    def add_plan(self, path: str | os.PathLike, partial: bool = False) -> None:
        """Take the latencies of the plan at ``path`` (``partial``: its filled rows only, see :func:`read_plan`)."""
        from hwnas.spaces.io import arch_key

        space, archs, y, meta = read_plan(path, partial=partial)
        if meta.get("device") != self.device:
            raise PlanError(f"{plan_paths(path)[0]} was made for device {meta.get('device')!r}, not {self.device!r}; "
                            f"set target.device={meta.get('device')} or use that device's plan")
        from hwnas.spaces import SpaceError

        keys = []
        for a in archs:
            try:
                keys.append(arch_key(self.space, a))  # (validates it in this run's space)
            except SpaceError as exc:  # e.g. a plan of hwnas-measure's default resolutions 128..224 step 4
                res = getattr(self.space, "resolutions", None)
                hint = f" --resolutions {' '.join(map(str, res))}" if res else ""
                raise PlanError(
                    f"{plan_paths(path)[0]}: arch {a.to_str() if hasattr(a, 'to_str') else a} is not in this run's space "
                    f"({exc}); make the plan in it (hwnas-measure --plan K --space {space.name}{hint} ...), or let the "
                    f"pipeline write its own plan (target=plan target.device={self.device}, no target.plan)") from None
        self.values.update({k: float(v) for k, v in zip(keys, y)})
        if not partial:
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
        """Have a plan for ``archs`` in ``out_dir``; returns its CSV.

        A plan already there that asks for every one of ``archs`` is kept (the user may be filling it). One
        for other archs (the same stage ran again with other settings) would be filled and asked for again
        forever: its filled rows are taken (:attr:`values`), the folder is set aside as ``plan.old-N``
        (:func:`set_aside`, in :attr:`set_aside_to`) and a new plan asks for ``archs``."""
        from hwnas.spaces.io import arch_key

        out = Path(out_dir)
        csv_path = out / CSV_NAME
        self.set_aside_to: Path | None = None
        if csv_path.is_file() or (out / META_NAME).is_file():
            if csv_path.is_file() and {arch_key(self.space, a) for a in archs} <= plan_keys(csv_path):
                return csv_path
            if plan_started(csv_path):
                self.add_plan(csv_path, partial=True)
            self.set_aside_to = set_aside(out)
        write_plan(self.space, archs, out_dir, device=self.device, note=note,
                   then="Run the same `hwnas-pipeline` command again (the one that wrote this plan): it reads this plan "
                        "and goes on. Numbers of this plan cannot be changed once read; write them carefully.")
        return csv_path
