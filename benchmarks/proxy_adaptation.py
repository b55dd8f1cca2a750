"""Proxy -> target adaptation, measured on devices the method was not designed on.

    python benchmarks/proxy_adaptation.py                      # every setting, both folds, 10 seeds (~30 min)
    python benchmarks/proxy_adaptation.py --quick              # NB201 only, evaluation fold, 3 seeds
    python benchmarks/proxy_adaptation.py --settings fbnet:pixel3 --ks 10,20 --methods bayes,bayes-nolib,adaproxy
    python benchmarks/proxy_adaptation.py --selections random,kmeans,stratified --ks 10,20

Protocol (as in issue 12): the proxy predictor is a per-position linear model fitted on every row of the
proxy device; the candidates are 1,999 random archs of the dataset (fixed seed); each seed draws K of
them at random (``--selection``) as the measured target samples; the score is the SRCC over the 1,999
archs. Methods: ``bayes`` (the default, with a device library), ``bayes-nolib`` (the one-proxy prior:
no other device), ``adaproxy`` / ``adaproxy_plain`` (AdaProxy with and without shrinkage),
``multiproxy`` (the library's devices as sources).

Honest folds. Devices are grouped into families (one GPU at three batch sizes is three families; five
GPUs at one batch size are one family). A target's library never holds the target's family. Families
are split into a *design* fold, on which every choice of the method was made, and an *evaluation* fold,
which is reported as the result. Baselines printed beside each device: the proxy device's measured
latency (``raw``), the proxy predictor (``pred``), MACs (``macs``), and the device's ceiling (a
per-position linear model trained on half of its rows, scored on the other half).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)

ANCHORS = {
    "nasbench201": "AdaProxy (paper) 60+10 samples: 0.87-0.99",
    "fbnet": "NASFLAT 20 samples: 0.58-0.96",
    "ofa_mbv3": "(no published anchor)",
}
SETTINGS = ["nasbench201:pixel3", "fbnet:pixel3", "fbnet:2080ti_1", "ofa_mbv3:2080ti_1"]
GPUS = ("1080ti", "2080ti", "titan_rtx", "titanx", "titanxp")
FAMILIES = {
    "nasbench201": {**{f"gpu_b{b}": [f"{g}_{b}" for g in GPUS] for b in (1, 32, 256)},
                    "xeon": ["gold_6226", "gold_6240", "silver_4114", "silver_4210r"],
                    "phone": ["pixel2", "pixel3", "samsung_a50", "samsung_s7", "essential_ph_1"]},
    "fbnet": {**{f"gpu_b{b}": [f"{g}_{b}" for g in GPUS] for b in (1, 32, 64)},
              "xeon": ["gold_6226", "gold_6240", "silver_4114", "silver_4210r"]},
    "ofa_mbv3": {g: [f"{g}_{b}" for b in (1, 32, 64)] for g in ("2080ti", "titan_rtx", "titan_xp")},
}
#: the families every choice of the adaptation method was made on (the rest is the evaluation fold)
DESIGN = {"nasbench201": ["gpu_b1", "gpu_b256", "xeon", "eyeriss"],
          "fbnet": ["gpu_b1", "gpu_b64", "eyeriss", "raspi4"],
          "ofa_mbv3": ["titan_rtx"]}
POOL = 1999


def family(dataset: str, device: str) -> str:
    for fam, members in FAMILIES.get(dataset, {}).items():
        if device in members:
            return fam
    return device


def fold_of(dataset: str, device: str) -> str:
    return "design" if family(dataset, device) in DESIGN.get(dataset, []) else "eval"


def ceiling(X: np.ndarray, y: np.ndarray, seed: int = 7) -> float:
    """SRCC of a per-position linear model trained on half of a device's rows, on the other half."""
    from hwnas.predictors.linear import ridge_fit
    from hwnas.predictors.metrics import srcc

    perm = np.random.default_rng(seed).permutation(len(y))
    h = len(y) // 2
    w, b = ridge_fit(X[perm[:h]], y[perm[:h]])
    return srcc(X[perm[h:]] @ w + b, y[perm[h:]])


