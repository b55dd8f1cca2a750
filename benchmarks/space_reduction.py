"""Space reduction benchmark: does searching the profiled, reduced space beat the full space?

    python benchmarks/space_reduction.py                  # full run (~ a few minutes on 2 cores)
    python benchmarks/space_reduction.py --quick          # smoke run

Devices: the official Note10 lookup tables (OFA-MBv3 w1.2 at r in {160,...,224}), and GPU devices of
``latency/ofa_mbv3.csv`` through a latency predictor fitted on that file
(``hwnas.predictors.linear.LinearLatencyPredictor``; without it, a ridge least-squares model on
per-slot one-hot block features x {1, (r/224)^2} defined here). Accuracy: the official OFA predictor.

Prints
1. what the profiling derives for each device, beside Mills et al.'s published reductions;
2. how stable the derivation is with fewer profiling samples (and what that costs in evaluations);
3. NSGA-II (plain, no local refinement) in the reduced vs the full space, several seeds, same
   evaluation budget: hypervolume of the accuracy-latency front at several budgets (and per generation,
   as "generations to reach the full space's final HV"), and best accuracy under 4 latency budgets.
   The profiling's own evaluations are reported beside, and the full space is also given the search
   budget *plus* the profiling cost (the fair comparison when every evaluation is a measurement).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor
from hwnas.search.nsga import run_search
from hwnas.search.problem import hypervolume, pareto_mask
from hwnas.search.profile import profile_space
from hwnas.search.reduce import ReductionRules, reduce_space
from hwnas.spaces import create_space

MILLS = {
    "mobile NPU": ("k7e3,k7e4,k7e6", "not stated"),
    "Note10 (CPU)": ("k7e3,k7e4", "(3, 4, 4, 4, 4)"),
    "GPU": ("k3e3,k3e4,k7e3", "not stated"),
}
NOTE10_RES = [160, 176, 192, 208, 224]


# ============================================================================ GPU latency predictor
class OneHotRidgeLatency:
    """Fallback latency predictor fitted on a latency CSV: per-slot one-hot (kernel, expand) of active
    layers, the same scaled by (r/224)^2, one-hot unit depths (plain and scaled), one-hot resolution,
    constant; ridge least squares. Vectorised on ``ArchBatch.arrays``."""

    metric = "latency_ms"

    def __init__(self, space, lam: float = 1.0):
        self.space, self.lam, self.w = space, float(lam), None

    def _arrays(self, archs):
        if hasattr(archs, "arrays"):
            return archs.arrays
        sp = self.space
        return sp.decode_arrays(sp.encode(list(archs)))

    def features(self, ks, e, d, r) -> np.ndarray:
        sp = self.space
        n = len(r)
        pairs = sp.all_block_choices
        P = len(pairs)
        pid = np.zeros((8, 8), dtype=int)
        for i, (k, ee) in enumerate(pairs):
            pid[k, ee] = i
        act = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        X = np.zeros((n, sp.n_slots * P), np.float32)
        rows, slots = np.nonzero(act)
        X[rows, slots * P + pid[ks[rows, slots], e[rows, slots]]] = 1.0
        s = ((np.asarray(r) / 224.0) ** 2)[:, None].astype(np.float32)
        mx = max(sp.arch_type.LAYOUT)
        D = np.zeros((n, sp.n_units * mx), np.float32)
        D[np.repeat(np.arange(n), sp.n_units), (np.arange(sp.n_units) * mx)[None, :].repeat(n, 0).ravel() + d.ravel() - 1] = 1
        R = np.zeros((n, 1024), np.float32)
        R[np.arange(n), np.asarray(r)] = 1.0
        R = R[:, 96:232]
        return np.hstack([X, X * s, D, D * s, R, np.ones((n, 1), np.float32)])

    def fit(self, archs, y):
        X = self.features(*self._arrays(archs)).astype(np.float64)
        y = np.asarray(y, float)
        self.w = np.linalg.solve(X.T @ X + self.lam * np.eye(X.shape[1]), X.T @ y)
        return self

    def predict(self, archs):
        return self.features(*self._arrays(archs)) @ self.w


def gpu_predictor(space, device: str):
    """(predictor, held-out SRCC, source) for ``device`` of latency/ofa_mbv3.csv."""
    from scipy.stats import spearmanr

    from hwnas.predictors.data import load_dataset

    ds = load_dataset("ofa_mbv3")
    y = ds[device]
    idx = np.random.default_rng(0).permutation(len(y))
    tr, te = idx[:4000], idx[4000:]
    archs = ds.archs
    pred, source = None, "ridge one-hot (fallback, fitted here)"
    try:  # the latency engineer's operator-level linear predictor (hwnas.predictors.linear)
        from hwnas.predictors.linear import LinearLatencyPredictor

        pred = LinearLatencyPredictor(space).fit([archs[i] for i in tr], y[tr])
        source = "hwnas.predictors.linear.LinearLatencyPredictor"
    except ImportError:
        pred = None
    if pred is None:
        pred = OneHotRidgeLatency(space).fit([archs[i] for i in tr], y[tr])
    srcc = float(spearmanr(pred.predict([archs[i] for i in te]), y[te])[0])
    full = type(pred)(space).fit(archs, y)  # refit on all 5000 for profiling and search
    return full, srcc, source


# ============================================================================ helpers
def hv_at(history: list[dict], budget: int) -> float:
    rows = [h for h in history if h["n_evals"] <= budget]
    return rows[-1]["hypervolume"] if rows else 0.0


def gens_to(history: list[dict], target: float) -> float:
    for h in history:
        if h["hypervolume"] >= target:
            return h["gen"]
    return float("nan")


def table(headers: list[str], rows: list[list], title: str = "") -> None:
    if title:
        print(f"\n### {title}")
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w[i]) for i, h in enumerate(headers)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |")
    sys.stdout.flush()


def progress(line: str) -> None:
    """What the benchmark is doing now (stderr, so the tables on stdout stay clean)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def search(space, acc, lat, seed, pop, gens, budgets, hv_ref):
    return run_search(space, acc, lat, pop_size=pop, n_gen=gens, seed=seed, budgets=budgets, hv_ref=hv_ref,
                      refine=0, verbose=False)


