"""``hwnas-measure``: time subnets on this machine or on a remote device, build a lookup table, or write
a plan of archs to measure with your own tools.

Examples::

    # 100 random OFA-MBv3 subnets on this machine (ONNX Runtime, 1 thread), stored + exported
    hwnas-measure --space ofa_mbv3_w12 -n 100 --seed 0 --store measurements.sqlite --out local.csv

    # the archs of a search result (pareto.json), or of a JSON-lines / CSV file
    hwnas-measure --space ofa_mbv3_w12 --archs runs/search/pareto.json --out front_latency.csv

    # a remote device running: dask worker tcp://HOST:8786 --nthreads 1 --resources "hwnas-device=1"
    hwnas-measure --space ofa_mbv3_w12 -n 20 --scheduler tcp://HOST:8786 --resource hwnas-device --device pi4-ort --store m.sqlite

    # the 20 archs worth measuring, as ONNX + TorchScript, for your own tools (fill plan/plan.csv)
    hwnas-measure --plan 20 --space ofa_mbv3_w12 --device my-npu --out plan/

    # a per-layer lookup table of this machine, in Once-for-All's yaml format
    hwnas-measure --space ofa_mbv3_w12 --build-lut luts/local --resolutions 160 176 192 208 224

A rerun with the same ``--store`` and ``--device`` measures only what is missing (every arch is stored
as soon as it is measured); the CSV (``arch`` + one column per device) is what
:class:`hwnas.predictors.data.LatencyDataset` reads. An existing ``--out`` file is extended only when it
is an earlier ``hwnas-measure`` CSV of the same device and space (its rows are kept, this run's added; the
store says which space its rows were measured for);
any other file is refused, as is a folder, or a folder that does not exist (like ``--store``: create it
first). A ``--build-lut`` folder records its device and protocol (``lut.json``) and takes no tables of
another.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from hwnas.predictors.assets import remove_stale_temps
from hwnas.spaces.errors import UserError, cli_errors

PROG = "hwnas-measure"


class UsageError(UserError, ValueError):
    """A command-line option is wrong or missing; the message names it and the fix."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--space", default="ofa_mbv3_w12", help="space name (default ofa_mbv3_w12)")
    ap.add_argument("--resolutions", type=int, nargs="+", help="override the space's resolutions (e.g. 160 224)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("-n", "--n", type=int, default=None, help="number of random archs (default 20)")
    src.add_argument("--archs", help="arch file: JSON list, pareto.json, JSON lines or CSV with an 'arch' column")
    src.add_argument("--build-lut", metavar="DIR", help="build a per-layer lookup table in DIR/{r}_lookup_table.yaml instead")
    src.add_argument("--plan", type=int, metavar="K", help="write the K archs worth measuring (ONNX + TorchScript + plan.csv) into --out")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--pool", type=int, default=2000, help="--plan: random archs the K are selected from (default 2000)")
    ap.add_argument("--selection", default="auto", help="--plan: auto (default, the adaptation's: kmeans on MBConv spaces, else stratified), stratified, kmeans or random")
    ap.add_argument("--device", default=None, help="device name in the store/CSV/plan (default local-<backend>-t<threads>)")
    ap.add_argument("--scheduler", default=None, help="measure on a remote device: the Dask scheduler, e.g. tcp://HOST:8786")
    ap.add_argument("--resource", default="hwnas-device", help="the Dask resource the device's worker holds (default hwnas-device)")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a worker holding --resource (default 60)")
    ap.add_argument("--backend", default=None, help="onnxruntime (default) or torch")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default 1)")
    ap.add_argument("--processes", type=int, default=None, help="worker processes per model (default 3)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per process (default 10; 30 for layers)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per process (default 5; 10 for layers)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 1")
    ap.add_argument("--pin", default=None, help="CPU ids to pin workers to ('1', '0,1'), 'auto' (least busy) or none")
    ap.add_argument("--clock", default=None, help="wall, cpu (process CPU time, 1 thread) or auto (default)")
    ap.add_argument("--max-spread", type=float, default=None, help="re-measure when (max-min)/median across processes exceeds this (default 0.15)")
    ap.add_argument("--chunk", type=int, default=None, help="models per worker process (default 4; 64 for layers)")
    ap.add_argument("--store", default="measurements.sqlite", help="SQLite store (default measurements.sqlite)")
    ap.add_argument("--out", default=None, help="output CSV (arch + one column per device); with --plan: the plan folder")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def check_args(args: argparse.Namespace) -> None:
    """The numbers given on the command line checked before anything is read, opened or measured."""
    for flag, v, lo, ex in (("-n", args.n, 1, 20), ("--plan", args.plan, 1, 20), ("--pool", args.pool, 1, 2000),
                            ("--seed", args.seed, 0, 0), ("--threads", args.threads, 1, 1), ("--processes", args.processes, 1, 3),
                            ("--repeats", args.repeats, 1, 10), ("--warmup", args.warmup, 0, 5),
                            ("--batch-size", args.batch_size, 1, 1), ("--chunk", args.chunk, 1, 4)):
        if v is not None and v < lo:
            raise UsageError(f"{flag} {v}: give an integer >= {lo} (e.g. {flag} {ex})")
    if not (math.isfinite(args.wait) and args.wait > 0):
        raise UsageError(f"--wait {args.wait}: give the seconds to wait for a device's worker, a number > 0 (e.g. --wait 60)")
    if args.max_spread is not None and not (math.isfinite(args.max_spread) and args.max_spread > 0):
        raise UsageError(f"--max-spread {args.max_spread}: give a relative spread > 0 (e.g. --max-spread 0.15)")
    for flag, v in (("--device", args.device), ("--store", args.store), ("--out", args.out), ("--build-lut", args.build_lut)):
        if v is not None and not str(v).strip():
            raise UsageError(f"{flag} is empty; give a {'name' if flag == '--device' else 'path'}")


