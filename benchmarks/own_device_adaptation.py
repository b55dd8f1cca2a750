"""Adaptation to a device no dataset holds: this machine's CPU (or any device you measured).

    python benchmarks/own_device_adaptation.py                    # measure 100 OFA-MBv3 subnets here (~2 min), then score
    python benchmarks/own_device_adaptation.py --csv local.csv    # score a CSV you measured (arch + one latency column)

The device is measured with ``hwnas-measure`` (ONNX Runtime, 1 thread, process CPU clock) unless ``--csv``
is given. The proxy is the default of ``latency=adapted``: a per-position linear predictor of the
``2080ti_1`` column of the OFA-MBv3 dataset; the device library is every device of that dataset (all
GPUs: this CPU is in none of its families). For each K and seed, K of the measured archs are the target
samples (random, or the default selection ``auto``: k-means on this space) and the SRCC is taken over
the *other* archs. Printed beside it: the proxy predictor, MACs (the same held-out archs), and the one-proxy prior
(``bayes-nolib``). Nothing here was tuned on this device: it is scored after the method was fixed on the
design fold of ``benchmarks/proxy_adaptation.py``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)


def measure(n: int, seed: int, out: Path) -> Path:
    csv_path = out / "local.csv"
    cmd = [sys.executable, "-m", "hwnas.predictors.measure.cli", "--space", "ofa_mbv3_w12", "-n", str(n), "--seed", str(seed), "--resolutions", "160", "176", "192",
           "208", "224", "--processes", "1", "--repeats", "7", "--warmup", "3", "--clock", "cpu",
           "--store", str(out / "m.sqlite"), "--out", str(csv_path)]
    print("measuring:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return csv_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=None, help="measured archs: a CSV with an 'arch' column and one latency column (ms)")
    ap.add_argument("-n", type=at_least(3), default=100, help="archs to measure when no --csv is given")
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--seeds", type=at_least(1), default=10)
    ap.add_argument("--proxy", default="2080ti_1")
    ap.add_argument("--mirror", default=None)
    args = ap.parse_args(argv)
    mirror = args.mirror or os.environ.get("HWNAS_ASSETS_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    os.environ["HWNAS_ASSETS_MIRROR"] = mirror

    from hwnas.predictors.adapt import DeviceLibrary, adapt, select_samples
    from hwnas.predictors.data import load_dataset
    from hwnas.predictors.linear import LinearLatencyPredictor
    from hwnas.predictors.metrics import srcc

    from hwnas.predictors.build import apply_assets

    apply_assets({"assets": {"mirror": mirror}})  # a wrong mirror is one line before anything is measured
    ds = load_dataset("ofa_mbv3")  # (read before measuring: its absence must not waste the measurements)
    space = ds.space
    if args.csv and not Path(args.csv).is_file():
        raise OSError(f"--csv {args.csv} does not exist; give a CSV with an 'arch' column and one latency column (ms)")
    if not args.csv:
        out = Path(tempfile.mkdtemp(prefix="hwnas-own-"))
        print(f"measuring into {out} (the CSV and the store stay there)", flush=True)
    path = Path(args.csv) if args.csv else measure(args.n, 0, out)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    col = [c for c in rows[0] if c != "arch"][0]
    archs = [space.validate(r["arch"]) for r in rows]  # (compact strings or JSON: validate reads both)
    y = np.array([float(r[col]) for r in rows])
    proxy = LinearLatencyPredictor(space).fit(ds.archs, ds[args.proxy])
    lib = DeviceLibrary.from_dataset(ds)
    macs = np.array([space.macs(a) for a in archs], dtype=float)
    p_all = np.asarray(proxy.predict(archs), dtype=float)
    print(f"\n### device {col!r}: {len(archs)} OFA-MBv3 subnets from {path}, latency {y.min():.2f}-{y.max():.2f} ms; "
          f"proxy {args.proxy}; library: {len(lib)} devices of the OFA-MBv3 dataset\n")
    ks = [int(k) for k in args.ks.split(",")]
    print("| selection | K | proxy predictor | MACs | bayes (library) | bayes-nolib (one proxy) |")
    print("|---|---|---|---|---|---|")
    t0 = time.time()
    for sel in ("random", "auto"):
        for K in ks:
            cells = {"pred": [], "macs": [], "bayes": [], "nolib": []}
            for s in range(args.seeds):
                if sel == "random":
                    pick = np.random.default_rng(s).choice(len(archs), K, replace=False)
                else:
                    pick = np.asarray(select_samples(space, archs, K, sel, rng=s, proxy=proxy))
                rest = np.setdiff1d(np.arange(len(archs)), pick)
                tr, ta = y[rest], [archs[i] for i in rest]
                cells["pred"].append(srcc(p_all[rest], tr))
                cells["macs"].append(srcc(macs[rest], tr))
                for name, L in (("bayes", lib), ("nolib", None)):
                    m = adapt(proxy, [archs[i] for i in pick], y[pick], library=L)
                    cells[name].append(srcc(m.predict(ta), tr))
            fmt = {k: f"{np.mean(v):.3f} [{np.min(v):.2f}]" for k, v in cells.items()}
            print(f"| {sel} | {K} | {fmt['pred']} | {fmt['macs']} | {fmt['bayes']} | {fmt['nolib']} |   ({time.time() - t0:.0f} s)",
                  flush=True)
    print("\nmean [worst] SRCC over seeds, each over the archs that were not samples")
    return 0


if __name__ == "__main__":
    from _cli import run

    run(main)
