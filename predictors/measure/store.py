"""A durable SQLite store of latency measurements.

Rows are keyed by ``(device, space, key)``: ``key`` is the arch's one identity,
:func:`hwnas.spaces.io.arch_key` (for per-layer timings: the lookup-table key), so the same network
always hits the same row. Each row keeps the value (ms), the relative spread across processes, the
number of timed calls, a timestamp, the protocol settings and the platform of the machine that timed
it. Every :meth:`MeasurementStore.put` is its own committed transaction (WAL journal), so killing a run
loses nothing and a rerun measures only what is missing.

A device name is bound to the protocol fingerprint it was first measured with (backend, threads,
batch size, clock) and to the machine it was measured on (architecture, processor, CPU count):
measuring the same name with another protocol or on another machine is refused, because mixing them
would silently corrupt a dataset. Registration is one ``INSERT OR IGNORE`` followed by a read, so two
processes registering one name at once cannot both win.

A file that is not a readable store (corrupted, or another kind of file) raises
:class:`StoreCorruptedError` naming the file; it is never overwritten. A store that cannot be written
(a read-only mount, no permission) is opened read-only: what it holds can be read, and storing a new
measurement raises :class:`StoreReadOnlyError` saying why.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from hwnas.spaces.errors import UserError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL,
    platform TEXT
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
    platform TEXT,
    PRIMARY KEY (device, space, arch)
);
"""
_COLUMNS = "device, space, arch, value, spread, n, timestamp, protocol, samples, platform"
_DISK_FULL = "no space left on the device; the measurements stored so far are kept, free some space and run the same command again"
#: the platform fields that tell two machines apart (the host name and OS version may change)
MACHINE_FIELDS = ("machine", "processor", "cpus")


class StoreError(UserError, RuntimeError):
    """Misuse of a measurement store (e.g. a device measured with two different protocols)."""


class StoreCorruptedError(StoreError):
    """The file is not a readable measurement store."""


class StoreReadOnlyError(StoreError):
    """The store can be read but not written."""


@dataclass(frozen=True)
class Record:
    device: str
    space: str
    arch: str  # the arch key (canonical JSON) or a lookup-table key
    value: float  # ms
    spread: float | None
    n: int | None
    timestamp: float
    protocol: dict | None
    samples: list | None = None  # per-process medians (ms)
    platform: dict | None = None


def _writable(path: str) -> str | None:
    """Why ``path`` (an existing store, or one to create) cannot be written; None if it can."""
    parent = os.path.dirname(os.path.abspath(path))
    for p, what in ((path, "the file"), (parent, "its folder")):
        if not os.path.exists(p):
            continue
        if not os.access(p, os.W_OK):
            try:
                ro = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
            except (OSError, AttributeError):
                ro = False
            return "it is on a read-only file system" if ro else f"{what} is not writable (permissions)"
        try:
            if os.statvfs(p).f_flag & os.ST_RDONLY:
                return "it is on a read-only file system"
        except (OSError, AttributeError):
            pass
    return None