def as_options(message: str) -> str:
    """A protocol message naming its fields (``pin=[9] names CPU(s) ...``) with the options of this command instead
    (``--pin [9] names ...``)."""
    import re

    fields = ("backend", "threads", "processes", "repeats", "warmup", "batch_size", "pin", "clock", "max_spread", "chunk")
    return re.sub(rf"(?<![\w.-])({'|'.join(fields)})=", lambda m: f"--{m.group(1).replace('_', '-')} ", message)


def earlier_output(path: str, space: Any, device: str) -> Any:
    """Check ``--out`` before anything is measured. Returns the dataset of an earlier ``hwnas-measure``
    CSV of ``device`` and ``space`` at ``path`` (extended by this run), or ``None`` when there is no file
    yet; a folder, a missing folder or another file is one :class:`UsageError`."""
    from hwnas.predictors.data import LatencyDataset

    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"--out {path} is a folder; give a CSV file path such as {p / 'latency.csv'}")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"--out {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: folder {parent} cannot be written; choose a folder you can write to")
    if not p.exists():
        return None
    fix = "give another --out file, or remove it"
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"--out {path} already exists and is not a CSV that hwnas-measure wrote ({type(exc).__name__}); {fix}") from None
    if header != ["arch", device]:
        raise UsageError(f"--out {path} already exists and is not an hwnas-measure CSV of device {device!r} (its columns: "
                         f"{header[:6]}); this run would replace it: {fix}")
    try:
        return LatencyDataset.from_csv(p, space)
    except (UserError, ValueError) as exc:
        raise UsageError(f"--out {path} already exists and is not an hwnas-measure CSV of space {space.name!r} ({exc}); {fix}") from None


def check_earlier_space(store: Any, path: str, earlier: Any, space: Any, device: str) -> None:
    """An earlier ``--out`` file is extended only with archs of its own space: OFA w1.0 and w1.2 archs are
    written alike, so a file of the other width would be read as this one's and the two mixed. The CSV does
    not say its space; the store does, for the rows it holds (rows measured into another store cannot be
    told apart and are kept)."""
    from hwnas.spaces.io import arch_key

    keys = [arch_key(space, a) for a in earlier.archs]
    mine = store.get_many(device, space.name, keys)
    rest = [k for k in keys if k not in mine]
    for other in store.spaces(device) if rest else []:
        hits = store.get_many(device, other, rest) if other != space.name else {}
        if hits:
            raise UsageError(f"--out {path} holds {len(hits)} arch(s) measured for space {other!r} on {device!r} (in {store.path}), "
                             f"not {space.name!r}; give another --out file for {space.name}")


