"""Proxy adaptation benchmark: SRCC over the whole dataset on each target device, before and after
adapting a proxy-device predictor with K target samples (mean and worst over seeds).

    python benchmarks/proxy_adaptation.py                       # all settings, 5 seeds (~ a few minutes)
    python benchmarks/proxy_adaptation.py --quick               # NB201 only, 3 seeds, K=10
    python benchmarks/proxy_adaptation.py --settings fbnet:pixel3 --ks 20 --seeds 10 --selection kmeans
    python benchmarks/proxy_adaptation.py --methods bayes,adaproxy,adaproxy_plain,multiproxy

Columns: ``true`` = SRCC of the proxy device's measured latency vs the target; ``pred`` = the
proxy-fitted linear predictor vs the target (the unadapted predictor); ``K=..`` = adapted predictor,
mean over seeds (worst seed in brackets). ``multiproxy`` uses linear predictors fitted on *all other*
devices of the file as sources (a many-device setting, not one proxy). Data: ``$HWNAS_ASSETS_MIRROR``
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

ANCHORS = {
    "nasbench201": "AdaProxy 60+10 samples: 0.87-0.99",
    "fbnet": "NASFLAT 20 samples: 0.58-0.96",
    "ofa_mbv3": "(no published anchor)",
}
SETTINGS = ["nasbench201:pixel3", "fbnet:pixel3", "fbnet:2080ti_1", "ofa_mbv3:2080ti_1"]


def _ranks(x):
    r = rankdata(x)
    return (r - r.mean()) / (r.std() + 1e-12)


def srcc_fast(pred, target_ranks):
    return float(np.mean(_ranks(pred) * target_ranks))


def run_setting(ds_name, proxy, ks, seeds, methods, selection, targets=None, out=print):
    from hwnas.predictors.adapt import adapt, select_samples
    from hwnas.predictors.data import load_dataset
    from hwnas.predictors.linear import LinearLatencyPredictor, latency_features

    ds = load_dataset(ds_name)
    archs = ds.archs
    space = ds.space
    X = latency_features(space, archs)  # warm the feature path once
    t0 = time.perf_counter()
    P = LinearLatencyPredictor(space).fit(archs, ds[proxy])
    t_fit_proxy = time.perf_counter() - t0
    t0 = time.perf_counter()
    pp = P.predict(archs)
    t_pred = time.perf_counter() - t0
    targets = targets or [d for d in ds.devices if d != proxy]
    src_models = {}
    if "multiproxy" in methods:
        for d in ds.devices:
            src_models[d] = LinearLatencyPredictor(space).fit(archs, ds[d])
    rows = {}
    fit_times = {m: [] for m in methods}
    pools = {}
    for tgt in targets:
        y = ds[tgt]
        tr = _ranks(y)
        true_s = srcc_fast(ds[proxy], tr)
        pred_s = srcc_fast(pp, tr)
        res = {}
        for m in methods:
            for K in ks:
                vals = []
                for seed in range(seeds):
                    key = (K, seed)
                    if key not in pools:
                        pools[key] = select_samples(space, archs, K, selection, seed)
                    idx = pools[key]
                    sa = [archs[i] for i in idx]
                    t0 = time.perf_counter()
                    if m == "multiproxy":
                        srcs = {d: src_models[d] for d in ds.devices if d not in (tgt, proxy)}
                        model = adapt(P, sa, y[idx], method=m, sources=srcs)
                    else:
                        model = adapt(P, sa, y[idx], method=m)
                    fit_times[m].append(time.perf_counter() - t0)
                    vals.append(srcc_fast(model.predict(archs), tr))
                res[(m, K)] = (float(np.mean(vals)), float(np.min(vals)))
        rows[tgt] = (true_s, pred_s, res)
    # ------------------------------------------------------------------ print
    out(f"\n### {ds_name}: proxy {proxy} -> every other device  ({len(ds)} archs, {seeds} seeds, selection={selection})")
    out(f"anchor: {ANCHORS.get(ds_name, '')}")
    out(f"proxy linear fit {t_fit_proxy:.2f} s on {len(ds)} archs; predict {len(ds) / t_pred:,.0f} archs/s")
    for m in methods:
        out(f"\nmethod={m}  (mean [worst seed]; fit {1000 * np.mean(fit_times[m]):.1f} ms mean, {1000 * np.max(fit_times[m]):.0f} ms max)")
        head = f"| {'target':15s} | true | pred | " + " | ".join(f"K={K:<11d}" for K in ks) + " |"
        out(head)
        out("|" + "---|" * (3 + len(ks)))
        for tgt, (ts, ps, res) in rows.items():
            cells = []
            for K in ks:
                mu, mn = res[(m, K)]
                flag = "*" if mu < ps - 0.005 else " "
                cells.append(f"{mu:.3f} [{mn:.2f}]{flag}")
            out(f"| {tgt:15s} | {ts:.3f} | {ps:.3f} | " + " | ".join(cells) + " |")
        means = [np.mean([r[2][(m, K)][0] for r in rows.values()]) for K in ks]
        worst = [np.min([r[2][(m, K)][0] for r in rows.values()]) for K in ks]
        below = [sum(r[2][(m, K)][0] < r[1] - 0.005 for r in rows.values()) for K in ks]
        out(f"| {'MEAN':15s} | {np.mean([r[0] for r in rows.values()]):.3f} | {np.mean([r[1] for r in rows.values()]):.3f} | "
            + " | ".join(f"{x:.3f}{'':8s}" for x in means) + " |")
        out(f"| {'WORST target':15s} | {np.min([r[0] for r in rows.values()]):.3f} | {np.min([r[1] for r in rows.values()]):.3f} | "
            + " | ".join(f"{x:.3f}{'':8s}" for x in worst) + " |")
        out(f"| {'# below pred':15s} |      |      | " + " | ".join(f"{x:<12d}" for x in below) + " |")
    out("(* = mean below the unadapted proxy predictor)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma list of dataset:proxy")
    ap.add_argument("--ks", default="5,10,20,50")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", default="bayes,adaproxy,multiproxy")
    ap.add_argument("--selection", default="random", choices=["random", "kmeans"])
    ap.add_argument("--quick", action="store_true", help="NB201 only, K=10, 3 seeds, bayes")
    ap.add_argument("--mirror", default=None)
    args = ap.parse_args(argv)
    mirror = args.mirror or os.environ.get("HWNAS_ASSETS_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    os.environ["HWNAS_ASSETS_MIRROR"] = mirror
    settings = [s.split(":") for s in args.settings.split(",") if s]
    ks = [int(k) for k in args.ks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    seeds = args.seeds
    if args.quick:
        settings, ks, seeds, methods = [["nasbench201", "pixel3"]], [10], 3, ["bayes"]
    t0 = time.time()
    for ds_name, proxy in settings:
        run_setting(ds_name, proxy, ks, seeds, methods, args.selection)
        sys.stdout.flush()
    print(f"\ntotal {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
