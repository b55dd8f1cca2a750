"""Per-layer latency lookup tables (Once-for-All and ProxylessNAS formats).

A lookup table maps a layer key to its measured latency; a network's latency is the sum of the
``mean`` (ms) of its layers. Two formats are read:

``ofa`` (Once-for-All, e.g. ``ofa/note10/{r}_lookup_table.yaml``, one file per input resolution)::

    Conv-input:224x224x3-output:112x112x24                      first conv
    expanded_conv-input:28x28x48-output:28x28x48-expand:192-kernel:5-stride:1-idskip:1-se:1-hs:0
    Conv_1 / AvgPool2D / Conv_2 / Logits                        final expand, pool, feature mix, classifier
    fields: count, mean, std

  ``expand`` is the number of expanded channels, ``hs`` whether the block uses h-swish.

``proxyless`` (ProxylessNAS, ``proxylessnas/mobile_trim.yaml``, input 224)::

    expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0
    Conv, Conv_1 (feature mix), Logits-input:7x7x1280-output:1000 (global pool + classifier)
    fields: count, mean, var

  ``expand`` is the expand *ratio*; there is no SE / activation field; the global pool has no entry
  of its own (it is part of ``Logits``, whose input is the final feature map).

Keys are generated from the space's layer description (:meth:`MBConvSpace.layers`): plain conv layers
are numbered in network order as TensorFlow names them (``Conv``, ``Conv_1``, ``Conv_2``...).

:class:`LookupTableLatency` precomputes, per resolution, the fixed cost of the layers every subnet
has and ``cost[slot, kernel, expand]`` of every elastic slot (a slot's input shape depends only on the
resolution and on whether it is the first layer of its unit), so predicting an
:class:`~hwnas.spaces.ArchBatch` is pure numpy; the result equals the per-layer sum bit for bit.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hwnas.spaces.base import ArchBatch, SpaceError
from hwnas.spaces.mbconv import LayerSpec, MBConvSpace

from .assets import CHECKSUMS, AssetError, atomic_write, find_file
from .base import Predictor
from hwnas.spaces.errors import UserError

__all__ = [
    "LookupTableLatency",
    "LatencyTableError",
    "MissingLatencyEntry",
    "lut_key",
    "lut_keys",
    "read_lut",
    "detect_format",
    "write_ofa_yaml",
]

FORMATS = ("ofa", "proxyless")


class LatencyTableError(UserError, ValueError):
    """A lookup table cannot be used with this space (format, resolutions, file content)."""


class MissingLatencyEntry(UserError, LookupError):
    """A layer of an architecture has no entry in the lookup table; ``key`` and ``table`` name it."""

    def __init__(self, key: str, table: str, layer: str = "") -> None:
        self.key, self.table, self.layer = key, table, layer
        where = f" (layer {layer})" if layer else ""
        super().__init__(
            f"lookup table {table} has no entry {key!r}{where}; measure that layer and add it to the table, "
            "or restrict the space (block_choices / depth_choices / resolutions) to what the table prices"
        )

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


# ============================================================================ keys
def _shape(s: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in s)


def _num(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def lut_key(
    spec: LayerSpec,
    format: str = "ofa",
    conv_index: int | None = None,
    logits_in: Sequence[int] | None = None,
) -> str | None:
    """The table key of one layer, or ``None`` when the format has no entry for it (the global pool
    in the ProxylessNAS format, which ``Logits`` includes).

    ``conv_index``: the position of this layer among the plain conv layers of the network (0 → ``Conv``,
    1 → ``Conv_1``...). When omitted it is inferred from the layer name (``first_conv`` 0,
    ``final_expand`` 1, ``feature_mix`` 2 in the OFA format / 1 in the ProxylessNAS format).
    ``logits_in``: the classifier input shape for the ProxylessNAS format (the feature map before the
    pool); defaults to ``spec.in_shape``. Use :func:`lut_keys` on a whole layer list to get both right.
    """
    if format not in FORMATS:
        raise LatencyTableError(f"format={format!r} is unknown; allowed: {list(FORMATS)} (or 'auto' for tables)")
    kind = spec.kind
    if kind == "conv":
        if conv_index is None:
            names = {"first_conv": 0, "final_expand": 1, "feature_mix": 2 if format == "ofa" else 1}
            if spec.name not in names:
                raise LatencyTableError(f"conv layer {spec.name!r}: pass conv_index (its position among the conv layers)")
            conv_index = names[spec.name]
        name = "Conv" if conv_index == 0 else f"Conv_{conv_index}"
        return f"{name}-input:{_shape(spec.in_shape)}-output:{_shape(spec.out_shape)}"
    if kind == "pool":
        if format == "proxyless":
            return None
        return f"AvgPool2D-input:{_shape(spec.in_shape)}-output:{_shape(spec.out_shape)}"
    if kind == "linear":
        shape = spec.in_shape if (logits_in is None or format == "ofa") else logits_in
        return f"Logits-input:{_shape(shape)}-output:{int(spec.out_shape[-1])}"
    if kind == "mbconv":
        head = (
            f"expanded_conv-input:{_shape(spec.in_shape)}-output:{_shape(spec.out_shape)}"
        )
        if format == "ofa":
            return (
                f"{head}-expand:{int(spec.mid)}-kernel:{int(spec.kernel)}-stride:{int(spec.stride)}"
                f"-idskip:{int(bool(spec.idskip))}-se:{int(bool(spec.se))}-hs:{int(spec.act == 'h_swish')}"
            )
        return (
            f"{head}-expand:{_num(spec.expand)}-kernel:{int(spec.kernel)}-stride:{int(spec.stride)}"
            f"-idskip:{int(bool(spec.idskip))}"
        )
    raise LatencyTableError(f"layer {spec.name!r} has kind {kind!r}, which lookup tables do not price")


def lut_keys(layers: Sequence[LayerSpec], format: str = "ofa") -> list[tuple[str | None, LayerSpec]]:
    """``(key, layer)`` for every layer of a network, conv layers numbered in order; the key is
    ``None`` for layers the format folds into another entry (the pool in ProxylessNAS tables)."""
    out: list[tuple[str | None, LayerSpec]] = []
    n_conv = 0
    pool_in: Sequence[int] | None = None
    for L in layers:
        if L.kind == "conv":
            out.append((lut_key(L, format, conv_index=n_conv), L))
            n_conv += 1
        elif L.kind == "pool":
            pool_in = L.in_shape
            out.append((lut_key(L, format), L))
        elif L.kind == "linear":
            out.append((lut_key(L, format, logits_in=pool_in), L))
        else:
            out.append((lut_key(L, format), L))
    return out


# ============================================================================ files
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing a key given twice in one mapping (yaml would keep the last silently:
    an entry measured twice with different means must not be priced by whichever came last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


#: per-resolution totals (divided by r^2) this far apart are taken for tables in different units
MIXED_UNITS = 30.0
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z_]+:[0-9x.]+)*$")


def read_lut(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a lookup-table yaml into ``{key: {"count":..., "mean":..., ...}}`` (checked)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise LatencyTableError(f"{path} is not valid yaml ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise LatencyTableError(f"{path} is not a text file (byte {exc.start} is not UTF-8); give a lookup-table yaml") from None
    except _DuplicateKey as dup:
        raise LatencyTableError(f"{path} line {dup.again}: entry {dup.key!r} is given again (first on line {dup.first}); "
                                "keep one entry per key (the one measured last, or their mean)") from None
    if not isinstance(obj, dict) or not obj:
        raise LatencyTableError(f"{path} does not hold a lookup table (a mapping key -> {{count, mean, std|var}})")
    out: dict[str, dict[str, float]] = {}
    for k, v in obj.items():
        if not isinstance(v, dict) or "mean" not in v:
            raise LatencyTableError(f"{path}: entry {k!r} has no 'mean' field (got {v!r})")
        try:
            mean = float(v["mean"])
        except (TypeError, ValueError):
            raise LatencyTableError(f"{path}: entry {k!r} has mean={v['mean']!r}, not a number") from None
        if not math.isfinite(mean):
            raise LatencyTableError(f"{path}: entry {k!r} has mean={mean}, not a finite number")
        out[str(k)] = dict(v, mean=mean)
    return out


def detect_format(table: Mapping[str, Any]) -> str:
    """``"ofa"`` or ``"proxyless"`` from the keys (SE/h-swish fields) and fields (std vs var)."""
    mb = [k for k in table if k.startswith("expanded_conv")]
    if mb:
        return "ofa" if any("-se:" in k for k in mb) else "proxyless"
    fields = set().union(*(set(v) for v in table.values())) if table else set()
    return "proxyless" if ("var" in fields and "std" not in fields) else "ofa"


def write_ofa_yaml(entries: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Write a lookup table in Once-for-All's yaml layout (atomically).

    ``entries``: ``{key: {"count": int, "mean": float(ms), "std": float}}`` (``count`` defaults to 1,
    ``std`` to 0). Keys are written sorted; floats round-trip exactly. Returns the path.
    """
    path = Path(path)
    lines = []
    for key in sorted(entries):
        e = entries[key]
        if not _KEY_RE.match(str(key)):
            raise LatencyTableError(f"entry key {key!r} is not a lookup-table key (e.g. 'Conv-input:224x224x3-output:112x112x24')")
        if "mean" not in e:
            raise LatencyTableError(f"entry {key!r} has no 'mean'")
        mean, std, count = float(e["mean"]), float(e.get("std", 0.0)), int(e.get("count", 1))
        if not (math.isfinite(mean) and math.isfinite(std)) or mean < 0:
            raise LatencyTableError(f"entry {key!r} has mean={mean}, std={std}; both must be finite, mean >= 0")
        lines.append(f"{key}:\n  count: {count}\n  mean: {mean!r}\n  std: {std!r}\n")
    return atomic_write(path, "".join(lines))


