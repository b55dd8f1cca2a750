"""Latency monotonicity between devices: the Spearman rank correlation (SRCC) of the same archs'
latencies on every pair of devices. High SRCC = one device can stand in for the other in a search.

    hwnas-monotonicity --dataset nasbench201 --out runs/mono
    hwnas-monotonicity --dataset my_measurements.csv --devices pixel3,raspi4,gold_6226 --out runs/mono

writes ``<out>/<name>_srcc.csv`` (device x device) and ``<out>/<name>_srcc.png`` (heatmap).

The dataset needs at least two devices and three archs; a repeated arch row, a value that is not a
positive number (negative, zero, ``nan``, ``inf``) and a repeated device column are refused, naming the
file and line. An empty cell is a missing measurement: each pair of devices uses the archs both have.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from hwnas.spaces.errors import UserError, cli_errors

from .assets import atomic_path, atomic_write, remove_stale_temps
from .metrics import srcc  # noqa: F401  (re-exported: the pipeline and lut_build use it from here)


PROG = "hwnas-monotonicity"


class MonotonicityError(UserError, ValueError):
    """A dataset or option that gives no meaningful SRCC; the message names the file or option and the fix."""


def _read_rows(path: Path) -> list[list[str]]:
    """The rows of a local dataset file, as text; a binary or unreadable file is one error naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except UnicodeDecodeError:
        raise MonotonicityError(f"dataset {path} is not a text CSV file (it holds bytes that are not UTF-8 text); "
                                "give a latency CSV (a header 'arch,<device>,...' and one row per arch)") from None
    except csv.Error as exc:
        raise MonotonicityError(f"dataset {path} is not a CSV file ({exc}); give a latency CSV") from None


