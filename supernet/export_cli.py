"""``hwnas-export``: export the best subnets of a search (or single archs) as model folders.

Examples::

    hwnas-export outputs/run1                          # the best arch of each latency budget of the run
    hwnas-export outputs/run1 --all                    # the whole Pareto front
    hwnas-export outputs/run1 --top 3 --checkpoint ofa_mbv3_d234_e346_k357_w1.2 --calib-data /datasets/imagenet
    hwnas-export 'r224:k3e4.k5e6/...' --space ofa_mbv3_w12 --out exports --formats onnx,timm
    hwnas-export arch.json --space ofa_proxyless_w13 --accuracy 0.781 --accuracy-kind measured

Without ``--checkpoint`` the weights are the static network's random initialisation; every export
then says so. With a checkpoint, ``--calib-data`` re-calibrates each subnet's BN statistics on training
images (required; ``--no-calib`` exports the supernet's statistics, flagged in every file). A rerun
skips the archs already exported, so an interrupted export resumes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from hwnas.spaces.checks import check_int
from hwnas.spaces.errors import cli_errors

from .export import (CALIB_IMAGES, FORMATS, ExportError, check_exportable, check_opset, check_values, export_many,
                     load_weights_source, read_items)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwnas-export",
        description="Export subnets (best archs of a search, its Pareto front, or archs) to PyTorch, TorchScript, ONNX and timm.",
    )
    p.add_argument("source", help="search run folder, pareto.json, arch file (JSON, JSON lines, CSV), arch JSON or compact arch string")
    p.add_argument("--space", default=None, help="space name (default: the one recorded in pareto.json)")
    p.add_argument("--all", action="store_true", help="export the whole front of pareto.json (default: the best arch per budget)")
    p.add_argument("--top", type=int, default=None,
                   help="export the first K archs of the front (pareto.json order: fastest first); --select i,j picks others")
    p.add_argument("--select", default=None, help="comma-separated indices of the front to export (e.g. 0,3,7)")
    p.add_argument("--checkpoint", default=None,
                   help="supernet checkpoint: a file, an official OFA name (ofa_mbv3_d234_e346_k357_w1.2) or an asset path; "
                        "default: untrained static weights (flagged)")
    p.add_argument("--calib-data", default=None,
                   help="ImageFolder (or a root with train/) whose images re-calibrate each subnet's BN statistics")
    p.add_argument("--calib-images", type=int, default=None,
                   help=f"images for BN re-calibration (default: as many as the search whose accuracies are exported used, else {CALIB_IMAGES})")
    p.add_argument("--no-calib", action="store_true",
                   help="export checkpoint weights with the supernet's BN statistics (flagged in every file)")
    p.add_argument("--mirror", default=None, help="assets mirror folder (for official checkpoints)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/export, or ./export)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--accuracy", type=float, default=None,
                   help="top-1 accuracy of an arch given inline: a fraction in [0, 1] (e.g. 0.781) or a percentage")
    p.add_argument("--latency", type=float, default=None, help="latency (ms, > 0) of an arch given inline")
    p.add_argument("--accuracy-kind", default=None, choices=["predicted", "measured"],
                   help="what the accuracy is (default: what the source says, else predicted)")
    p.add_argument("--latency-kind", default=None, choices=["predicted", "measured"],
                   help="what the latency is (default: what the source says -- a pipeline's archs.json: measured -- else predicted)")
    p.add_argument("--opset", default="17", help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace export folders made with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _not_top1(v: object) -> bool:
    """A finite number that no top-1 accuracy is (outside [0, 100]); NaN and infinity are refused elsewhere."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and not 0.0 <= v <= 100.0


def _out_dir(source: str, out: str | None) -> Path:
    if out:
        return Path(out)
    src = Path(source)
    if src.is_dir():
        return src / "export"
    if src.is_file() and src.name == "pareto.json":
        return src.parent / "export"
    return Path("export")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with cli_errors("hwnas-export"):
        return _run(args)
    return 2  # pragma: no cover - cli_errors exits


