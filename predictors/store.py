"""A durable SQLite store of latency measurements.

Rows are keyed by ``(device, space, arch)`` where ``arch`` is the canonical arch JSON (sorted keys),
so the same network always hits the same row whatever form it was given in. Each row keeps the
value (ms), the relative spread across processes, the number of timed calls, a timestamp and the
protocol settings. Every :meth:`MeasurementStore.put` is its own committed transaction (WAL
journal), so killing a run loses nothing and a rerun measures only what is missing.

A device name is bound to the protocol fingerprint it was first measured with (backend, threads,
batch size); measuring the same device name with another fingerprint is refused, because mixing
them would silently corrupt a dataset.

A file that is not a readable store (corrupted, or another kind of file) raises
:class:`StoreCorruptedError` naming the file; it is never overwritten.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from hwnas.spaces.errors import UserError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL,
    space TEXT NOT NULL,
    arch TEXT NOT NULL,
    value REAL NOT NULL,
    spread REAL,
    n INTEGER,
    timestamp REAL NOT NULL,
    protocol TEXT,
    samples TEXT,
    PRIMARY KEY (device, space, arch)
);
"""


class StoreError(UserError, RuntimeError):
    """Misuse of a measurement store (e.g. a device measured with two different protocols)."""


class StoreCorruptedError(StoreError):
    """The file is not a readable measurement store."""


@dataclass(frozen=True)
class Record:
    device: str
    space: str
    arch: str  # canonical JSON
    value: float  # ms
    spread: float | None
    n: int | None
    timestamp: float
    protocol: dict | None
    samples: list | None = None  # per-process medians (ms)


def arch_key(arch: Any) -> str:
    """Canonical JSON of an arch (object with ``to_dict``, dict, or already a JSON string)."""
    if hasattr(arch, "to_dict"):
        return json.dumps(arch.to_dict(), sort_keys=True)
    if isinstance(arch, dict):
        return json.dumps(arch, sort_keys=True)
    if isinstance(arch, str):
        try:
            return json.dumps(json.loads(arch), sort_keys=True)
        except json.JSONDecodeError:
            return arch  # e.g. a layer key of a lookup table
    raise StoreError(f"arch of type {type(arch).__name__} cannot be a store key; pass a canonical arch, dict or JSON")