class MeasurementStore:
    """SQLite store of measurements; ``path=":memory:"`` for a throw-away one."""

    def __init__(self, path: str | os.PathLike = "measurements.sqlite", timeout: float = 60.0) -> None:
        self.path = os.fspath(path)
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self.read_only: str | None = None  # why the store cannot be written
        self._bound: set = set()  # (device, config) pairs whose registration put() has checked
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise StoreError(f"store={self.path!r}: folder {parent} does not exist; create it first")
            if os.path.isdir(self.path):
                raise StoreError(f"store={self.path!r} is a folder; give a file path such as measurements.sqlite")
            why = _writable(self.path)
            if why is not None:
                if not os.path.exists(self.path):
                    raise StoreReadOnlyError(f"store={self.path!r} cannot be created: {why}; choose a writable folder")
                self.read_only = why
                wal = self.path + "-wal"
                if os.path.exists(wal) and os.path.getsize(wal) > 0:  # a killed writer: its log cannot be merged here
                    self.read_only += (f"; {wal} holds measurements not yet merged into the file, which a read-only "
                                       "store cannot show: open it once where it is writable")
        try:
            if self.read_only:
                uri = f"file:{os.path.abspath(self.path)}?mode=ro&immutable=1"
                self._con = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
            else:
                self._con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            try:
                self._con.close()
            except Exception:  # pragma: no cover
                pass
            if _disk_full(exc, self.path):
                raise StoreError(f"{self.path}: {exc}: {_DISK_FULL}") from None
            if self.read_only is None and _is_readonly_error(exc):
                # the operating system refused a write the checks above did not foresee: read it read-only
                self.read_only = str(exc)
                self._reopen_read_only()
                return
            raise StoreCorruptedError(
                f"{self.path} is not a readable measurement store ({exc}). It was left untouched: move it "
                "aside (or restore a backup) and rerun; the measurements in it cannot be recovered by hwnas."
            ) from None

    def _reopen_read_only(self) -> None:
        try:
            self._con = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro&immutable=1", uri=True,
                                        timeout=self._timeout, isolation_level=None, check_same_thread=False)
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptedError(f"{self.path} is not a readable measurement store ({exc}); it was left untouched") from None

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
            if tables:  # checked before anything is written: another program's file is left as it was
                cols = {r[1] for r in con.execute("PRAGMA table_info(measurements)")}
                need = set(_COLUMNS.replace(" ", "").split(",")) - {"platform"}  # (platform: added by schema 2)
                if not need <= cols:
                    raise sqlite3.DatabaseError(f"table 'measurements' lacks columns {sorted(need - cols)}")
        if self.read_only:
            cols = {r[1] for r in con.execute("PRAGMA table_info(measurements)")}
            if not cols:
                raise sqlite3.DatabaseError("it has no 'measurements' table")
            self._platform_col = "platform" in cols
            return
        if self.path != ":memory:":
            con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(_SCHEMA)
        for table in ("measurements", "devices"):  # stores written before schema 2
            if "platform" not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                con.execute(f"ALTER TABLE {table} ADD COLUMN platform TEXT")
        cols = {r[1] for r in con.execute("PRAGMA table_info(measurements)")}
        need = set(_COLUMNS.replace(" ", "").split(","))
        if not need <= cols:
            raise sqlite3.DatabaseError(f"table 'measurements' lacks columns {sorted(need - cols)}")
        self._platform_col = True
        row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):  # no write when nothing changes (a full disk can still be read)
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

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

    def check_writable(self) -> None:
        """Raise :class:`StoreReadOnlyError` (saying why) if new measurements cannot be stored."""
        if self.read_only:
            raise StoreReadOnlyError(
                f"store {self.path} is read-only ({self.read_only}): its {len(self)} measurements can be read, but "
                "new ones cannot be stored; copy it to a writable folder, or give another --store"
            )

    def _write(self, sql: str, args: tuple) -> None:
        self.check_writable()
        try:
            with self._lock:
                self._con.execute(sql, args)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc, self.path):
                raise StoreError(f"{self.path}: {exc}: {_DISK_FULL}") from None
            if _is_readonly_error(exc):
                raise StoreReadOnlyError(f"store {self.path} cannot be written ({exc}); copy it to a writable folder") from None
            raise

    # ------------------------------------------------------------------ devices
    def register_device(self, device: str, config: Any, platform: dict | None = None) -> None:
        """Bind ``device`` to the protocol fingerprint of ``config`` (a MeasureConfig or dict), and to
        ``platform`` when given; raise :class:`StoreError` if it was measured with another protocol or
        on another machine. Atomic: the first registration wins, every other one is checked against it (a run that
        fails before its first result gives its registration back: :meth:`forget_if_empty`)."""
        fp = config.fingerprint() if hasattr(config, "fingerprint") else dict(config)
        fp_json = json.dumps(fp, sort_keys=True)
        if not self.read_only:
            self._write("INSERT OR IGNORE INTO devices(device, fingerprint, created) VALUES (?,?,?)", (device, fp_json, time.time()))
        with self._lock:
            row = self._con.execute("SELECT fingerprint FROM devices WHERE device=?", (device,)).fetchone()
        if row is not None and json.loads(row[0]) != fp:
            raise StoreError(
                f"device={device!r} in {self.path} was measured with {row[0]}; this run uses {fp_json}. "
                "Use another device name (e.g. add the backend/threads to it) or another store"
            )
        if platform is not None:
            self.check_platform(device, platform)

    def forget_if_empty(self, device: str, config: Any) -> bool:
        """Give back the registration of ``device`` with ``config``'s protocol when no measurement is stored under
        it (a run that failed or was stopped before its first result: a typo in --scheduler used to bind the name
        to that run's protocol for good). Atomic; returns whether it was removed."""
        if self.read_only:
            return False
        fp = json.dumps(config.fingerprint() if hasattr(config, "fingerprint") else dict(config), sort_keys=True)
        before = len(self.devices())
        self._write("DELETE FROM devices WHERE device=? AND fingerprint=? AND NOT EXISTS "
                    "(SELECT 1 FROM measurements WHERE device=?)", (device, fp, device))
        return len(self.devices()) < before

    def check_platform(self, device: str, platform: dict) -> None:
        """Record the machine ``device`` is measured on (first time) or check it is the same one."""
        with self._lock:
            row = self._con.execute("SELECT platform FROM devices WHERE device=?", (device,)).fetchone() if self._platform_col else None
        mine = {k: platform.get(k) for k in MACHINE_FIELDS}
        if row is None or row[0] is None:
            if not self.read_only and row is not None:
                self._write("UPDATE devices SET platform=? WHERE device=? AND platform IS NULL",
                            (json.dumps(platform, sort_keys=True), device))
            return
        theirs = {k: json.loads(row[0]).get(k) for k in MACHINE_FIELDS}
        if theirs != mine:
            raise StoreError(
                f"device={device!r} in {self.path} was measured on another machine ({theirs}); this one is {mine}. "
                "Give this machine its own device name"
            )

    def devices(self) -> dict[str, dict]:
        with self._lock:
            rows = self._con.execute("SELECT device, fingerprint FROM devices ORDER BY device").fetchall()
        return {d: json.loads(f) for d, f in rows}

    def spaces(self, device: str) -> list[str]:
        """The spaces that ``device`` has measurements of."""
        with self._lock:
            rows = self._con.execute("SELECT DISTINCT space FROM measurements WHERE device=? ORDER BY space", (device,)).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ rows
    def put(self, device: str, space: str, key: str, measurement: Any, config: Any = None, platform: dict | None = None) -> None:
        """Insert or replace one measurement and commit at once. ``key``: the arch key (or a table
        key); ``measurement``: a :class:`~hwnas.predictors.measure.Measurement` or a float (ms)."""
        if not isinstance(key, str):
            raise StoreError(f"store keys are strings (hwnas.spaces.io.arch_key); got {type(key).__name__}")
        if hasattr(measurement, "ms"):
            value, spread, n = float(measurement.ms), float(measurement.spread), int(measurement.n)
            samples = json.dumps([float(x) for x in getattr(measurement, "per_process", [])])
        else:
            value, spread, n, samples = float(measurement), None, None, None
        if not (value > 0 and value < float("inf")):
            raise StoreError(f"refusing to store latency {value!r} ms for {device}/{space}: it must be positive and finite")
        proto = config.settings() if hasattr(config, "settings") else config
        bound = (device, json.dumps(config.fingerprint(), sort_keys=True)) if hasattr(config, "fingerprint") else None
        if bound is not None and bound not in self._bound:
            # bound to its protocol, atomically, before its first row goes in (after that row, nothing unbinds it)
            self.register_device(device, config)
            self._bound.add(bound)
        self._write(
            f"INSERT OR REPLACE INTO measurements({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (device, space, key, value, spread, n, time.time(), json.dumps(proto, sort_keys=True) if proto is not None else None,
             samples, json.dumps(platform, sort_keys=True) if platform is not None else None),
        )

    def _select(self) -> str:
        return f"SELECT {_COLUMNS if self._platform_col else _COLUMNS.replace(', platform', ', NULL')} FROM measurements"

    def get(self, device: str, space: str, key: str) -> Record | None:
        with self._lock:
            row = self._con.execute(f"{self._select()} WHERE device=? AND space=? AND arch=?", (device, space, key)).fetchone()
        return self._record(row) if row else None

    def get_many(self, device: str, space: str, keys: Sequence[str]) -> dict[str, Record]:
        """``{key: Record}`` for the keys of ``keys`` that are stored."""
        klist = list(dict.fromkeys(keys))
        out: dict[str, Record] = {}
        with self._lock:
            for s in range(0, len(klist), 500):
                part = klist[s:s + 500]
                q = f"{self._select()} WHERE device=? AND space=? AND arch IN ({','.join('?' * len(part))})"
                for row in self._con.execute(q, (device, space, *part)):
                    rec = self._record(row)
                    out[rec.arch] = rec
        return out

    def records(self, device: str | None = None, space: str | None = None) -> list[Record]:
        q = self._select()
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
        d, s, a, v, sp, n, ts, p, smp, plat = row
        return Record(d, s, a, float(v), sp, n, float(ts), json.loads(p) if p else None, json.loads(smp) if smp else None,
                      json.loads(plat) if plat else None)

    # ------------------------------------------------------------------ export
    def dataset(self, space: Any, devices: Iterable[str] | None = None, archs: Sequence[Any] | None = None):
        """A :class:`~hwnas.predictors.data.LatencyDataset` of ``space`` (object or name): one column
        per device (ms, NaN where missing); rows = ``archs`` in order, or every arch stored for any of
        ``devices``, in measurement order."""
        from hwnas.predictors.data import LatencyDataset, _space
        from hwnas.spaces.io import arch_key

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
        keys = [arch_key(sp, a) for a in archs]
        table = {}
        for d in devs:
            got = self.get_many(d, sp.name, keys)
            table[d] = [got[k].value if k in got else float("nan") for k in keys]
        return LatencyDataset(sp, archs, table, name=f"{sp.name}@{self.path}")

    def export_csv(self, path: str | os.PathLike, space: Any, devices: Iterable[str] | None = None,
                   archs: Sequence[Any] | None = None) -> str:
        """Write :meth:`dataset` as CSV (``arch`` + one column per device), atomically."""
        return str(self.dataset(space, devices, archs).to_csv(path))


def _disk_full(exc: Exception, path: str) -> bool:
    """SQLite says "database or disk is full", or an I/O error on a file system with no room left
    (the WAL index cannot grow)."""
    if "full" in str(exc).lower():
        return True
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return "i/o" in str(exc).lower() and st.f_bavail * st.f_frsize < (1 << 20)


def _is_readonly_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text or getattr(exc, "errno", None) == errno.EROFS