def write_output(store: Any, path: str, space: Any, device: str, archs: list, earlier: Any) -> str:
    """This run's archs (with an earlier CSV of the same device: its rows first, kept, then the new
    ones) and their values from the store, written atomically; returns what was written."""
    if earlier is None:
        return store.export_csv(path, space, [device], archs=archs)
    import numpy as np

    from hwnas.predictors.data import LatencyDataset

    rows = list(dict.fromkeys([*earlier.archs, *archs]))
    vals = np.array(store.dataset(space, [device], archs=rows).table[device], dtype=float)
    old = dict(zip(earlier.archs, earlier.table[device]))
    for i, a in enumerate(rows):
        if not np.isfinite(vals[i]) and a in old:
            vals[i] = old[a]  # measured into another store: the earlier file's value stays
    LatencyDataset(space, rows, {device: vals}, name=Path(path).stem).to_csv(path)
    return f"{path} ({len(rows)} archs: {len(earlier.archs)} kept from the earlier file, {len(rows) - len(earlier.archs)} added)"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: timing processes killed, temporary files removed


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        with cli_errors(PROG):
            return _run(args)
    finally:
        signal.signal(signal.SIGTERM, old)


def _run(args: argparse.Namespace) -> int:

    from hwnas.spaces import SpaceError, create_space
    from hwnas.spaces.io import read_archs

    from .measurer import make_measurer
    from .protocol import MeasureConfig, MeasureConfigError
    from .store import MeasurementStore

    check_args(args)
    try:
        space = create_space(args.space, **({"resolutions": args.resolutions} if args.resolutions else {}))
    except (SpaceError, TypeError) as exc:
        raise UsageError(f"--space/--resolutions: {exc}") from None
    from hwnas.spaces.mbconv import MBConvSpace

    if not isinstance(space, MBConvSpace):  # the timed networks and the plan's models are built as MBConv networks
        raise UsageError(
            f"--space {args.space}: hwnas-measure times, and --plan writes, MBConv networks (OFA-MobileNetV3 / ProxylessNAS "
            f"spaces such as ofa_mbv3_w12), not {type(space).__name__}; for {args.space} on your own device, time the archs "
            "with your own tools into a CSV with columns arch,<device> (one compact arch string per row) and adapt a proxy "
            f"to it: hwnas-search space={args.space}" + (
                f" accuracy=capacity latency=adapted latency.proxy={args.space} latency.proxy_device=pixel3"
                if args.space in ("nasbench201", "fbnet") else " latency=adapted")
            + " latency.target_samples=<csv> latency.target_device=<device>")
    if args.plan is not None:
        from .plan import select_plan_archs, write_plan

        if not args.out:
            raise UsageError("--plan needs --out <folder> for the models and plan.csv")
        archs = select_plan_archs(space, args.plan, args.seed, args.pool, args.selection)
        path = write_plan(space, archs, args.out, device=args.device or "my-device", batch_size=args.batch_size or 1)
        print(f"wrote {len(archs)} archs to {path.parent}: fill the latency_ms column of {path} "
              f"(see {path.parent / 'INSTRUCTIONS.md'})", file=sys.stderr)
        return 0
    layer_mode = args.build_lut is not None
    given = {"backend": args.backend, "threads": args.threads, "processes": args.processes, "batch_size": args.batch_size,
             "pin": args.pin, "clock": args.clock, "max_spread": args.max_spread, "repeats": args.repeats,
             "warmup": args.warmup, "chunk": args.chunk}
    proto: dict[str, Any] = {k: v for k, v in given.items() if v is not None}  # the others: MeasureConfig's defaults
    if layer_mode:
        from .lut_build import LAYER_DEFAULTS

        proto = {**LAYER_DEFAULTS, **proto}
    try:
        cfg = MeasureConfig(seed=args.seed, **proto)
    except MeasureConfigError as exc:  # its fields named as this command's options (backend='foo' -> --backend 'foo')
        raise UsageError(as_options(str(exc))) from None
    device = args.device or f"local-{'ort' if cfg.backend == 'onnxruntime' else 'torch'}-t{cfg.threads}"
    if args.scheduler and not args.device:
        raise UsageError("--scheduler needs --device NAME: the name the remote device's measurements are stored under")
    if layer_mode and args.scheduler:
        raise UsageError("--build-lut times layers on this machine; it cannot be combined with --scheduler")
    archs, earlier = None, None
    if not layer_mode:  # bad input is reported before anything is opened or measured
        archs = read_archs(args.archs, space, "--archs", fix="give --space {space}") if args.archs else space.sample(args.n if args.n is not None else 20, args.seed)
        if not archs:
            raise UsageError(f"--archs {args.archs} holds no archs; give a file with at least one")
        if args.out:
            earlier = earlier_output(args.out, space, device)
            remove_stale_temps(Path(args.out).expanduser().absolute().parent)  # killed runs' half-written CSVs
    else:
        from .lut_build import check_lut_dir, lut_info

        check_lut_dir(args.build_lut, lut_info(space, device, cfg))
        remove_stale_temps(Path(args.build_lut).expanduser())  # killed runs' half-written tables
    store = MeasurementStore(args.store)
    if earlier is not None:
        check_earlier_space(store, args.out, earlier, space, device)
    measurer = make_measurer(cfg, args.scheduler, args.resource, wait_s=args.wait)
    store.register_device(device, cfg, getattr(measurer, "platform", None) if not args.scheduler else None)
    try:
        return _measure(args, space, cfg, device, store, measurer, archs, earlier)
    except BaseException:
        store.forget_if_empty(device, cfg)  # a run that stored nothing (a typo in --scheduler, Ctrl-C) does not bind the name
        raise


