"""hwnas-pipeline on the NAS-Bench-201 latency data: proxy pixel3 -> hard targets.

For every target and K, the full pipeline (K k-means samples "measured" = looked up in the dataset,
monotonicity check, adaptation, space reduction, NSGA-II, re-measuring the front) and the final front's
hypervolume on the target's TRUE latency divided by the hypervolume of the true front of all 15,625
archs (same accuracy source, same reference point). Variants: ``proxy`` (proxy scaled on the K samples,
never adapted), ``adapted`` (the pipeline's decision), ``adapted, full space`` (no reduction).

    python benchmarks/pipeline_demo.py --mirror ../shared/data [--targets titan_rtx_1 2080ti_1] [--k 10 20]

Accuracy: CapacityAccuracy (log parameter count) -- a capacity proxy, not accuracy (no NB201 accuracy in
the reference data). Anchor: the true front of the full target data (ratio 1.0).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--targets", nargs="+", default=["titan_rtx_1", "2080ti_1", "titanxp_1", "samsung_s7", "eyeriss"])
    ap.add_argument("--k", nargs="+", type=at_least(3), default=[10, 20])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    from hydra import compose, initialize_config_module

    from hwnas.search.pipeline import run_pipeline

    variants = {"proxy": ["adapt.threshold=-1", "adapt.confidence=null"], "adapted": [],
                "adapted, space reduced": ["reduce.apply=true"]}
    out = Path(args.out or tempfile.mkdtemp(prefix="pipeline_demo_"))
    print(f"runs in {out}")
    print("| target | K | variant | SRCC proxy (full) | SRCC used (full) | decision | target meas. | final front | HV ratio | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with initialize_config_module("hwnas.conf", version_base="1.3"):
        for t in args.targets:
            for k in args.k:
                for seed in args.seeds:
                    for name, extra in variants.items():
                        cfg = compose("pipeline_nasbench201", overrides=[f"target.device={t}", f"samples.k={k}", f"seed={seed}",
                                                             f"search.seed={seed}", f"assets.mirror={args.mirror}",
                                                             "search.verbose=false", *extra])
                        t0 = time.perf_counter()
                        s = run_pipeline(cfg, out / f"{t}_k{k}_s{seed}_{name.replace(', ', '_').replace(' ', '_')}")
                        a, ev = s["adapt"], s["evaluation"]
                        used = a["eval_srcc_adapted_full"]
                        print(f"| {t} | {k} | {name} | {a['eval_srcc_proxy_full']:.3f} | {used:.3f} | {a['decision']} | "
                              f"{s['target_measurements']} | {s['final_size']} | {ev['hv_ratio']:.4f} | {time.perf_counter() - t0:.0f} |",
                              flush=True)


if __name__ == "__main__":
    from _cli import run

    run(main)
