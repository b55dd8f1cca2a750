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
import os
import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.spaces import create_space
from hwnas.spaces.base import SearchSpace, SpaceError
from hwnas.spaces.checks import check_int

from hwnas.spaces.errors import UserError, cli_errors, os_error_message, writable_dir

from .accuracy import SupernetAccuracy
from .data import check_loader_settings, loader_workers

PROG = "python -m hwnas.supernet.evaluate"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=None,
                   help="space name (default: the space an hwnas-train checkpoint records, else ofa_mbv3_w12)")
    p.add_argument("--checkpoint", default="auto")
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--arch", action="append", default=[], help="compact string or JSON; repeatable")
    p.add_argument("--random", type=int, default=0, help="also evaluate N random subnets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-calib", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=None, help="validation images (default: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=None,
                   help="loader worker processes (default: one per CPU this process may use, at most 4)")
    p.add_argument("--device", default=None)
    p.add_argument("--cache", default=None, help="SQLite cache of results")
    p.add_argument("--mirror", default=None, help="assets mirror folder")
    p.add_argument("--out", default=None, help="CSV file of results")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before any work (no image read, no supernet loaded): a bad one is one
    :class:`~hwnas.spaces.errors.UserError` naming the option and the fix (they used to surface as a
    ZeroDivisionError, an AssertionError deep in torch, an sqlite3 traceback, or -- ``--out`` a folder --
    only after the whole evaluation)."""
    from .train import check_device

    args.workers = loader_workers(args.workers, most=4)  # (4 on a 2-CPU machine made torch warn at every loader)
    check_int(args.random, "--random", 0, what="a number of random subnets", example=100)
    check_loader_settings({"n_calib": "--n-calib", "n_val": "--n-val", "batch_size": "--batch-size", "seed": "--seed",
                           "num_workers": "--workers"}, n_calib=args.n_calib, n_val=args.n_val,
                          batch_size=args.batch_size, seed=args.seed, num_workers=args.workers)
    check_device(args.device, "--device")
    if args.out:
        _check_out(Path(args.out).expanduser())
    if args.cache:
        _check_cache(Path(args.cache).expanduser())


def _check_out(p: Path) -> None:
    """``--out``: a CSV file path whose folder can be written (the folder is created if missing)."""
    if p.is_dir():
        raise UserError(f"--out {p} is a folder; give a CSV file path (e.g. --out {p / 'accuracy.csv'})")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"--out {p} is not writable; give another file")
    writable_dir(p.parent, "--out folder")


def _check_cache(p: Path) -> None:
    """``--cache``: an SQLite file this command wrote before, or a new file in a writable folder."""
    if p.is_dir():
        raise UserError(f"--cache {p} is a folder; give an SQLite file path (created if missing)")
    if not p.exists():
        writable_dir(p.parent, "--cache folder")
        return
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UserError(f"--cache {p} cannot be read: {os_error_message(exc)}") from None
    if head and head != b"SQLite format 3\x00":
        raise UserError(f"--cache {p} is not an SQLite file (not an accuracy cache of this command); it was left "
                        "untouched: give another file")
    if not os.access(p, os.W_OK):
        raise UserError(f"--cache {p} is not writable; give another file")


def evaluated_space(name: str | None, checkpoint: str | None) -> SearchSpace:
    """The space to evaluate: the one an ``hwnas-train`` checkpoint records (its width and resolutions, which
    a space name alone cannot say), else ``name`` (default ``ofa_mbv3_w12``). A name given for a checkpoint
    of another space is one error naming both."""
    from hwnas.spaces.io import space_from_spec

    from .checkpoint import describe_spec, recorded_space

    spec = recorded_space(checkpoint) if checkpoint not in (None, "", "none", "auto") else None
    if spec is None:
        return create_space(name or "ofa_mbv3_w12")
    recorded = space_from_spec(spec, f"checkpoint {checkpoint}")
    if name is not None and name != spec["space"]:
        raise UserError(f"--space {name}: checkpoint {checkpoint} was trained for space {describe_spec(spec)}; leave out "
                        "--space to evaluate it in its own space")
    return recorded


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with cli_errors(PROG, extra=(sqlite3.DatabaseError,)):  # (a cache with an SQLite header but broken inside)
        check_args(args)
        space = evaluated_space(args.space, args.checkpoint)
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
            top5 = f"{res['top5'] * 100:.2f}%" if acc.data.train.n_classes > 5 else f"n/a ({acc.data.train.n_classes} classes)"
            print(f"{a.to_str()}  top1={res['top1'] * 100:.2f}%  top5={top5}  (n={res['n']})", flush=True)
        if args.out:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["arch", "arch_str", "top1", "top5", "loss", "n"])
            w.writerows(rows)
            atomic_write(args.out, buf.getvalue())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