class Setting:
    """One dataset and proxy device: data, proxy predictor, device models, candidates."""

    def __init__(self, dataset: str, proxy: str) -> None:
        from hwnas.predictors.adapt import DeviceLibrary
        from hwnas.predictors.data import load_dataset
        from hwnas.predictors.linear import LinearLatencyPredictor, cost_table, latency_features

        self.dataset, self.proxy_device = dataset, proxy
        self.ds = load_dataset(dataset)
        self.space = self.ds.space
        self.X = latency_features(self.space, self.ds.archs)
        self.proxy = LinearLatencyPredictor(self.space).fit(self.ds.archs, self.ds[proxy])
        self.library = DeviceLibrary.from_dataset(self.ds)
        rng = np.random.default_rng(12345)
        self.pool = np.sort(rng.choice(len(self.ds), min(POOL, len(self.ds)), replace=False))
        self.pool_archs = [self.ds.archs[i] for i in self.pool]
        T = cost_table(self.space)
        self.macs = None if T is None else self.X @ (T[:, 0] + T[:, 1])

    def targets(self, folds: list[str], only: list[str] | None = None) -> list[str]:
        out = [d for d in self.ds.devices if d != self.proxy_device]
        if only:
            return [d for d in out if d in only]
        return [d for d in out if fold_of(self.dataset, d) in folds]

    def library_for(self, target: str):
        fam = family(self.dataset, target)
        return self.library.without([d for d in self.library.devices if family(self.dataset, d) == fam])

    def baselines(self, target: str) -> dict:
        from hwnas.predictors.metrics import srcc

        y = self.ds[target][self.pool]
        out = {"raw": srcc(self.ds[self.proxy_device][self.pool], y), "pred": srcc(self.X[self.pool] @ self.proxy.weights, y),
               "ceil": ceiling(self.X, self.ds[target])}
        out["macs"] = srcc(self.macs[self.pool], y) if self.macs is not None else float("nan")
        return out


def run_method(st: Setting, target: str, method: str, K: int, seed: int, selection: str) -> float:
    from hwnas.predictors.adapt import adapt, select_samples
    from hwnas.predictors.linear import LinearLatencyPredictor
    from hwnas.predictors.metrics import standard_ranks

    y = st.ds[target]
    opts = {}
    if "[" in method:  # method[key=value,...]: options of the method (e.g. bayes[macs_weight=0])
        method, _, rest = method.partition("[")
        opts = {k: float(v) for k, v in (kv.split("=") for kv in rest.rstrip("]").split(";") if kv)}
    if selection == "random":
        pick = np.random.default_rng(1000 * K + seed).choice(len(st.pool), K, replace=False)
    else:
        pick = select_samples(st.space, st.pool_archs, K, selection, rng=1000 * K + seed, proxy=st.proxy)
    idx = st.pool[np.sort(pick)]
    archs, ys = [st.ds.archs[i] for i in idx], y[idx]
    if method == "bayes":
        m = adapt(st.proxy, archs, ys, library=st.library_for(target), **opts)
    elif method == "bayes-nolib":
        m = adapt(st.proxy, archs, ys, library=None, **opts)
    elif method == "multiproxy":
        lib = st.library_for(target)
        srcs = {}
        for d in lib.devices:
            p = LinearLatencyPredictor(st.space)
            p.weights, p.bias = lib.models[d]
            srcs[d] = p
        m = adapt(st.proxy, archs, ys, method="multiproxy", sources=srcs)
    else:
        m = adapt(st.proxy, archs, ys, method=method, **({"rng": seed} if method == "adaproxy_plain" else {}))
    tr = standard_ranks(y[st.pool])
    return float(np.mean(standard_ranks(st.X[st.pool] @ m.weights) * tr)) if not m.gamma else \
        float(np.mean(standard_ranks(m.predict(st.pool_archs)) * tr))


def table(st: Setting, targets: list[str], methods: list[str], ks: list[int], seeds: int, selection: str, out=print) -> dict:
    res = {}
    t0 = time.time()
    for n, tgt in enumerate(targets):
        b = st.baselines(tgt)
        row = {"base": b}
        for m in methods:
            for K in ks:
                v = [run_method(st, tgt, m, K, s, selection) for s in range(seeds)]
                row[(m, K)] = (float(np.mean(v)), float(np.min(v)))
        res[tgt] = row
        cells = " | ".join(f"{row[(m, K)][0]:.3f} [{row[(m, K)][1]:.2f}]{'*' if row[(m, K)][0] < b['pred'] - 0.005 else ' '}"
                           for m in methods for K in ks)
        eta = (time.time() - t0) / (n + 1) * (len(targets) - n - 1)
        out(f"| {tgt:15s} | {fold_of(st.dataset, tgt):6s} | {b['raw']:.3f} | {b['pred']:.3f} | {b['macs']:.3f} | {b['ceil']:.3f} | "
            f"{cells} |   ({time.time() - t0:.0f} s, ETA {eta:.0f} s)")
        sys.stdout.flush()
    return res