def _run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"--formats {args.formats} names unknown format(s) {bad}; allowed: {','.join(FORMATS)} "
                          "(e.g. --formats onnx,timm)")
    opset = check_opset(args.opset, "--opset ")
    check_values(args.accuracy, None, "--accuracy")
    check_values(None, args.latency, "--latency")
    check_int(args.calib_images, "--calib-images", 1, what="a number of images", example=CALIB_IMAGES, error=ExportError, null=True)
    if args.checkpoint and not args.calib_data and not args.no_calib:
        raise ExportError(
            "--checkpoint without --calib-data: subnets extracted from a supernet need their BN statistics "
            "re-calibrated on training images, or their accuracy collapses. Pass --calib-data <ImageFolder> "
            "(e.g. /datasets/imagenet/train), or --no-calib to export the supernet's statistics, flagged in every file"
        )
    select = "all" if (args.all or args.top is not None or args.select) else "best"
    space, items, notes = read_items(args.source, args.space, select=select)
    check_exportable(space, formats)  # before the output folder is made
    for line in notes:
        print(f"hwnas-export: note: {line}", file=sys.stderr)
    if args.select:
        try:
            idx = [int(s) for s in args.select.split(",") if s.strip()]
        except ValueError:
            raise ExportError(f"--select {args.select!r} must be comma-separated integers such as 0,3,7") from None
        out_of = [i for i in idx if not 0 <= i < len(items)]
        if out_of:
            raise ExportError(f"--select {args.select}: {out_of} out of range; the front has {len(items)} archs "
                              f"(0..{len(items) - 1}; e.g. --select 0,{len(items) - 1})")
        items = [items[i] for i in idx]
    if args.top is not None:
        check_int(args.top, "--top", 1, what="the first K archs of the front, fastest first", example=3, error=ExportError)
        items = items[: args.top]
    accuracy = args.accuracy
    if accuracy is not None and 1.0 < accuracy <= 100.0:  # a percentage: stored as the fraction searches store
        accuracy = accuracy / 100.0
    for it in items:
        if accuracy is not None:  # the user's value: not the search's, nothing to check it against
            it.accuracy, it.accuracy_weights = accuracy, None
        if args.latency is not None:
            it.latency = args.latency
        it.accuracy_kind = args.accuracy_kind or it.accuracy_kind
        it.latency_kind = args.latency_kind or it.latency_kind
    scores = [it for it in items if _not_top1(it.accuracy)]
    if scores:  # a search on a proxy score (zero-cost proxy, a loss, percent beyond 100): not a top-1 to write as one
        for it in scores:
            it.extra["search_score"], it.accuracy = float(it.accuracy), None
        print(f"hwnas-export: note: the search's accuracy values are not top-1 accuracies (e.g. {scores[0].extra['search_score']:g}: "
              "a proxy score?); each export records its value as search_score and the top-1 as unknown (--accuracy "
              "sets one)", file=sys.stderr)
    out = _out_dir(args.source, args.out)
    weights = load_weights_source(space, args.checkpoint, mirror=args.mirror)
    if not weights.trained:
        print("hwnas-export: warning: no --checkpoint given; exporting UNTRAINED (randomly initialised) weights",
              file=sys.stderr)
    elif args.no_calib and not args.calib_data:
        print("hwnas-export: warning: --no-calib: BN statistics are the supernet's, NOT re-calibrated (flagged in every file)",
              file=sys.stderr)
    best = select == "best" and any(it.name.startswith("budget") for it in items)
    print(f"hwnas-export: {len(items)} arch(s){' (the best of each latency budget; --all for the front)' if best else ''} "
          f"-> {out}", file=sys.stderr)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit="arch", desc="export", file=sys.stderr, dynamic_ncols=True)
    counts = {"exported": 0, "skipped": 0}
    t0 = time.perf_counter()

    def progress(i: int, n: int, path: Path, skipped: bool) -> None:
        counts["skipped" if skipped else "exported"] += 1
        line = f"[{i}/{n}] {path}" + ("  (already exported, skipped)" if skipped else "")
        if bar is not None:
            bar.update(1)
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    try:
        export_many(space, items, out, weights=weights, formats=formats, overwrite=args.overwrite, opset=opset,
                    progress=progress, calib_data=args.calib_data, calib_images=args.calib_images,
                    allow_uncalibrated=args.no_calib, note=lambda line: print(f"hwnas-export: note: {line}", file=sys.stderr))
    finally:
        if bar is not None:
            bar.close()
    print(f"exported {counts['exported']} arch(s), skipped {counts['skipped']} already exported, to {out} "
          f"in {time.perf_counter() - t0:.1f} s (index: {out / 'index.json'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