def _measure(args: argparse.Namespace, space: Any, cfg: Any, device: str, store: Any, measurer: Any, archs: Any,
             earlier: Any) -> int:
    from tqdm.auto import tqdm

    from hwnas.spaces.io import arch_key

    from .measurer import measure_into_store

    if args.build_lut is not None:
        from .lut_build import build_lut

        paths = build_lut(space, args.build_lut, config=cfg, store=store, device=device, progress=not args.no_progress)
        for r, p in sorted(paths.items()):
            print(f"r={r}: {p}")
        return 0

    uniq = list(dict.fromkeys(archs))
    keys = [arch_key(space, a) for a in uniq]
    known = store.get_many(device, space.name, keys)
    todo = [a for a, k in zip(uniq, keys) if k not in known]
    print(f"{len(uniq)} distinct archs, {len(known)} already in {args.store} for device {device!r}, {len(todo)} to measure",
          file=sys.stderr)
    if todo:
        store.check_writable()
        bar = tqdm(total=len(todo), desc=f"measuring {space.name} on {device}", unit="arch", disable=args.no_progress)
        try:
            measure_into_store(store, device, space, todo, measurer, progress=bar)
        except (KeyboardInterrupt, SystemExit):
            print(f"\n{PROG}: stopped; the finished measurements are in {args.store}, rerun the same command to continue",
                  file=sys.stderr)
            raise
        finally:
            bar.close()
            measurer.close()
    got = store.get_many(device, space.name, keys)
    unstable = sum(1 for k in keys if (got[k].spread or 0) > cfg.max_spread)
    vals = sorted(got[k].value for k in keys)
    if vals:
        import statistics

        print(f"latency ms: min {vals[0]:.3f}  median {statistics.median(vals):.3f}  max {vals[-1]:.3f}; "
              f"{unstable} arch(s) still above max_spread={cfg.max_spread}", file=sys.stderr)
    if args.out:
        print(f"wrote {write_output(store, args.out, space, device, uniq, earlier)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
