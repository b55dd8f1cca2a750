"""Build a per-layer latency lookup table of this machine, in Once-for-All's yaml format.

Every distinct layer of a space (at each requested input resolution) is timed in isolation, as a
one-layer network, with the same protocol as whole networks (:mod:`hwnas.predictors.measure.protocol`), and
written as ``{out_dir}/{r}_lookup_table.yaml`` (one file per resolution, like
``ofa/note10/{r}_lookup_table.yaml``). :class:`~hwnas.predictors.lut.LookupTableLatency` then reads
them back::

    paths = build_lut(space, "luts/local", resolutions=[160, 224], store="measurements.sqlite")
    lut = LookupTableLatency(space, tables="luts/local/{r}_lookup_table.yaml")

Per-layer timings go through a :class:`~hwnas.predictors.measure.store.MeasurementStore` (space key
``"<space>:layers"``, arch key = the table key), so an interrupted build resumes where it stopped.

``{out_dir}/lut.json`` records who made the tables (device, protocol, space, format, resolutions); a
folder holding tables of another device or protocol, or tables without that record, is refused (one
line) instead of having a table replaced by another device's. The table loader reads only the
``*_lookup_table.yaml`` files.

The distinct layers are found from the space's own layer description: for each block choice, the
network whose every unit has its maximum depth and uses that block in every slot; together these
cover every (unit, first-or-not, kernel, expand) layer and the fixed layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.predictors.data import _space
from hwnas.spaces.errors import UserError

from .measurer import LocalMeasurer
from .models import ModelSpec
from .protocol import MeasureConfig
from .store import MeasurementStore

#: protocol defaults for single layers: short calls, so more of them
LAYER_DEFAULTS = dict(warmup=10, repeats=30, min_time_s=0.02, chunk=64)

#: the record of a lookup-table folder: which device, protocol, space and format made its tables
LUT_INFO = "lut.json"
_IDENTITY = ("device", "protocol", "space", "format")


class LutFolderError(UserError, ValueError):
    """A lookup-table folder holds tables of another device or protocol (or of unknown origin)."""


def lut_info(space: Any, device: str, config: Any, format: str = "ofa") -> dict:
    """What ``{out_dir}/lut.json`` records of a build (without its resolutions)."""
    fp = config.fingerprint() if hasattr(config, "fingerprint") else dict(config)
    return {"made_by": "hwnas-measure --build-lut", "device": str(device), "protocol": fp,
            "space": _space(space).name, "format": format}


def _describe(info: dict) -> str:
    proto = info.get("protocol") or {}
    text = ", ".join(f"{k}={v}" for k, v in proto.items()) if isinstance(proto, dict) else str(proto)
    return f"device {info.get('device')!r} ({text}), space {info.get('space')!r}"


def check_lut_dir(out_dir: str | os.PathLike, info: dict) -> dict | None:
    """Check that the tables of ``info`` (see :func:`lut_info`) may go into ``out_dir``: a new or empty
    folder, or one whose ``lut.json`` records the same device, protocol, space and format (another
    resolution, or a rerun). Returns the folder's record, if any; else one :class:`LutFolderError`."""
    d = Path(out_dir).expanduser()
    fix = "give --build-lut another folder (one folder per device and protocol)"
    if d.exists() and not d.is_dir():
        raise LutFolderError(f"lookup-table folder {d} is a file; give --build-lut a folder (it is created if missing)")
    rec = d / LUT_INFO
    if rec.exists():
        try:
            saved = json.loads(rec.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise LutFolderError(f"{rec} cannot be read ({exc}), so the device of the tables in {d} is unknown; {fix}") from None
        diff = [k for k in _IDENTITY if saved.get(k) != info.get(k)]
        if diff:
            raise LutFolderError(f"{d} holds lookup tables of {_describe(saved)}, not of {_describe(info)} "
                                 f"(another {', '.join(diff)}); {fix}")
        return saved
    tables = sorted(p.name for p in d.glob("*_lookup_table.yaml")) if d.is_dir() else []
    if tables:
        raise LutFolderError(f"{d} holds lookup tables ({', '.join(tables[:3])}) with no {LUT_INFO} saying which device "
                             f"and protocol made them; {fix}")
    return None


def cover_archs(space: Any, resolution: int) -> list:
    """Archs of ``space`` at ``resolution`` that together contain every distinct layer."""
    sp = _space(space)
    layout = sp.arch_type.LAYOUT
    n_blocks = max(len(b) for b in sp.block_choices)
    d = [max(ch) for ch in sp.depth_choices]
    out = []
    for b in range(n_blocks):
        ks, e = [], []
        for u, m in enumerate(layout):
            k, x = sp.block_choices[u][min(b, len(sp.block_choices[u]) - 1)]
            ks += [k] * m
            e += [x] * m
        out.append(sp.validate({"ks": ks, "e": e, "d": d, "r": int(resolution)}))
    return out


def distinct_layers(space: Any, resolutions: Sequence[int] | None = None, format: str = "ofa") -> dict[int, dict[str, dict]]:
    """``{r: {key: layer_kwargs}}``: every distinct layer of the space per resolution, keyed by its
    lookup-table key; ``layer_kwargs`` feed :func:`layer_model`."""
    from dataclasses import asdict

    from hwnas.predictors.lut import lut_keys

    sp = _space(space)
    res = list(resolutions) if resolutions else list(sp.resolutions)
    out: dict[int, dict[str, dict]] = {}
    for r in res:
        table: dict[str, dict] = {}
        for a in cover_archs(sp, r):
            layers = sp.layers(a)
            pool_in = None
            for key, L in lut_keys(layers, format):
                if L.kind == "pool":
                    pool_in = L.in_shape
                if key is None or key in table:
                    continue
                kw = {"layer": asdict(L), "pool_first": bool(format == "proxyless" and L.kind == "linear"),
                      "pool_in": list(pool_in) if pool_in is not None else None}
                table[key] = kw
        out[int(r)] = table
    return out


def build_lut(
    space: Any,
    out_dir: str | os.PathLike,
    resolutions: Sequence[int] | None = None,
    config: MeasureConfig | None = None,
    store: Any = None,
    device: str = "local",
    format: str = "ofa",
    progress: bool = False,
) -> dict[int, Path]:
    """Time every distinct layer and write ``{out_dir}/{r}_lookup_table.yaml`` per resolution.

    ``config`` defaults to :data:`LAYER_DEFAULTS` on top of :class:`MeasureConfig`'s defaults.
    Already stored layers (same ``store`` and ``device``) are not timed again; each layer is committed
    when its chunk is done. Returns ``{r: path}``.
    """
    from hwnas.predictors.lut import write_ofa_yaml

    sp = _space(space)
    cfg = config or MeasureConfig(**LAYER_DEFAULTS)
    info = lut_info(sp, device, cfg, format)
    check_lut_dir(out_dir, info)  # before anything is timed
    measurer = LocalMeasurer(cfg)
    st = store if isinstance(store, MeasurementStore) else MeasurementStore(store if store is not None else ":memory:")
    st.register_device(device, cfg, measurer.platform)
    skey = f"{sp.name}:layers"
    layers = distinct_layers(sp, resolutions, format)
    todo: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for r, table in layers.items():
        have = st.get_many(device, skey, list(table))
        for key, kw in table.items():
            if key not in have and key not in seen:
                seen.add(key)
                todo.append((key, kw))
    if todo:
        specs = [ModelSpec("hwnas.predictors.measure.models:layer_model", dict(kw, batch_size=cfg.batch_size), key=key)
                 for key, kw in todo]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(specs), desc=f"timing {sp.name} layers", unit="layer")
        try:
            measurer.measure(specs, on_result=lambda i, m: st.put(device, skey, todo[i][0], m, cfg, measurer.platform), progress=bar)
        finally:
            if bar is not None:
                bar.close()
    out_dir = Path(out_dir)
    saved = check_lut_dir(out_dir, info) or {}  # again: another build may have claimed the folder meanwhile
    done = {int(r) for r in saved.get("resolutions", []) if isinstance(r, int)}
    atomic_write(out_dir / LUT_INFO, json.dumps({**info, "resolutions": sorted(done | set(layers))}, indent=2) + "\n")
    paths = {}
    for r, table in layers.items():
        got = st.get_many(device, skey, list(table))
        entries = {}
        for key in table:
            rec = got[key]
            samples = rec.samples or [rec.value]
            std = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
            entries[key] = {"count": int(rec.n or 1), "mean": rec.value, "std": std}
        paths[r] = write_ofa_yaml(entries, out_dir / f"{r}_lookup_table.yaml")
    return paths


def lut_vs_end_to_end(space: Any, lut_dir: str | os.PathLike, archs: Sequence[Any], measured: Sequence[float]) -> dict:
    """Spearman/Pearson agreement and ratio of LUT sums to measured end-to-end latency."""
    from scipy.stats import pearsonr

    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.predictors.monotonicity import srcc
    from hwnas.spaces.io import space_from_spec, space_spec

    sp = _space(space)
    res = sorted({int(sp.validate(a).r) for a in archs})
    spec = space_spec(sp)
    at_res = space_from_spec({"space": spec["space"], "options": {**spec["options"], "resolutions": res}})
    lut = LookupTableLatency(at_res, tables={r: Path(lut_dir) / f"{r}_lookup_table.yaml" for r in res})
    pred = lut.predict(archs)
    y = np.asarray(measured, dtype=float)
    return {
        "n": len(y),
        "srcc": srcc(pred, y),
        "pearson": float(pearsonr(pred, y)[0]),
        "sum_over_e2e": float(np.median(pred / y)),
        "pred": pred,
    }
