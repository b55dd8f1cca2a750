"""``hwnas-export``: export a search's Pareto set (or single archs) as model folders.

Examples::

    hwnas-export outputs/run1                          # every arch of outputs/run1/pareto.json
    hwnas-export outputs/run1/pareto.json --top 3 --checkpoint ofa_mbv3_d234_e346_k357_w1.2
    hwnas-export 'r224:k3e4.k5e6/...' --space ofa_mbv3_w12 --out exports --formats onnx,timm
    hwnas-export arch.json --space ofa_proxyless_w13 --accuracy 0.781 --accuracy-kind measured

Without ``--checkpoint`` the weights are the static network's random initialisation; every export
then says so (metadata ``weights.trained = false`` and a warning in its README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .export import FORMATS, ExportError, export_many, load_weights_source, read_archs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwnas-export",
        description="Export subnets (Pareto set of a search, or archs) to PyTorch, TorchScript, ONNX and timm.",
    )
    p.add_argument("source", help="search run folder, pareto.json, arch JSON file, arch JSON string or compact arch string")
    p.add_argument("--space", default=None, help="space name (default: the one recorded in pareto.json)")
    p.add_argument("--checkpoint", default=None,
                   help="supernet checkpoint: a file, an official OFA name (ofa_mbv3_d234_e346_k357_w1.2) or an asset path; "
                        "default: untrained static weights (flagged)")
    p.add_argument("--mirror", default=None, help="assets mirror folder (for official checkpoints)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/export, or ./export)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--top", type=int, default=None, help="export only the first K archs of the front (pareto.json order: by latency)")
    p.add_argument("--select", default=None, help="comma-separated indices of the front to export (e.g. 0,3,7)")
    p.add_argument("--accuracy", type=float, default=None, help="accuracy of an arch given inline")
    p.add_argument("--latency", type=float, default=None, help="latency (ms) of an arch given inline")
    p.add_argument("--accuracy-kind", default="predicted", choices=["predicted", "measured"])
    p.add_argument("--latency-kind", default="predicted", choices=["predicted", "measured"])
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace existing export folders")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hwnas.predictors.assets import AssetError
    from hwnas.spaces.base import SpaceError

    from .checkpoint import CheckpointError

    errors: tuple = (ExportError, SpaceError, AssetError, CheckpointError, FileNotFoundError)
    try:
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ExportError(f"--formats {args.formats!r}: unknown {bad}; allowed: {','.join(FORMATS)}")
        space, items = read_archs(args.source, args.space)
        if args.select:
            try:
                idx = [int(s) for s in args.select.split(",") if s.strip()]
            except ValueError:
                raise ExportError(f"--select {args.select!r} must be comma-separated integers such as 0,3,7") from None
            out_of = [i for i in idx if not 0 <= i < len(items)]
            if out_of:
                raise ExportError(f"--select {out_of} out of range; the front has {len(items)} archs (0..{len(items) - 1})")
            items = [items[i] for i in idx]
        if args.top is not None:
            if args.top < 1:
                raise ExportError("--top must be a positive integer")
            items = items[: args.top]
        for it in items:
            if args.accuracy is not None:
                it.accuracy = args.accuracy
            if args.latency is not None:
                it.latency = args.latency
            it.accuracy_kind, it.latency_kind = args.accuracy_kind, args.latency_kind
        src = Path(args.source)
        if args.out:
            out = Path(args.out)
        elif src.is_dir():
            out = src / "export"
        elif src.is_file() and src.name == "pareto.json":
            out = src.parent / "export"
        else:
            out = Path("export")
        weights = load_weights_source(space, args.checkpoint, mirror=args.mirror)
        if not weights.trained:
            print("hwnas-export: warning: no --checkpoint given; exporting UNTRAINED (randomly initialised) weights",
                  file=sys.stderr)

        def progress(i: int, n: int, path: Path) -> None:
            print(f"[{i}/{n}] {path}", flush=True)

        export_many(space, items, out, weights=weights, formats=formats, overwrite=args.overwrite, opset=args.opset,
                    progress=progress)
    except errors as exc:
        print(f"hwnas-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {len(items)} arch(s) to {out} (index: {out / 'index.json'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