# ============================================================================ main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pop", type=int, default=50)
    ap.add_argument("--gens", type=int, default=40)
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--gpu", default="titan_rtx_1", help="GPU column of latency/ofa_mbv3.csv for the search")
    ap.add_argument("--mirror", default=os.environ.get("HWNAS_ASSETS_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--search", default="note10,gpu,titan_xp_1,titan_rtx_64",
                    help="devices to run the search comparison on ('gpu' = --gpu)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    gpu_cols = ["2080ti_1", "2080ti_64", "titan_rtx_1", "titan_rtx_64", "titan_xp_1", "titan_xp_64"]
    if a.gpu not in gpu_cols:
        gpu_cols.append(a.gpu)
    names = [a.gpu if x.strip() == "gpu" else x.strip() for x in a.search.split(",") if x.strip()]
    unknown = [x for x in names if x not in ["note10"] + gpu_cols]
    if unknown or not names:  # checked before minutes of profiling (and not dropped by --quick)
        ap.error(f"--search {a.search!r}: {'unknown device ' + repr(unknown[0]) if unknown else 'no device'}; "
                 f"give a comma-separated list of note10, gpu (= --gpu) and {', '.join(gpu_cols)}")
    if a.quick:  # smoke run: one GPU device (or the ones --search names)
        a.seeds, a.pop, a.gens, a.n_samples = 2, 30, 10, 32
        if a.search == ap.get_default("search"):
            names = [x for x in names if x in ("note10", a.gpu)]
        gpu_cols = list(dict.fromkeys([a.gpu] + [x for x in names if x != "note10"]))
    from hwnas.predictors.assets import set_default_mirror
    from hwnas.predictors.lut import LookupTableLatency

    set_default_mirror(a.mirror)
    rules = ReductionRules()
    acc = OFAAccuracyPredictor()
    print(f"# Space reduction benchmark (OFA-MBv3 w1.2, OFA accuracy predictor; rules: {rules})")

    # ------------------------------------------------------------------ 1. derived reductions
    note_space = create_space("ofa_mbv3_w12", resolutions=NOTE10_RES)
    gpu_space = create_space("ofa_mbv3_w12")
    note_lut = LookupTableLatency(note_space)
    devices = {"note10": (note_space, note_lut, "official Note10 lookup tables")}
    for col in gpu_cols:
        p, srcc, src = gpu_predictor(gpu_space, col)
        devices[col] = (gpu_space, p, f"{src}, held-out SRCC {srcc:.3f}")
    profiles, reductions, rows = {}, {}, []
    for i, (name, (sp, lat, src)) in enumerate(devices.items()):
        progress(f"1. profiling {name} ({i + 1}/{len(devices)}, N={a.n_samples})")
        t0 = time.perf_counter()
        prof = profile_space(sp, latency={name: lat}, accuracy={"ofa": acc}, n_samples=a.n_samples, seed=0)
        dt = time.perf_counter() - t0
        red = reduce_space(prof, name, "ofa", rules)
        profiles[name], reductions[name] = prof, red
        kept_r = red.resolutions if len(red.resolutions) <= 6 else f"{len(red.resolutions)} of {len(sp.resolutions)}"
        rows.append([name, ",".join(red.dropped_global) or "-", str(tuple(red.max_depths)), str(kept_r),
                     f"{100 * red.front_loss:.2f}%", f"{prof.n_evaluations}", f"{dt:.1f}", src])
        progress(f"   {name}: {red.describe()} ({dt:.1f} s)")
    for ref, (drop, depth) in MILLS.items():
        rows.append([f"Mills et al.: {ref}", drop, depth, "not stated", "-", "-", "-", "published reduced space"])
    table(["device", "dropped block choices (all units)", "max depths", "resolutions kept", "model front HV loss",
           "profile evals", "time s", "latency source"],
          rows, "1. Reductions derived by profiling (N=%d samples per cell) vs Mills et al. 2021" % a.n_samples)

    # ------------------------------------------------------------------ 2. stability vs N
    def decisions(rd):
        drops = {(u, b) for u, d in enumerate(rd.dropped) for b in d} | {("r", r) for r in rd.dropped_resolutions}
        return drops, tuple(rd.max_depths)

    rows = []
    for name in ["note10", a.gpu]:
        sp, lat, _ = devices[name]
        ref_drop, ref_depth = decisions(reductions[name])
        for n in (8, 16, 32, 64, 128, 256):
            progress(f"2. stability: {name}, N={n} (3 seeds)")
            same, diff = 0, []
            for seed in range(3):
                pr = profile_space(sp, latency={name: lat}, accuracy={"ofa": acc}, n_samples=n, seed=100 + seed)
                d, dd = decisions(reduce_space(pr, name, "ofa", rules))
                k = len(d ^ ref_drop) + sum(x != y for x, y in zip(dd, ref_depth))
                diff.append(k)
                same += k == 0
            rows.append([name, n, pr.n_evaluations, f"{same}/3", f"{np.mean(diff):.1f}"])
    table(["device", "N", "profile evals", f"same reduction as N={a.n_samples} (3 seeds)",
           "mean differing decisions (of 45 block + 5 depth + resolutions)"], rows,
          "2. Stability of the derived reduction with the number of profiling samples (other seeds)")

    # ------------------------------------------------------------------ 3. search: reduced vs full
    pop, gens = a.pop, a.gens
    total = pop * gens
    eval_budgets = sorted({total // 8, total // 4, total // 2, total})
    for name in names:
        sp, lat, _ = devices[name]
        red = reductions[name]
        rsp = red.space
        rlat = LookupTableLatency(rsp) if name == "note10" else lat
        base = profiles[name].baseline[name]
        if name == "note10":
            budgets = [15.0, 20.0, 25.0, 30.0]
        else:
            budgets = [float(np.round(np.quantile(base, q), 2)) for q in (0.05, 0.2, 0.4, 0.6)]
        hv_ref = (0.70, max(budgets))
        extra_evals = profiles[name].n_evaluations
        gens_fair = gens + int(np.ceil(extra_evals / pop))
        res = {"full": [], "reduced": [], "full+profile": []}
        t0 = time.perf_counter()
        for seed in range(a.seeds):
            progress(f"3. search on {name}: seed {seed + 1}/{a.seeds} (full, reduced, full+profile; "
                     f"{time.perf_counter() - t0:.0f} s so far)")
            res["full"].append(search(sp, acc, lat, seed, pop, gens, budgets, hv_ref))
            res["reduced"].append(search(rsp, acc, rlat, seed, pop, gens, budgets, hv_ref))
            res["full+profile"].append(search(sp, acc, lat, seed, pop, gens_fair, budgets, hv_ref))
        dt = time.perf_counter() - t0
        print(f"\n## {name}: reduced space = {red.describe()}")
        print(f"latency budgets {budgets} ms, HV reference (top-1 {hv_ref[0]}, {hv_ref[1]} ms), "
              f"pop {pop} x {gens} gens, {a.seeds} seeds, plain NSGA-II (no refinement); {dt:.0f} s")
        print(f"profiling cost: {extra_evals} evals (N={a.n_samples}, {profiles[name].seconds} s) -> the "
              f"'full+profile' runs get {gens_fair} generations ({gens_fair * pop} evals)")
        # best known front: union of every run's final front (both spaces, long runs included)
        allr = [r for v in res.values() for r in v]
        ua = np.concatenate([r.accuracy for r in allr])
        ul = np.concatenate([r.latency for r in allr])
        m = pareto_mask(ua, ul)
        hv_star = hypervolume(ua[m], ul[m], *hv_ref)
        rows = []
        for b in eval_budgets:
            f = np.array([hv_at(r.history, b) for r in res["full"]])
            g = np.array([hv_at(r.history, b) for r in res["reduced"]])
            gf, gr = hv_star - f.mean(), hv_star - g.mean()
            rows.append([b, f"{f.mean():.4f} ± {f.std():.4f}", f"{g.mean():.4f} ± {g.std():.4f}",
                         f"{100 * (g.mean() / f.mean() - 1):+.2f}%", f"{gf:.4f} -> {gr:.4f} ({100 * (gr / gf - 1):+.0f}%)",
                         f"{int((g > f).sum())}/{a.seeds}"])
        ff = np.array([r.history[-1]["hypervolume"] for r in res["full+profile"]])
        g = np.array([r.history[-1]["hypervolume"] for r in res["reduced"]])
        gf, gr = hv_star - ff.mean(), hv_star - g.mean()
        rows.append([f"{total} (full: {gens_fair * pop})", f"{ff.mean():.4f} ± {ff.std():.4f}", f"{g.mean():.4f} ± {g.std():.4f}",
                     f"{100 * (g.mean() / ff.mean() - 1):+.2f}%", f"{gf:.4f} -> {gr:.4f} ({100 * (gr / gf - 1):+.0f}%)",
                     f"{int((g > ff).sum())}/{a.seeds}"])
        table(["evals", "HV full", "HV reduced", "reduced vs full", "HV gap to best known front, full -> reduced",
               "seeds better"], rows,
              f"{name}: hypervolume at equal evaluation budgets (best known front HV {hv_star:.4f}; last row: the "
              "full space also gets the profiling evals)")
        # convergence
        final_full = np.mean([r.history[-1]["hypervolume"] for r in res["full"]])
        rows = []
        for frac in (0.95, 0.99, 1.0):
            tgt = frac * final_full
            gf = [gens_to(r.history, tgt) for r in res["full"]]
            gr = [gens_to(r.history, tgt) for r in res["reduced"]]
            rows.append([f"{frac:.0%} of full final HV ({tgt:.4f})", f"{np.nanmean(gf):.1f} ({np.isfinite(gf).sum()}/{a.seeds})",
                         f"{np.nanmean(gr) if np.isfinite(gr).any() else float('nan'):.1f} ({np.isfinite(gr).sum()}/{a.seeds})"])
        table(["target", "gens full (seeds reaching)", "gens reduced (seeds reaching)"], rows, f"{name}: convergence")
        hv_curve_f = np.mean([[h["hypervolume"] for h in r.history] for r in res["full"]], axis=0)
        hv_curve_r = np.mean([[h["hypervolume"] for h in r.history] for r in res["reduced"]], axis=0)
        step = max(1, gens // 8)
        table(["gen"] + [str(i + 1) for i in range(0, gens, step)],
              [["full"] + [f"{hv_curve_f[i]:.4f}" for i in range(0, gens, step)],
               ["reduced"] + [f"{hv_curve_r[i]:.4f}" for i in range(0, gens, step)]], f"{name}: mean HV per generation")
        rows = []
        for bgt in budgets:
            k = f"best_acc@{bgt:g}"
            for b in eval_budgets[1:]:
                f = np.array([[h[k] for h in r.history if h["n_evals"] <= b][-1] for r in res["full"]])
                g = np.array([[h[k] for h in r.history if h["n_evals"] <= b][-1] for r in res["reduced"]])
                rows.append([f"{bgt:g} ms", b, f"{100 * np.nanmean(f):.2f}", f"{100 * np.nanmean(g):.2f}",
                             f"{100 * (np.nanmean(g) - np.nanmean(f)):+.2f}"])
        table(["latency budget", "evals", "best top-1 full %", "best top-1 reduced %", "delta pts"], rows,
              f"{name}: best predicted accuracy under latency budgets (mean over seeds)")


if __name__ == "__main__":
    from _cli import run

    run(main)
