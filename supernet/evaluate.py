"""Evaluate subnets of an OFA supernet on an ImageFolder dataset (BN re-calibration + top-1/top-5).

    python -m hwnas.supernet.evaluate --space ofa_mbv3_w12 --data /datasets/imagenet \\
        --arch 'r224:k7e6.k7e6.k7e6.k7e6/...' --n-calib 2000 --n-val 50000
    python -m hwnas.supernet.evaluate --space ofa_mbv3_w10 --data /datasets/imagenet --random 20 --out acc.csv

``--checkpoint`` defaults to the official OFA supernet of the space (fetched as asset
``ofa/ofa_nets/<name>``); ``--arch`` takes compact strings or JSON and may be repeated; ``--random N``
evaluates N random subnets (e.g. to build an accuracy-predictor training set). Results are printed and,
with ``--out``, written atomically as CSV (arch JSON, compact string, top1, top5, loss, n).
"""

from __future__ import annotations

import argparse
import csv
import io
from typing import Sequence

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.spaces import create_space
from hwnas.spaces.base import SpaceError

from hwnas.spaces.errors import cli_errors

from .accuracy import SupernetAccuracy

PROG = "python -m hwnas.supernet.evaluate"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="ofa_mbv3_w12")
    p.add_argument("--checkpoint", default="auto")
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--arch", action="append", default=[], help="compact string or JSON; repeatable")
    p.add_argument("--random", type=int, default=0, help="also evaluate N random subnets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-calib", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=None, help="validation images (default: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default=None)
    p.add_argument("--cache", default=None, help="SQLite cache of results")
    p.add_argument("--mirror", default=None, help="assets mirror folder")
    p.add_argument("--out", default=None, help="CSV file of results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with cli_errors(PROG):
        space = create_space(args.space)
        archs = [space.validate(a) for a in args.arch]
        if args.random:
            archs += space.sample(args.random, np.random.default_rng(args.seed))
        if not archs:
            raise SpaceError("no arch given; pass --arch '<compact string or JSON>' and/or --random N")
        acc = SupernetAccuracy(
            space, checkpoint=None if args.checkpoint in ("none", "") else args.checkpoint, data=args.data,
            n_calib=args.n_calib, n_val=args.n_val, batch_size=args.batch_size, device=args.device,
            cache=args.cache, seed=args.seed, num_workers=args.workers, progress=True, mirror=args.mirror,
        )
        rows = []
        for a in archs:
            res = acc.evaluate(a)
            rows.append((a.to_json(), a.to_str(), res["top1"], res["top5"], res["loss"], res["n"]))
            print(f"{a.to_str()}  top1={res['top1'] * 100:.2f}%  top5={res['top5'] * 100:.2f}%  (n={res['n']})", flush=True)
        if args.out:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["arch", "arch_str", "top1", "top5", "loss", "n"])
            w.writerows(rows)
            atomic_write(args.out, buf.getvalue())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