# ============================================================================ predictor
def _same_macro(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    attrs = ("stages", "first_conv_width", "first_block_width", "last_width", "final_expand_width", "n_classes")
    return all(getattr(a, x, None) == getattr(b, x, None) for x in attrs)


def _tables_device(tables: Any) -> str | None:
    """The device whose tables these are, for the results files: the official ones by their asset path
    (``ofa/note10/...``: note10; ``proxylessnas/mobile...``: mobile), a ``--build-lut`` folder by the device
    its ``lut.json`` records (read as JSON; only a short string is taken), else None."""
    if isinstance(tables, Mapping):
        return None
    spec = os.fspath(tables).replace("\\", "/")
    m = re.match(r"^ofa/([A-Za-z0-9_.-]+)/", spec)
    if m:
        return m.group(1)
    if spec.startswith("proxylessnas/mobile"):
        return "mobile"
    folder = Path(spec.split("{r}")[0]).expanduser()
    folder = folder if folder.is_dir() else folder.parent
    try:
        dev = json.loads((folder / "lut.json").read_text(encoding="utf-8")).get("device")
    except (OSError, ValueError, AttributeError):
        return None
    return dev if isinstance(dev, str) and 0 < len(dev) <= 100 else None


class LookupTableLatency(Predictor):
    """Latency (ms) of subnets of ``space`` as the sum of per-layer lookup-table means.

    ``tables``: an asset name or local path; with ``{r}`` it is a pattern with one file per input
    resolution (``"ofa/note10/{r}_lookup_table.yaml"``), otherwise one file whose resolution(s) are
    read from its ``Conv-input:RxRx3`` entries. A mapping ``{r: path-or-entries-dict}`` also works.
    A folder holding ``<r>_lookup_table.yaml`` files (what ``hwnas-measure --build-lut`` writes) stands
    for the pattern ``<folder>/{r}_lookup_table.yaml``.
    ``format``: ``"ofa"``, ``"proxyless"`` or ``"auto"`` (from the table content).
    The tables are checked against the space when loaded: every resolution of the space needs a table
    (else an error lists the available ones; create the space with ``resolutions=[...]``), and every
    layer some arch of the space has needs an entry with a finite mean > 0 -- one error lists what is
    missing or wrong (restrict the space's choices, or complete the table).
    """

    metric = "latency_ms"

    def __init__(
        self,
        space: MBConvSpace,
        tables: Any = "ofa/note10/{r}_lookup_table.yaml",
        format: str = "auto",
        mirror: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(space, MBConvSpace):
            raise LatencyTableError(
                f"LookupTableLatency needs an MBConv space (ofa_mbv3_*, ofa_proxyless_w13, proxyless_mobile); got {space!r}"
            )
        if format not in ("auto",) + FORMATS:
            raise LatencyTableError(f"format={format!r} is unknown; allowed: ['auto', 'ofa', 'proxyless']")
        self.space = space
        self.mirror = mirror
        self.tables_spec = tables
        self._tables: dict[int, dict[str, dict[str, float]]] = {}
        self._sources: dict[int, str] = {}
        self._load(tables)
        formats = {r: (detect_format(t) if format == "auto" else format) for r, t in self._tables.items()}
        if len(set(formats.values())) > 1:
            raise LatencyTableError(f"the tables mix formats {formats}; pass format='ofa' or 'proxyless'")
        self.format = next(iter(formats.values()))
        self._build()
        self._validate()
        self._check_units()
        self.device_name = _tables_device(tables)

    def _validate(self) -> None:
        """One error for every entry the space needs that is missing or not a finite positive mean."""
        problems = []
        if self._missing:
            by_source: dict[str, list[str]] = {}
            for (r, key), layer in sorted(self._missing.items()):
                by_source.setdefault(self._sources[r], []).append(f"{key} ({layer})")
            for src, keys in by_source.items():
                shown = "; ".join(keys[:3]) + (f"; ... {len(keys) - 3} more" if len(keys) > 3 else "")
                problems.append(f"{src} lacks {len(keys)} entries: {shown}")
        if self._bad:
            shown = "; ".join(f"{src}: {key} has mean={m!r}" for src, key, m in self._bad[:3])
            more = f"; ... {len(self._bad) - 3} more" if len(self._bad) > 3 else ""
            problems.append(f"latency means must be finite and > 0: {shown}{more}")
        if problems:
            fixed_missing = any(k == key for (r, key) in self._missing for part in self._fixed_keys for k, _ in part[0] + part[1])
            if fixed_missing:  # the stem or the head is not in the tables: another network, not a choice too many
                raise LatencyTableError(
                    f"the lookup tables do not price space {self.space.name}: its fixed layers (stem, head) are not in "
                    f"them ({problems[0][:200]}...), so they are tables of another network (another width or family; the "
                    "Note10 tables are OFA-MobileNetV3 w1.2's). Choose the space they were made for (e.g. space=ofa_mbv3_w12), "
                    "or measure this one's (hwnas-measure --build-lut)")
            raise LatencyTableError(
                f"the lookup tables do not price space {self.space.name}: " + " | ".join(problems)
                + ". Restrict the space (space.block_choices / space.depth_choices / space.resolutions) to what the tables "
                "price, or measure the missing layers (hwnas-measure --build-lut)"
            )

    def _check_units(self) -> None:
        """Tables of one device are in one unit: the latency of a network grows about with r^2, so each
        resolution's cost of a reference subnet (the fixed layers plus the median entry of every slot),
        divided by r^2, is close to the others'; one that is :data:`MIXED_UNITS` times off (a table in
        seconds or microseconds among tables in ms, or another device's) is one error naming its file."""
        if len(self._res) < 2:
            return
        import warnings

        with warnings.catch_warnings():  # a slot no arch of a reduced space uses (a capped depth) is all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            per_slot = np.nanmedian(self._cost.reshape(len(self._res), self.space.n_slots, -1), axis=2)
        slots = np.nan_to_num(per_slot, nan=0.0).sum(axis=1)  # (such slots cost nothing: the check still runs)
        per_px = (self.fixed_costs + slots) / self._res.astype(float) ** 2
        if not np.all(np.isfinite(per_px) & (per_px > 0)):
            return
        med = float(np.median(per_px))
        off = np.flatnonzero((per_px > med * MIXED_UNITS) | (per_px < med / MIXED_UNITS))
        if len(off):
            i = int(off[0])
            factor = per_px[i] / med
            how = f"{factor:.0f}x" if factor >= 1 else f"1/{1 / factor:.0f}"
        else:
            hi, lo = int(np.argmax(per_px)), int(np.argmin(per_px))
            if per_px[hi] <= per_px[lo] * MIXED_UNITS:
                return
            i, how = hi, f"{per_px[hi] / per_px[lo]:.0f}x"
        r = int(self._res[i])
        others = sorted({self._sources[int(x)] for x in self._res if int(x) != r})
        raise LatencyTableError(
            f"lookup table {self._sources[r]} (r={r}) prices a subnet at {how} the latency the other tables give it "
            f"(scaled by resolution^2; {others[0]}{' ...' if len(others) > 1 else ''}): a table in another unit "
            "(seconds or microseconds) or of another device? write every table's means in milliseconds, measured on one device"
        )

    # ------------------------------------------------------------------ loading
    def _resolve(self, name: str | os.PathLike) -> Path:
        """A local file, or else an asset name (a local-looking path that does not exist is an error,
        never a download)."""
        return find_file(name, mirror=self.mirror, field="tables", example="ofa/note10/{r}_lookup_table.yaml")

    def _available(self, pattern: str) -> list[int]:
        """Resolutions for which a file of ``pattern`` exists (local dir, mirror, cache, known assets)."""
        found: set[int] = set()
        rx = re.compile("^" + re.escape(pattern).replace(re.escape("{r}"), r"(\d+)") + "$")
        for rel in CHECKSUMS:
            m = rx.match(rel)
            if m:
                found.add(int(m.group(1)))
        roots = [Path(".")]
        from . import assets as _assets

        for m in (self.mirror, getattr(_assets, "_DEFAULT_MIRROR", None), os.environ.get("HWNAS_ASSETS_MIRROR")):
            if m:
                roots.append(Path(m).expanduser())
        roots.append(_assets.cache_dir())
        expanded = os.path.expanduser(pattern)
        rx_abs = re.compile("^" + re.escape(expanded).replace(re.escape("{r}"), r"(\d+)") + "$")
        base = Path(expanded.replace("{r}", "*"))
        for root in [Path("/")] if base.is_absolute() else roots:
            for f in glob.glob(str(root / base)):
                m = rx_abs.match(f) if base.is_absolute() else rx.match(Path(os.path.relpath(f, root)).as_posix())
                if m:
                    found.add(int(m.group(1)))
        return sorted(found)

    def _load(self, tables: Any) -> None:
        wanted = list(self.space.resolutions)
        if isinstance(tables, Mapping):
            for r, src in tables.items():
                r = int(r)
                if isinstance(src, Mapping):
                    self._tables[r] = {str(k): dict(v, mean=float(v["mean"])) for k, v in src.items()}
                    self._sources[r] = f"<entries for r={r}>"
                else:
                    path = self._resolve(src)
                    self._tables[r] = read_lut(path)
                    self._sources[r] = str(path)
            missing = [r for r in wanted if r not in self._tables]
            if missing:
                raise LatencyTableError(
                    f"the lookup tables have no entry for resolutions {missing}; available resolutions: "
                    f"{sorted(self._tables)}. Set space.resolutions={sorted(set(wanted) & set(self._tables))}"
                )
            return
        spec = os.fspath(tables)
        if "{r}" not in spec and Path(spec).expanduser().is_dir():
            spec = os.path.join(spec, "{r}_lookup_table.yaml")
        if "{r}" in spec:
            available = self._available(spec)
            folder = Path(os.fspath(tables)).expanduser()
            if not available and "{r}" not in os.fspath(tables) and folder.is_dir():
                raise LatencyTableError(
                    f"tables={os.fspath(tables)!r} is a folder without <r>_lookup_table.yaml files (one per resolution, as "
                    "hwnas-measure --build-lut writes them); give such a folder, a pattern such as <dir>/{r}_lookup_table.yaml "
                    "or one table file"
                )
            missing = [r for r in wanted if available and r not in available]
            if missing:
                raise LatencyTableError(
                    f"no lookup table {spec!r} for resolutions {missing} of space {self.space.name}; "
                    f"available resolutions: {available}. Set "
                    f"space.resolutions={[r for r in wanted if r in available] or available}"
                )
            failed = []
            for r in wanted:
                name = spec.replace("{r}", str(r))
                try:
                    path = self._resolve(name)
                except AssetError as exc:
                    failed.append((r, str(exc)))
                    continue
                self._tables[r] = read_lut(path)
                self._sources[r] = str(path)
            if failed and not self._tables:
                raise AssetError(f"no lookup table {spec!r} for any resolution of space {self.space.name}: {failed[0][1]}")
            if failed:
                ok = sorted(self._tables)
                raise LatencyTableError(
                    f"no lookup table for resolutions {[r for r, _ in failed]} of space {self.space.name} "
                    f"(available resolutions: {ok}); first error: {failed[0][1]}"
                )
            return
        path = self._resolve(spec)
        table = read_lut(path)
        res = sorted(
            int(m.group(1))
            for k in table
            if (m := re.match(r"^Conv-input:(\d+)x\1x3-", k))
        )
        if not res:
            raise LatencyTableError(
                f"{path} has no 'Conv-input:RxRx3-...' entry, so its input resolution is unknown; "
                "pass tables={r: path} instead"
            )
        missing = [r for r in wanted if r not in res]
        if missing:
            raise LatencyTableError(
                f"lookup table {path} prices input resolutions {res} only; space {self.space.name} also has "
                f"{missing}. Set space.resolutions={res}"
            )
        for r in wanted:
            self._tables[r] = table
            self._sources[r] = str(path)

    # ------------------------------------------------------------------ per-layer path
    def resolutions(self) -> list[int]:
        return sorted(self._tables)

    def table(self, r: int) -> dict[str, dict[str, float]]:
        return self._tables[int(r)]

    def layer_costs(self, arch: Any) -> list[tuple[str, float]]:
        """``(key, ms)`` of every priced layer of ``arch``, in network order."""
        a = self.space.validate(arch)
        if a.r not in self._tables:
            raise LatencyTableError(f"r={a.r} has no lookup table; available resolutions: {self.resolutions()}")
        table = self._tables[a.r]
        out = []
        for key, L in lut_keys(self.space.layers(a), self.format):
            if key is None:
                continue
            entry = table.get(key)
            if entry is None:
                raise MissingLatencyEntry(key, self._sources[a.r], L.name)
            out.append((key, entry["mean"]))
        return out

    def latency(self, arch: Any) -> float:
        """Latency of one arch (ms) as the plain per-layer sum, in network order."""
        total = 0.0
        for _, ms in self.layer_costs(arch):
            total += ms
        return total

    # ------------------------------------------------------------------ vectorised tables
    def _build(self) -> None:
        sp = self.space
        self._res = np.array(sp.resolutions, dtype=int)
        self._rpos = np.full(int(self._res.max()) + 1, -1, dtype=int)
        self._rpos[self._res] = np.arange(len(self._res))
        ks_c, es_c = list(sp.kernel_choices), list(sp.expand_choices)
        self._kpos = np.full(max(ks_c) + 1, -1, dtype=int)
        self._kpos[ks_c] = np.arange(len(ks_c))
        self._epos = np.full(max(es_c) + 1, -1, dtype=int)
        self._epos[es_c] = np.arange(len(es_c))
        nr, ns = len(self._res), sp.n_slots
        self._cost = np.full((nr, ns, len(ks_c), len(es_c)), np.nan)
        self._prefix: list[list[float]] = [[] for _ in range(nr)]
        self._suffix: list[list[float]] = [[] for _ in range(nr)]
        self._missing: dict[tuple[int, str], str] = {}  # (r, key) -> layer name
        self._bad: list[tuple[str, str, float]] = []  # (source, key, mean) of entries that are not > 0
        self._fixed_keys: list[tuple[list, list]] = []
        maxd = [max(c) for c in sp.depth_choices]
        layout = sp.arch_type.LAYOUT
        for ri, r in enumerate(self._res):
            table = self._tables[int(r)]
            fixed: tuple[list, list] | None = None
            for k, e in sp.all_block_choices:
                ks, es = [], []
                allowed_units = []
                for u, mu in enumerate(layout):
                    ok = (k, e) in sp.block_choices[u]
                    allowed_units.append(ok)
                    kk, ee = (k, e) if ok else sp.block_choices[u][0]
                    ks += [kk] * mu
                    es += [ee] * mu
                arch = sp.arch_type(ks=ks, e=es, d=maxd, r=int(r))
                pre, post, seen_slot = [], [], False
                for key, L in lut_keys(sp.layers(arch), self.format):
                    if L.slot >= 0:
                        seen_slot = True
                        if not allowed_units[L.unit]:
                            continue
                        if key in table:
                            self._cost[ri, L.slot, self._kpos[k], self._epos[e]] = self._mean(int(r), key)
                        else:
                            self._missing[(int(r), key)] = L.name
                    elif key is not None:
                        (post if seen_slot else pre).append((key, L.name))
                if fixed is None:
                    fixed = (pre, post)
                elif fixed != (pre, post):  # pragma: no cover - guards the "shape depends on r only" premise
                    raise LatencyTableError(f"space {sp.name}: the fixed layers change with the block choices")
            assert fixed is not None
            self._fixed_keys.append(fixed)
            for part, acc in ((fixed[0], self._prefix[ri]), (fixed[1], self._suffix[ri])):
                for key, name in part:
                    if key in table:
                        acc.append(self._mean(int(r), key))
                    else:
                        self._missing[(int(r), key)] = name
                        acc.append(float("nan"))
        # prefix summed in network order, exactly as the per-layer path does
        self._prefix_total = np.zeros(nr)
        for ri in range(nr):
            t = 0.0
            for c in self._prefix[ri]:
                t += c
            self._prefix_total[ri] = t
        nsuf = max((len(s) for s in self._suffix), default=0)
        self._suffix_arr = np.zeros((nr, nsuf))
        for ri, s in enumerate(self._suffix):
            if len(s) != nsuf:  # pragma: no cover
                raise LatencyTableError("the final layers differ between resolutions")
            self._suffix_arr[ri, : len(s)] = s
        self._finish_tables()

    def _mean(self, r: int, key: str) -> float:
        m = self._tables[r][key]["mean"]
        if not (math.isfinite(m) and m > 0):
            self._bad.append((self._sources[r], key, m))
        return m

    @property
    def block_costs(self) -> np.ndarray:
        """``(n_resolutions, n_slots, n_kernels, n_expands)`` latency (ms) of every slot for every
        (kernel, expand) of the space, in the order of ``space.resolutions``, ``space.kernel_choices``,
        ``space.expand_choices``; NaN where the table has no entry. A copy."""
        return self._cost.copy()

    @property
    def fixed_costs(self) -> np.ndarray:
        """``(n_resolutions,)`` latency (ms) of the layers every subnet has (stem, head) per resolution."""
        return self._prefix_total + self._suffix_arr.sum(axis=1)


    def _finish_tables(self) -> None:
        """Flat cost vectors (+ a trailing 0.0 for inactive slots) for the two vectorised paths."""
        sp = self.space
        nr, ns = len(self._res), sp.n_slots
        self._flat_ke = np.append(self._cost.ravel(), 0.0)
        maxb = max(len(c) for c in sp.block_choices)
        cg = np.zeros((nr, ns, maxb))
        for s in range(ns):
            for b, (k, e) in enumerate(sp.block_choices[sp.slot_unit[s]]):
                cg[:, s, b] = self._cost[:, s, self._kpos[k], self._epos[e]]
        self._maxb = maxb
        self._flat_g = np.append(cg.ravel(), 0.0)
        self._dtab = [np.asarray(c, dtype=int) for c in sp.depth_choices]
        self._slots = np.arange(ns)
        self._genome_cfg = sp.to_config()

    def _sum(self, ri: np.ndarray, C: np.ndarray) -> np.ndarray:
        """prefix + slot costs in slot order + suffix, added one layer at a time (network order), so
        the result is bit-identical to :meth:`latency`."""
        C = np.asfortranarray(C)
        acc = self._prefix_total[ri].copy()
        for s in range(C.shape[1]):
            acc += C[:, s]
        suf = self._suffix_arr[ri]
        for j in range(suf.shape[1]):
            acc += suf[:, j]
        return acc

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """Vectorised latency straight from genomes of ``self.space`` (the search's fast path)."""
        sp = self.space
        g = np.atleast_2d(np.asarray(genomes)).astype(np.intp)
        if g.shape[1] != sp.n_var:
            raise SpaceError(f"genome has {g.shape[1]} genes; space {sp.name} has {sp.n_var}")
        if g.size and ((g < 0).any() or (g >= sp.genome_sizes).any()):
            bad = np.argwhere((g < 0) | (g >= sp.genome_sizes))[0]
            raise SpaceError(f"genome gene {bad[1]} = {g[tuple(bad)]} is out of range 0..{sp.genome_sizes[bad[1]] - 1}")
        ns, nu = sp.n_slots, sp.n_units
        ri = g[:, ns + nu]
        d = np.stack([self._dtab[u][g[:, ns + u]] for u in range(nu)], axis=1)
        active = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        idx = (ri[:, None] * ns + self._slots) * self._maxb + g[:, :ns]
        idx = np.where(active, idx, len(self._flat_g) - 1)
        return self._sum(ri, self._flat_g[idx])

    def predict_arrays(self, ks: np.ndarray, e: np.ndarray, d: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Vectorised latency from decoded arrays (``space.decode_arrays``): pure numpy."""
        sp = self.space
        ks, e, d, r = (np.asarray(x, dtype=np.intp) for x in (ks, e, d, r))
        n = len(r)
        if ks.shape != (n, sp.n_slots) or e.shape != (n, sp.n_slots) or d.shape != (n, sp.n_units):
            raise SpaceError(
                f"arrays have shapes ks{ks.shape} e{e.shape} d{d.shape}; space {sp.name} needs "
                f"(n, {sp.n_slots}) and (n, {sp.n_units})"
            )
        if n == 0:
            return np.zeros(0)
        inr = (r >= 0) & (r < len(self._rpos))
        ri = np.where(inr, self._rpos[np.where(inr, r, 0)], -1)
        if (ri < 0).any():
            bad = int(r[np.argmax(ri < 0)])
            raise LatencyTableError(f"r={bad} has no lookup table; available resolutions: {self.resolutions()}")
        active = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        okk = (ks >= 0) & (ks < len(self._kpos))
        oke = (e >= 0) & (e < len(self._epos))
        ki = np.where(okk, self._kpos[np.where(okk, ks, 0)], -1)
        ei = np.where(oke, self._epos[np.where(oke, e, 0)], -1)
        bad = active & ((ki < 0) | (ei < 0))
        if bad.any():
            i, s = np.argwhere(bad)[0]
            raise SpaceError(
                f"slot {s} k{ks[i, s]}e{e[i, s]} is not in space {sp.name} "
                f"(kernels {sp.kernel_choices}, expands {sp.expand_choices})"
            )
        nk, ne = self._cost.shape[2], self._cost.shape[3]
        idx = ((ri[:, None] * sp.n_slots + self._slots) * nk + ki) * ne + ei
        idx = np.where(active, idx, len(self._flat_ke) - 1)
        return self._sum(ri, self._flat_ke[idx])

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if isinstance(archs, ArchBatch) and (
            archs.space is self.space or (_same_macro(archs.space, self.space) and archs.space.to_config() == self._genome_cfg)
        ):
            out = self.predict_genomes(archs.genomes)
            r = np.asarray(self.space.resolutions)[archs.genomes[:, -1]] if len(archs) else np.zeros(0, int)
        elif isinstance(archs, ArchBatch) and _same_macro(archs.space, self.space):
            arrays = archs.arrays
            out, r = self.predict_arrays(*arrays), arrays[3]
        elif isinstance(archs, ArchBatch):
            raise SpaceError(
                f"the archs come from space {archs.space.name!r}, whose layers differ from space "
                f"{self.space.name!r} that these lookup tables price; build LookupTableLatency for that space"
            )
        else:
            archs = [self.space.validate(a) for a in archs]
            if not archs:
                return np.zeros(0)
            r = np.array([a.r for a in archs])
            out = self.predict_arrays(
                np.array([a.ks for a in archs]), np.array([a.e for a in archs]), np.array([a.d for a in archs]), r
            )
        nan = np.isnan(out)
        if nan.any():  # an entry is missing: the per-layer path names it
            i = int(np.argmax(nan))
            self.layer_costs(archs[i])
            raise MissingLatencyEntry("?", str(self._sources.get(int(r[i]), "?")))  # pragma: no cover
        return out

    def __repr__(self) -> str:
        return (
            f"LookupTableLatency(space={self.space.name!r}, tables={self.tables_spec!r}, format={self.format!r}, "
            f"resolutions={self.resolutions()})"
        )