class MeasurementStore:
    """SQLite store of measurements; ``path=":memory:"`` for a throw-away one."""

    def __init__(self, path: str | os.PathLike = "measurements.sqlite", timeout: float = 60.0) -> None:
        self.path = os.fspath(path)
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise StoreError(f"store={self.path!r}: folder {parent} does not exist; create it first")
            if os.path.isdir(self.path):
                raise StoreError(f"store={self.path!r} is a folder; give a file path such as measurements.sqlite")
        try:
            self._con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            try:
                self._con.close()
            except Exception:  # pragma: no cover
                pass
            raise StoreCorruptedError(
                f"{self.path} is not a readable measurement store ({exc}). It was left untouched: move it "
                "aside (or restore a backup) and rerun; the measurements in it cannot be recovered by hwnas."
            ) from None

    # ------------------------------------------------------------------ setup
    def _check_and_init(self) -> None:
        con = self._con
        if self.path != ":memory:" and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            row = con.execute("PRAGMA quick_check").fetchone()
            if not row or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "measurements" not in tables:
                raise sqlite3.DatabaseError(f"it is an SQLite file with other tables ({sorted(tables)[:5]})")
        if self.path != ":memory:":
            con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(_SCHEMA)
        cols = {r[1] for r in con.execute("PRAGMA table_info(measurements)")}
        need = {"device", "space", "arch", "value", "spread", "n", "timestamp", "protocol", "samples"}
        if not need <= cols:
            raise sqlite3.DatabaseError(f"table 'measurements' lacks columns {sorted(need - cols)}")
        con.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def __getstate__(self) -> dict:
        # a connection cannot travel to another process (dask workers, multiprocessing): reopen the file
        if self.path == ":memory:":
            raise StoreError("an in-memory MeasurementStore cannot be sent to another process; give a file path")
        return {"path": self.path, "timeout": self._timeout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["timeout"])

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> "MeasurementStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ devices
    def register_device(self, device: str, config: Any) -> None:
        """Bind ``device`` to the protocol fingerprint of ``config`` (a MeasureConfig or dict);
        raise :class:`StoreError` if it was measured with another one."""
        fp = config.fingerprint() if hasattr(config, "fingerprint") else dict(config)
        fp_json = json.dumps(fp, sort_keys=True)
        with self._lock:
            row = self._con.execute("SELECT fingerprint FROM devices WHERE device=?", (device,)).fetchone()
            if row is None:
                self._con.execute("INSERT OR IGNORE INTO devices(device, fingerprint, created) VALUES (?,?,?)",
                                  (device, fp_json, time.time()))
                return
        if json.loads(row[0]) != fp:
            raise StoreError(
                f"device={device!r} in {self.path} was measured with {row[0]}; this run uses {fp_json}. "
                "Use another device name (e.g. add the backend/threads to it) or another store"
            )

    def devices(self) -> dict[str, dict]:
        with self._lock:
            rows = self._con.execute("SELECT device, fingerprint FROM devices ORDER BY device").fetchall()
        return {d: json.loads(f) for d, f in rows}

    # ------------------------------------------------------------------ rows
    def put(self, device: str, space: str, arch: Any, measurement: Any, config: Any = None) -> None:
        """Insert or replace one measurement and commit at once. ``measurement`` is a
        :class:`~hwnas.predictors.measure.Measurement` or a float (ms)."""
        if hasattr(measurement, "ms"):
            value, spread, n = float(measurement.ms), float(measurement.spread), int(measurement.n)
            samples = json.dumps([float(x) for x in getattr(measurement, "per_process", [])])
        else:
            value, spread, n, samples = float(measurement), None, None, None
        if not (value > 0 and value < float("inf")):
            raise StoreError(f"refusing to store latency {value!r} ms for {device}/{space}: it must be positive and finite")
        proto = config.settings() if hasattr(config, "settings") else config
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO measurements(device, space, arch, value, spread, n, timestamp, protocol, samples) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (device, space, arch_key(arch), value, spread, n, time.time(),
                 json.dumps(proto, sort_keys=True) if proto is not None else None, samples),
            )

    def get(self, device: str, space: str, arch: Any) -> Record | None:
        with self._lock:
            row = self._con.execute(
                "SELECT device, space, arch, value, spread, n, timestamp, protocol, samples FROM measurements "
                "WHERE device=? AND space=? AND arch=?", (device, space, arch_key(arch))).fetchone()
        return self._record(row) if row else None

    def get_many(self, device: str, space: str, archs: Sequence[Any]) -> dict[Any, Record]:
        """``{arch: Record}`` for the archs of ``archs`` that are stored."""
        keys = {}
        for a in archs:
            keys.setdefault(arch_key(a), []).append(a)
        out: dict[Any, Record] = {}
        klist = list(keys)
        with self._lock:
            for s in range(0, len(klist), 500):
                part = klist[s:s + 500]
                q = ("SELECT device, space, arch, value, spread, n, timestamp, protocol, samples FROM measurements "
                     f"WHERE device=? AND space=? AND arch IN ({','.join('?' * len(part))})")
                for row in self._con.execute(q, (device, space, *part)):
                    rec = self._record(row)
                    for a in keys[rec.arch]:
                        out[a] = rec
        return out

    def __contains__(self, key: tuple[str, str, Any]) -> bool:
        return self.get(*key) is not None

    def records(self, device: str | None = None, space: str | None = None) -> list[Record]:
        q = "SELECT device, space, arch, value, spread, n, timestamp, protocol, samples FROM measurements"
        cond, args = [], []
        if device is not None:
            cond.append("device=?")
            args.append(device)
        if space is not None:
            cond.append("space=?")
            args.append(space)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY timestamp, rowid"
        with self._lock:
            rows = self._con.execute(q, args).fetchall()
        return [self._record(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    @staticmethod
    def _record(row: tuple) -> Record:
        d, s, a, v, sp, n, ts, p, smp = row
        return Record(d, s, a, float(v), sp, n, float(ts), json.loads(p) if p else None, json.loads(smp) if smp else None)

    # ------------------------------------------------------------------ export
    def dataset(self, space: Any, devices: Iterable[str] | None = None, archs: Sequence[Any] | None = None):
        """A :class:`~hwnas.predictors.data.LatencyDataset` of ``space`` (object or name): one column
        per device (ms, NaN where missing); rows = ``archs`` in order, or every arch stored for any of
        ``devices``, in measurement order."""
        from .data import LatencyDataset, _space

        sp = _space(space)
        devs = list(devices) if devices is not None else sorted({r.device for r in self.records(space=sp.name)})
        if archs is None:
            seen: dict[str, None] = {}
            for d in devs:
                for r in self.records(device=d, space=sp.name):
                    seen.setdefault(r.arch, None)
            archs = [sp.validate(a) for a in seen]
        else:
            archs = [sp.validate(a) for a in archs]
        table = {}
        for d in devs:
            got = self.get_many(d, sp.name, archs)
            table[d] = [got[a].value if a in got else float("nan") for a in archs]
        return LatencyDataset(sp, archs, table, name=f"{sp.name}@{self.path}")

    def export_csv(self, path: str | os.PathLike, space: Any, devices: Iterable[str] | None = None,
                   archs: Sequence[Any] | None = None) -> str:
        """Write :meth:`dataset` as CSV (``arch`` + one column per device), atomically."""
        return str(self.dataset(space, devices, archs).to_csv(path))
