"""Search benchmark: predictor throughput and one NSGA-II run (+ front refinement) covering the Note10
budgets 15/20/25/30 ms, against OFA's official single-objective evolutionary search with the same two
files (population 100, 500 generations, one run per budget: 78.54 / 80.65 / 81.81 / 82.44 % predicted
top-1, 44 s for the four budgets on the reference 2-core machine).

    python benchmarks/search_benchmark.py --mirror ../shared/data --seeds 5

Prints markdown tables. "wall" is elapsed time, "cpu" the process CPU time of the search (the search
runs its predictors on one thread, so on an idle machine wall ~= cpu; on a shared one wall is larger).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ANCHOR_ACC = {15.0: 78.54, 20.0: 80.65, 25.0: 81.81, 30.0: 82.44}
ANCHOR_TIME_S = 44.0
NOTE10_RES = [160, 176, 192, 208, 224]


def throughput(pred, space, n: int, repeats: int = 3, threads: int = 1) -> float:
    from hwnas.search.nsga import limit_threads

    G = space.sample_genomes(n, 0)
    best = float("inf")
    with limit_threads(threads):
        pred.predict(space.batch(G[:64]))  # warm-up
        for _ in range(repeats):
            batch = space.batch(G)  # fresh batch: decode is part of the cost
            t = time.perf_counter()
            pred.predict(batch)
            best = min(best, time.perf_counter() - t)
    return n / best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_mirror = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    ap.add_argument("--mirror", default=os.environ.get("HWNAS_ASSETS_MIRROR") or str(default_mirror))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pop-size", type=int, default=100)
    ap.add_argument("--n-gen", type=int, default=40)
    ap.add_argument("--refine", type=int, default=20)
    ap.add_argument("--refine-members", type=int, default=60)
    ap.add_argument("--refine-moves", default="grid")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain NSGA-II (no refinement) rows")
    args = ap.parse_args(argv)

    from hwnas.predictors.assets import set_default_mirror
    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    set_default_mirror(args.mirror)
    space = create_space("ofa_mbv3_w12", resolutions=NOTE10_RES)
    t = time.perf_counter()
    acc = OFAAccuracyPredictor(space=space)
    t_acc = time.perf_counter() - t
    t = time.perf_counter()
    lat = LookupTableLatency(space, tables="ofa/note10/{r}_lookup_table.yaml")
    t_lat = time.perf_counter() - t

    print("## Predictor throughput (batched ArchBatch, 1 thread)\n")
    print("| predictor | load (s) | archs/s @100 | archs/s @10k |")
    print("|---|---|---|---|")
    for name, p, tl in (("OFA accuracy MLP", acc, t_acc), ("Note10 LUT", lat, t_lat)):
        print(f"| {name} | {tl:.2f} | {throughput(p, space, 100, 20):,.0f} | {throughput(p, space, 10_000):,.0f} |")

    budgets = sorted(ANCHOR_ACC)
    configs = [("NSGA-II + refine", dict(refine=args.refine, refine_members=args.refine_members, refine_moves=args.refine_moves))]
    if not args.no_plain:
        configs.append(("plain NSGA-II", dict(refine=0)))
    print(f"\n## One search, all four budgets (ofa_mbv3_w12, Note10 LUT, OFA predictor; pop {args.pop_size}, {args.n_gen} gens)\n")
    head = "| run | seed | evals | wall (s) | cpu (s) | " + " | ".join(f"@{b:g} ms" for b in budgets) + " | hv |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("| OFA evolution (anchor) | - | 4 x 50,000 | 44.0 | - | " + " | ".join(f"{ANCHOR_ACC[b]:.2f}" for b in budgets) + " | - |")
    summary = {}
    for name, extra in configs:
        rows = []
        for seed in range(args.seeds):
            res = run_search(
                space, acc, lat, pop_size=args.pop_size, n_gen=args.n_gen, seed=seed, budgets=budgets,
                hv_ref=(0.70, 30.0), verbose=False, **extra,
            )
            best = [100 * res.best_under(b)[1] for b in budgets]
            rows.append([res.n_evals, res.wall_time, res.timings["cpu_s"], *best, res.hypervolume])
            print(f"| {name} | {seed} | {res.n_evals:,} | {res.wall_time:.2f} | {res.timings['cpu_s']:.2f} | "
                  + " | ".join(f"{v:.2f}" for v in best) + f" | {res.hypervolume:.4f} |", flush=True)
        summary[name] = np.array(rows)

    print("\n## Ours vs anchor (mean over seeds; worst seed in brackets)\n")
    print("| run | wall (s) | cpu (s) | time ratio anchor/ours (wall) | " + " | ".join(f"@{b:g}: ours - anchor (pp)" for b in budgets) + " | beats anchor at all budgets |")
    print("|" + "---|" * (5 + len(budgets)))
    for name, R in summary.items():
        m = R.mean(0)
        acc_cols = R[:, 3 : 3 + len(budgets)]
        diffs = acc_cols - np.array([ANCHOR_ACC[b] for b in budgets])
        cells = [f"{diffs[:, i].mean():+.2f} [{diffs[:, i].min():+.2f}]" for i in range(len(budgets))]
        wins = int((diffs >= 0).all(1).sum())
        print(f"| {name} | {m[1]:.2f} | {m[2]:.2f} | {ANCHOR_TIME_S / m[1]:.1f}x | " + " | ".join(cells) + f" | {wins}/{len(R)} seeds |")


if __name__ == "__main__":
    main()
