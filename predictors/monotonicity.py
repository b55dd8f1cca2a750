"""Latency monotonicity between devices: the Spearman rank correlation (SRCC) of the same archs'
latencies on every pair of devices. High SRCC = one device can stand in for the other in a search.

    hwnas-monotonicity --dataset nasbench201 --out runs/mono
    hwnas-monotonicity --dataset my_measurements.csv --devices pixel3,raspi4,gold_6226 --out runs/mono

writes ``<out>/<name>_srcc.csv`` (device x device) and ``<out>/<name>_srcc.png`` (heatmap).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from hwnas.spaces.errors import UserError, error_line

from .assets import atomic_path, atomic_write
from .metrics import srcc  # noqa: F401  (re-exported: the pipeline and lut_build use it from here)


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
    from .data import load_dataset

    ds = load_dataset(dataset, space=space)
    devs = list(devices) if devices else ds.devices
    for d in devs:
        ds.latency(d)  # clear error for unknown devices
    S = srcc_matrix(ds.table, devs)
    name = ds.name or Path(str(dataset)).stem
    out = Path(out)
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
    if args.mirror:
        from .assets import set_default_mirror

        set_default_mirror(args.mirror)
    devs = [d.strip() for d in args.devices.split(",") if d.strip()] or None
    try:
        S, csv_path, png = monotonicity(args.dataset, args.out, devs, args.space)
    except (UserError, ValueError, OSError) as exc:
        print(error_line("hwnas-monotonicity", exc), file=sys.stderr)
        return 2
    off = S.values[~np.eye(len(S), dtype=bool)]
    print(f"{len(S)} devices; off-diagonal SRCC min {np.nanmin(off):.3f} median {np.nanmedian(off):.3f}")
    print(f"wrote {csv_path}\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