def check_dataset(ds, devices: Sequence[str], path: Path | None = None, rows: list[list[str]] | None = None) -> None:
    """At least two devices and three archs; no repeated arch row; every value of ``devices`` a positive
    finite number or an empty cell (``rows``: the file's text rows, to tell an empty cell from ``nan``);
    at least three archs with values on both devices of every pair. Else one :class:`MonotonicityError`."""
    where = str(path) if path is not None else f"dataset {ds.name!r}"
    if len(devices) < 2:
        raise MonotonicityError(f"{where}: SRCC compares devices, and there is {len(devices)} ({list(devices)}); "
                                "give a dataset with at least 2 device columns, or name at least 2 with --devices A,B")
    if len(ds) < 3:
        raise MonotonicityError(f"{where} has {len(ds)} arch(s); a rank correlation needs at least 3")
    first: dict = {}
    for i, a in enumerate(ds.archs):
        if a in first:
            raise MonotonicityError(f"{where} line {i + 2}: the arch of line {first[a] + 2} again; keep one row per arch")
        first[a] = i
    header = [h.strip() for h in rows[0]] if rows else []
    for d in devices:
        v = ds.latency(d)
        bad = ~(v > 0) & ~np.isnan(v) | np.isinf(v)
        if rows is not None and d in header:  # a NaN written as text, not an empty cell
            j = header.index(d)
            bad |= np.array([np.isnan(x) and len(r) > j and r[j].strip() != "" for x, r in zip(v, rows[1:])], dtype=bool)
        elif rows is None:
            bad |= np.isnan(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MonotonicityError(f"{where} line {i + 2}: device {d!r} has {float(v[i])!r}; latencies must be positive "
                                    "numbers (leave the cell empty where a device has no measurement)")
    for x in range(len(devices)):
        for y in range(x + 1, len(devices)):
            both = int((np.isfinite(ds.latency(devices[x])) & np.isfinite(ds.latency(devices[y]))).sum())
            if both < 3:
                raise MonotonicityError(f"{where}: devices {devices[x]!r} and {devices[y]!r} have {both} arch(s) measured "
                                        "on both; a rank correlation needs at least 3")


def srcc_matrix(table: dict[str, np.ndarray] | np.ndarray, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """SRCC between every pair of columns (pairwise complete: rows with NaN in either are dropped)."""
    if isinstance(table, dict):
        devices = list(devices or table)
        M = np.stack([np.asarray(table[d], dtype=float) for d in devices], axis=1)
    else:
        M = np.asarray(table, dtype=float)
        devices = list(devices or [str(i) for i in range(M.shape[1])])
    n = M.shape[1]
    S = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            ok = np.isfinite(M[:, i]) & np.isfinite(M[:, j])
            S[i, j] = S[j, i] = srcc(M[ok, i], M[ok, j])
    return pd.DataFrame(S, index=devices, columns=devices)


def cell_label(v: float) -> str:
    """A short SRCC label without the leading zero that never rounds below 1 up to "1": 0.5 -> ".50",
    0.996 -> ".996", 0.9996 -> ">.999", 1 -> "1", -0.12 -> "-.12"."""
    if v >= 1.0:
        return "1"
    text = f"{v:.2f}"
    if text == "1.00":
        text = f"{v:.3f}" if v < 0.9995 else ">0.999"
    return text.replace("0.", ".", 1)


def plot_heatmap(S: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(S)
    fig, ax = plt.subplots(figsize=(0.38 * n + 2.5, 0.38 * n + 2))
    im = ax.imshow(S.values, vmin=min(0.0, float(np.nanmin(S.values))), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), S.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), S.index, fontsize=7)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                v = S.values[i, j]
                if np.isfinite(v):
                    ax.text(j, i, cell_label(v), ha="center", va="center", fontsize=5,
                            color="white" if v < 0.7 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="SRCC")
    ax.set_title(title or "latency SRCC between devices", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return path


def monotonicity(dataset: str, out: str | os.PathLike, devices: Sequence[str] | None = None, space: str | None = None) -> tuple[pd.DataFrame, Path, Path]:
    """Compute, write and plot the SRCC matrix of a latency dataset; returns (matrix, csv path, png path)."""
    from .data import BUILTIN, load_dataset

    local = Path(str(dataset)).expanduser() if str(dataset) not in BUILTIN else None
    rows = None
    if local is not None and local.is_file():
        rows = _read_rows(local)  # before the reader, which would not name the file of a binary
        header = [h.strip() for h in rows[0]] if rows else []
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:
            raise MonotonicityError(f"dataset {local}: column {twice[0]!r} appears {header.count(twice[0])} times in the "
                                    "header; give each device column its own name")
    ds = load_dataset(dataset, space=space)
    devs = list(devices) if devices is not None else ds.devices
    if len(set(devs)) < len(devs):
        raise MonotonicityError(f"--devices {','.join(devs)} names a device twice; name each once")
    for d in devs:
        ds.latency(d)  # clear error for unknown devices
    from .measure.plan import is_plan

    plan = local is not None and local.is_file() and is_plan(local)
    check_dataset(ds, devs, local, None if plan else rows)
    S = srcc_matrix(ds.table, devs)
    name = ds.name or Path(str(dataset)).stem
    out = Path(out)
    if out.is_dir():
        remove_stale_temps(out)  # what a killed run left half-written
    csv_path = out / f"{name}_srcc.csv"
    atomic_write(csv_path, S.to_csv(float_format="%.4f"))
    png = plot_heatmap(S, out / f"{name}_srcc.png", f"{name}: latency SRCC between devices ({len(ds)} archs)")
    return S, csv_path, png


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hwnas-monotonicity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", "-d", required=True, help="builtin (nasbench201, fbnet, ofa_mbv3) or a latency CSV")
    ap.add_argument("--out", "-o", default="monotonicity", help="output directory (default: ./monotonicity)")
    ap.add_argument("--devices", default="", help="comma-separated subset of device columns")
    ap.add_argument("--space", default=None, help="space name when it cannot be guessed from the CSV")
    ap.add_argument("--mirror", default=None, help="assets mirror directory holding latency/*.csv")
    args = ap.parse_args(argv)
    try:
        with cli_errors(PROG):  # (user errors: one line, exit 2; Ctrl-C / SIGTERM: one line, 130 / 143)
            S, csv_path, png = _run(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    off = S.values[~np.eye(len(S), dtype=bool)]
    print(f"{len(S)} devices; off-diagonal SRCC min {np.nanmin(off):.3f} median {np.nanmedian(off):.3f}")
    print(f"wrote {csv_path}\nwrote {png}")
    return 0


def _run(args: argparse.Namespace) -> tuple:
    try:
        if args.mirror is not None:
            from .build import ConfigError, apply_assets

            try:  # the check of hwnas-search's assets.mirror
                apply_assets({"assets": {"mirror": args.mirror or None}})
            except ConfigError as exc:
                raise MonotonicityError(str(exc).replace("assets.mirror=", "--mirror ")) from None
        devs = None
        if args.devices.strip():
            devs = [d.strip() for d in args.devices.split(",")]
            if not all(devs):
                raise MonotonicityError(f"--devices {args.devices!r} has an empty name; give comma-separated device "
                                        "columns such as --devices pixel3,raspi4 (or leave it out for all)")
        return monotonicity(args.dataset, args.out, devs, args.space)
    except ValueError as exc:  # (a plain ValueError of the data: one line as a user error)
        if isinstance(exc, UserError):
            raise
        raise MonotonicityError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