def summarise(res: dict, methods: list[str], ks: list[int], label: str, out=print) -> None:
    if not res:
        return
    devs = list(res)
    base = {k: [res[d]["base"][k] for d in devs] for k in ("raw", "pred", "macs", "ceil")}
    for m in methods:
        means = [np.mean([res[d][(m, K)][0] for d in devs]) for K in ks]
        worst = [np.min([res[d][(m, K)][0] for d in devs]) for K in ks]
        below = [sum(res[d][(m, K)][0] < res[d]["base"]["pred"] - 0.005 for d in devs) for K in ks]
        gap = [np.mean([res[d]["base"]["ceil"] - res[d][(m, K)][0] for d in devs]) for K in ks]
        out(f"{label} {m:12s} " + "  ".join(f"K={K}: {mu:.3f} (worst {w:.3f}, {bl} below pred, ceiling gap {g:+.3f})"
                                          for K, mu, w, bl, g in zip(ks, means, worst, below, gap)))
    out(f"{label} baselines    raw proxy {np.mean(base['raw']):.3f} (worst {np.min(base['raw']):.3f})  proxy predictor "
        f"{np.mean(base['pred']):.3f} (worst {np.min(base['pred']):.3f})  MACs {np.nanmean(base['macs']):.3f}  ceiling "
        f"{np.mean(base['ceil']):.3f} (worst {np.min(base['ceil']):.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma list of dataset:proxy")
    ap.add_argument("--ks", default="5,10,20,50")
    ap.add_argument("--seeds", type=at_least(1), default=10)
    ap.add_argument("--methods", default="bayes,bayes-nolib,adaproxy")
    ap.add_argument("--selection", default="random", help="random | kmeans | stratified (how the K samples are drawn)")
    ap.add_argument("--selections", default=None, help="compare selections (comma list) for the first method instead")
    ap.add_argument("--folds", default="eval,design", help="which folds to report (eval = the result; design = what was tuned on)")
    ap.add_argument("--targets", default=None, help="comma list of devices (overrides --folds)")
    ap.add_argument("--quick", action="store_true", help="NB201, evaluation fold, K=5,10,20, 3 seeds, bayes")
    ap.add_argument("--mirror", default=None)
    args = ap.parse_args(argv)
    mirror = args.mirror or os.environ.get("HWNAS_ASSETS_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    os.environ["HWNAS_ASSETS_MIRROR"] = mirror
    settings = [s.split(":") for s in args.settings.split(",") if s]
    ks = [int(k) for k in args.ks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    folds = [f for f in args.folds.split(",") if f]
    seeds = args.seeds
    if args.quick:  # its sizes for what was not given (an option given keeps its value)
        given = {a for a in vars(args) if getattr(args, a) != ap.get_default(a)}
        settings = settings if "settings" in given else [["nasbench201", "pixel3"]]
        ks = ks if "ks" in given else [5, 10, 20]
        seeds = seeds if "seeds" in given else 3
        methods = methods if "methods" in given else ["bayes"]
        folds = folds if "folds" in given else ["eval"]
    only = args.targets.split(",") if args.targets else None
    t0 = time.time()
    for ds_name, proxy in settings:
        st = Setting(ds_name, proxy)
        unknown = [t for t in (only or []) if t not in st.ds.devices]
        if unknown:
            from hwnas.spaces.errors import UserError

            raise UserError(f"--targets {args.targets}: {unknown} are not devices of dataset {ds_name}; its devices: "
                             f"{st.ds.devices}")
        print(f"\n### {ds_name}: proxy {proxy}   (anchor: {ANCHORS.get(ds_name, '')}; {len(st.pool)} archs, {seeds} seeds, "
              f"samples: {args.selection})")
        selections = args.selections.split(",") if args.selections else [args.selection]
        for fold in (["targets"] if only else folds):
            targets = st.targets([fold], only)
            if not targets:
                continue
            for sel in selections:
                cols = [f"{m} K={K}" for m in methods for K in ks]
                print(f"\n{fold} fold" + (f", selection={sel}" if args.selections else "") +
                      " (* = mean below the proxy predictor)\n| target | fold | raw | pred | macs | ceil | " + " | ".join(cols) + " |")
                print("|" + "---|" * (6 + len(cols)))
                res = table(st, targets, methods, ks, seeds, sel)
                summarise(res, methods, ks, f"[{ds_name}:{proxy} {fold}{' ' + sel if args.selections else ''}]")
        print(f"(total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    from _cli import run

    run(main)
