"""How reproducible and how costly is measuring latency on this (shared, noisy) machine?

Sections (each prints the 1-min load average before/after, since other programs share the CPUs):

1. test-retest of the default protocol (ONNX Runtime, 1 thread, CPU clock, 3 processes x 10 calls,
   median, outliers re-measured) on ``--n`` random OFA-MBv3 subnets: two independent runs (fresh
   exports, fresh worker processes), Spearman SRCC between them, relative differences, s/arch;
2. the same on ``--variants-n`` subnets for: ORT with the wall clock, torch eager (wall clock and CPU
   clock), and a naive single-process ORT timing (1 process, wall clock) — what the protocol buys;
3. a lookup table of this machine built by timing every distinct layer (``--lut-res`` resolutions),
   SRCC of LUT sums vs end-to-end latency on ``--lut-n`` subnets (MACs as the anchor).

Anchors (from the task notes on this machine): torch eager varies 20-40 % run to run; ORT with one
pinned thread, median over several processes, is within about +-5 %.

    python benchmarks/measure_protocol.py                 # defaults: < ~15 min on 2 idle cores
    python benchmarks/measure_protocol.py --n 200 --variants-n 40 --lut-n 100 --lut-res 160 176 192 208 224
    python benchmarks/measure_protocol.py --quick         # smoke run (a few archs)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from scipy.stats import spearmanr

from hwnas.predictors.measure import MeasureConfig, measure_archs
from hwnas.spaces import create_space


def load() -> float:
    return os.getloadavg()[0]


def run_twice(space, archs, cfg, label):
    vals, cost, loads, unstable = [], [], [], 0
    for rep in range(2):
        l0 = load()
        t = time.perf_counter()
        ms = measure_archs(space, archs, cfg.replace(seed=cfg.seed + 17 * rep))
        cost.append((time.perf_counter() - t) / len(archs))
        loads.append((l0, load()))
        vals.append(np.array([m.ms for m in ms]))
        unstable += sum(not m.stable for m in ms)
        print(f"  [{label}] run {rep + 1}: {cost[-1]:.2f} s/arch, load {l0:.1f} -> {load():.1f}", flush=True)
    a, b = vals
    rel = np.abs(a - b) / ((a + b) / 2)
    return {
        "label": label,
        "n": len(archs),
        "srcc": float(spearmanr(a, b).correlation),
        "med_rel": float(np.median(rel)),
        "p90_rel": float(np.quantile(rel, 0.9)),
        "s_arch": float(np.mean(cost)),
        "unstable": unstable / (2 * len(archs)),
        "load": max(max(x) for x in loads),
        "median_ms": float(np.median(np.concatenate(vals))),
        "vals": vals,
    }


def row_text(r: dict) -> str:
    return (f"| {r['label']} | {r['n']} | {r['srcc']:.4f} | {100 * r['med_rel']:.1f} % | {100 * r['p90_rel']:.1f} % | "
            f"{100 * r['unstable']:.0f} % | {r['median_ms']:.2f} | {r['s_arch']:.2f} | {r['load']:.1f} |")


def print_row(r: dict) -> None:
    print("  " + row_text(r), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="ofa_mbv3_w12")
    ap.add_argument("--n", type=int, default=100, help="subnets for the default protocol's test-retest (default 100)")
    ap.add_argument("--variants-n", type=int, default=10, help="subnets for the other protocols (default 10; 0 skips)")
    ap.add_argument("--lut-n", type=int, default=40, help="subnets for LUT-sum vs end-to-end (default 40; 0 skips)")
    ap.add_argument("--lut-res", type=int, nargs="+", default=[160, 224], help="resolutions of the LUT section")
    ap.add_argument("--pin", default=None, help="pin workers ('1', 'auto'); default: not pinned")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 archs, 4 per variant, 6 for the LUT at one resolution")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.variants_n, args.lut_n, args.lut_res = 8, 4, 6, [160]

    space = create_space(args.space)
    print(f"# measure_protocol: {args.space}, {os.cpu_count()} CPUs, load average at start {os.getloadavg()}", flush=True)
    base = MeasureConfig(pin=args.pin, seed=args.seed)
    rows = []
    t_all = time.perf_counter()

    archs = space.sample(args.n, args.seed)
    print(f"1. default protocol on {len(archs)} subnets (r {min(a.r for a in archs)}..{max(a.r for a in archs)})", flush=True)
    rows.append(run_twice(space, archs, base, "ORT 1t, CPU clock, 3 proc (default)"))
    print_row(rows[-1])

    if args.variants_n > 0:
        sub = archs[: args.variants_n]
        print(f"2. other protocols on {len(sub)} subnets", flush=True)
        variants = [
            ("ORT 1t, wall clock, 3 proc", base.replace(clock="wall")),
            ("ORT 1t, wall clock, 1 proc (naive)", base.replace(clock="wall", processes=1, max_extra=0)),
            ("torch eager 1t, CPU clock, 3 proc", base.replace(backend="torch", chunk=max(8, len(sub)))),
            ("torch eager 1t, wall clock, 3 proc", base.replace(backend="torch", clock="wall", chunk=max(8, len(sub)))),
        ]
        for label, cfg in variants:
            rows.append(run_twice(space, sub, cfg, label))
            print_row(rows[-1])
        # ORT vs eager: do the two backends rank subnets alike?
        ort, eager = rows[0]["vals"][0][: len(sub)], rows[3]["vals"][0]
        ort_vs_eager = float(spearmanr(ort, eager).correlation)
    else:
        ort_vs_eager = float("nan")

    print("\n## Test-retest (two independent runs of each protocol)\n")
    print("| protocol | archs | test-retest SRCC | median rel. diff | p90 rel. diff | unstable | median ms | s/arch | max load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(row_text(r))
    print("| anchor: torch eager on this machine | | | 20-40 % | | | | | |")
    print("| anchor: ORT 1 thread pinned, median of processes | | | ~5 % | | | | | |")
    if args.variants_n > 0:
        print(f"\nSRCC between backends (ORT default run 1 vs torch eager CPU-clock run 1, {len(sub)} subnets): {ort_vs_eager:.4f}")

    if args.lut_n > 0:
        from hwnas.predictors.measure.lut_build import build_lut, lut_vs_end_to_end

        print(f"\n3. lookup table of this machine at r={args.lut_res}", flush=True)
        sp = create_space(args.space, resolutions=args.lut_res)
        cfg_l = MeasureConfig(pin=args.pin, seed=args.seed, warmup=10, repeats=30, min_time_s=0.02, chunk=64)
        with tempfile.TemporaryDirectory() as d:
            l0, t = load(), time.perf_counter()
            from hwnas.predictors.measure.lut_build import distinct_layers

            n_layers = sum(len(v) for v in distinct_layers(sp, args.lut_res).values())
            build_lut(sp, d, config=cfg_l)
            t_lut = time.perf_counter() - t
            print(f"  {n_layers} layers timed in {t_lut:.0f} s ({t_lut / n_layers:.2f} s/layer), load {l0:.1f} -> {load():.1f}", flush=True)
            la = sp.sample(args.lut_n, args.seed + 1)
            t = time.perf_counter()
            e2e = np.array([m.ms for m in measure_archs(sp, la, base)])
            t_e2e = (time.perf_counter() - t) / len(la)
            res = lut_vs_end_to_end(sp, d, la, e2e)
        macs = np.array([sp.macs(a) for a in la], dtype=float)
        srcc_macs = float(spearmanr(macs, e2e).correlation)
        print(f"\n## Lookup table built locally vs end-to-end latency ({res['n']} subnets, r in {args.lut_res})\n")
        print("| predictor | SRCC vs measured end-to-end | note |")
        print("|---|---|---|")
        print(f"| LUT sum (this machine, {n_layers} layers, {t_lut:.0f} s to build) | {res['srcc']:.4f} | "
              f"Pearson {res['pearson']:.4f}, LUT sum / end-to-end = {res['sum_over_e2e']:.2f} |")
        print(f"| MACs (anchor) | {srcc_macs:.4f} | |")
        print(f"\nend-to-end measurement for this section: {t_e2e:.2f} s/arch")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    from _cli import run

    run(main)
