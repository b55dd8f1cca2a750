"""``hwnas-measure``: time subnets (or build a lookup table) on this machine.

Examples::

    # 100 random OFA-MBv3 subnets, ONNX Runtime 1 thread pinned to CPU 1, stored + exported
    hwnas-measure --space ofa_mbv3_w12 -n 100 --seed 0 --device cpu-ort1 --pin 1 \\
        --store measurements.sqlite --out latency_local.csv

    # the archs of a search result (pareto.json), or of a JSON-lines / CSV file
    hwnas-measure --space ofa_mbv3_w12 --archs runs/search/pareto.json --out front_latency.csv

    # a per-layer lookup table of this machine, in Once-for-All's yaml format
    hwnas-measure --space ofa_mbv3_w12 --build-lut luts/local --resolutions 160 176 192 208 224

A rerun with the same ``--store`` and ``--device`` measures only what is missing; the CSV
(``arch`` + one column per device) is what :class:`hwnas.predictors.data.LatencyDataset` reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .measure import MeasureConfig, MeasureError, measure_archs
from .store import MeasurementStore, StoreError


def _collect(obj: Any) -> list:
    """Arch-like items of a loaded JSON document (a list, ``{"front"|"archs"|"pareto": [...]}``,
    or rows with an ``arch`` field)."""
    if isinstance(obj, dict):
        if "ks" in obj:
            return [obj]
        if "arch" in obj:
            return [obj["arch"]]
        for key in ("front", "archs", "pareto", "population", "results"):
            if key in obj and isinstance(obj[key], list):
                return [x for item in obj[key] for x in _collect(item)]
        return []
    if isinstance(obj, list):
        return [x for item in obj for x in _collect(item)]
    if isinstance(obj, str):
        return [obj]
    return []


def read_archs(path: str | os.PathLike, space: Any) -> list:
    """Archs from a file: JSON (list, pareto.json), JSON lines (one arch, compact string or row with
    ``arch`` per line), or CSV with an ``arch`` column. Duplicates are kept in order."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--archs {p}: no such file")
    text = p.read_text()
    items: list = []
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "arch" not in rows[0]:
            raise SystemExit(f"--archs {p}: a CSV needs an 'arch' column")
        items = [r["arch"] for r in rows]
    else:
        try:
            items = _collect(json.loads(text))
        except json.JSONDecodeError:
            for i, line in enumerate(text.splitlines()):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    items += _collect(json.loads(line))
                except json.JSONDecodeError:
                    if line.startswith("r") and ":" in line:
                        items.append(line)  # compact arch string
                    else:
                        raise SystemExit(f"--archs {p} line {i + 1} is neither JSON nor an arch string: {line[:60]!r}") from None
    if not items:
        raise SystemExit(f"--archs {p}: no architectures found (expected a list, a pareto.json 'front', JSON lines or a CSV 'arch' column)")
    out = []
    for i, a in enumerate(items):
        try:
            out.append(space.validate(a))
        except ValueError as exc:
            raise SystemExit(f"--archs {p} entry {i}: {exc}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hwnas-measure", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--space", default="ofa_mbv3_w12", help="space name (default ofa_mbv3_w12)")
    ap.add_argument("--resolutions", type=int, nargs="+", help="override the space's resolutions (e.g. 160 224)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("-n", "--n", type=int, default=None, help="number of random archs (default 20)")
    src.add_argument("--archs", help="arch file: JSON list, pareto.json, JSON lines or CSV with an 'arch' column")
    src.add_argument("--build-lut", metavar="DIR", help="build a per-layer lookup table in DIR/{r}_lookup_table.yaml instead")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--device", default=None, help="device name in the store/CSV (default local-<backend>-t<threads>)")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or torch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--processes", type=int, default=3, help="worker processes per model (default 3)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per process (default 10; 30 for layers)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per process (default 5; 10 for layers)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--pin", default=None, help="CPU ids to pin workers to ('1', '0,1'), 'auto' (least busy) or none")
    ap.add_argument("--clock", default="auto", help="wall, cpu (process CPU time, 1 thread) or auto (default)")
    ap.add_argument("--max-spread", type=float, default=0.15, help="re-measure when (max-min)/median across processes exceeds this")
    ap.add_argument("--chunk", type=int, default=None, help="models per worker process (default 8; 64 for layers)")
    ap.add_argument("--store", default="measurements.sqlite", help="SQLite store (default measurements.sqlite)")
    ap.add_argument("--out", default=None, help="output CSV (arch + one column per device)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from hwnas.spaces import SpaceError, create_space

    try:
        kw = {"resolutions": args.resolutions} if args.resolutions else {}
        space = create_space(args.space, **kw)
    except (SpaceError, TypeError) as exc:
        print(f"hwnas-measure: --space/--resolutions: {exc}", file=sys.stderr)
        return 2
    layer_mode = args.build_lut is not None
    proto: dict[str, Any] = {}
    for name, val in (("repeats", args.repeats), ("warmup", args.warmup), ("chunk", args.chunk)):
        if val is not None:
            proto[name] = val
    if layer_mode:
        from .lut_build import LAYER_DEFAULTS

        proto = {**LAYER_DEFAULTS, **proto}
    try:
        cfg = MeasureConfig(backend=args.backend, threads=args.threads, processes=args.processes,
                            batch_size=args.batch_size, pin=args.pin, clock=args.clock,
                            max_spread=args.max_spread, seed=args.seed, **proto)
    except ValueError as exc:
        print(f"hwnas-measure: {exc}", file=sys.stderr)
        return 2
    device = args.device or f"local-{'ort' if cfg.backend == 'onnxruntime' else 'torch'}-t{cfg.threads}"
    try:
        store = MeasurementStore(args.store)
        store.register_device(device, cfg)
    except StoreError as exc:
        print(f"hwnas-measure: {exc}", file=sys.stderr)
        return 2

    if layer_mode:
        from .lut_build import build_lut

        try:
            paths = build_lut(space, args.build_lut, config=cfg, store=store, device=device, progress=not args.no_progress)
        except (MeasureError, ValueError) as exc:
            print(f"hwnas-measure: {exc}", file=sys.stderr)
            return 1
        for r, p in sorted(paths.items()):
            print(f"r={r}: {p}")
        return 0

    if args.archs:
        archs = read_archs(args.archs, space)
    else:
        archs = space.sample(args.n if args.n is not None else 20, args.seed)
    uniq = list(dict.fromkeys(archs))
    known = store.get_many(device, space.name, uniq)
    todo = [a for a in uniq if a not in known]
    print(f"{len(uniq)} distinct archs, {len(known)} already in {args.store} for device {device!r}, {len(todo)} to measure",
          file=sys.stderr)
    if todo:
        bar = tqdm(total=len(todo), desc=f"measuring {space.name} on {device}", unit="arch", disable=args.no_progress)
        try:
            measure_archs(space, todo, cfg, on_result=lambda i, m: store.put(device, space.name, todo[i], m, cfg), progress=bar)
        except MeasureError as exc:
            print(f"hwnas-measure: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted; finished measurements are in {args.store}, rerun to continue", file=sys.stderr)
            return 130
        finally:
            bar.close()
    got = store.get_many(device, space.name, uniq)
    unstable = sum(1 for a in uniq if (got[a].spread or 0) > cfg.max_spread)
    vals = sorted(got[a].value for a in uniq)
    if vals:
        print(f"latency ms: min {vals[0]:.3f}  median {vals[len(vals) // 2]:.3f}  max {vals[-1]:.3f}; "
              f"{unstable} arch(s) still above max_spread={cfg.max_spread}", file=sys.stderr)
    if args.out:
        path = store.export_csv(args.out, space, [device], archs=uniq)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
