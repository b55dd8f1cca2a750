"""Accuracy predictors on REAL measured ImageNet top-1 of OFA-MobileNetV3 w1.0 subnets.

Data: ``accuracy/ofa_mbv3_w1.0_imagenet.csv`` (1,482 subnets at r=224, measured top-1 %), fetched through
the assets mirror (``--mirror``, default ``../shared/data`` beside the project, or ``HWNAS_ASSETS_MIRROR``).

For each train size and seed, a random subset trains the predictor and the rest is the test set:

* ``mlp``       — :class:`hwnas.predictors.acc_mlp.MLPAccuracyPredictor` (OFA's MLP + 128-d encoding), random init;
* ``mlp+ofa``   — the same MLP initialised from Once-for-All's official predictor, fine-tuned;
* ``ridge``     — ridge regression on the same 128-d encoding (alpha by leave-one-out CV), a linear baseline;
* ``ofa-w1.2``  — Once-for-All's official predictor, no training: it was trained on the **w1.2** supernet,
  so only its ranking (SRCC / Kendall) is comparable; its RMSE is shown raw and after a linear
  calibration fitted on the train split.

Prints mean ± std over seeds of SRCC, Kendall tau and RMSE (top-1 %-points) on the held-out archs.

    python benchmarks/accuracy_predictors.py                  # sizes 100 250 500 1000, 3 seeds
    python benchmarks/accuracy_predictors.py --sizes 100 --seeds 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr

from hwnas.predictors.acc_mlp import MLPAccuracyPredictor
from hwnas.predictors.assets import fetch, set_default_mirror
from hwnas.spaces import create_space
from hwnas.spaces.mbconv import ofa_predictor_features
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)

DATA = "accuracy/ofa_mbv3_w1.0_imagenet.csv"


def official_predictor():
    try:
        from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor

        return OFAAccuracyPredictor()
    except ImportError:  # fallback: load the official file directly
        import torch

        from hwnas.predictors.acc_mlp import build_mlp

        net = build_mlp(128)
        net.load_state_dict(torch.load(fetch("ofa/acc_predictor.pth"), map_location="cpu", weights_only=True))
        net.eval()

        class _P:
            def predict(self, archs):
                with torch.no_grad():
                    return net(torch.from_numpy(ofa_predictor_features(archs)))[:, 0].numpy().astype(float)

        return _P()


def metrics(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    return float(spearmanr(pred, y)[0]), float(kendalltau(pred, y)[0]), float(np.sqrt(np.mean((pred - y) ** 2)))


def ridge_loo_fit(X: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """Ridge regression (unpenalised intercept) with the penalty chosen by exact leave-one-out error."""
    mx, my = X.mean(0), y.mean()
    Xc, yc = X - mx, y - my
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    Uy = U.T @ yc
    best = None
    for a in alphas:
        f = s**2 / (s**2 + a)
        fit = U @ (f * Uy)
        h = (U**2 * f).sum(1) + 1.0 / len(y)  # hat diagonal, intercept included
        loo = np.mean(((yc - fit) / (1.0 - h)) ** 2)
        if best is None or loo < best[0]:
            best = (loo, Vt.T @ (s / (s**2 + a) * Uy))
    w = best[1]
    return lambda Z: (np.asarray(Z) - mx) @ w + my


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=at_least(2), nargs="+", default=[100, 250, 500, 1000])
    ap.add_argument("--seeds", type=at_least(1), default=3)
    ap.add_argument("--mirror", default=os.environ.get("HWNAS_ASSETS_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--models", nargs="+", default=["mlp", "mlp+ofa", "ridge", "ofa-w1.2"])
    args = ap.parse_args(argv)
    set_default_mirror(args.mirror)

    df = pd.read_csv(fetch(DATA))
    space = create_space("ofa_mbv3_w10")
    archs = [space.validate(a) for a in df["arch"]]
    y = df["top1"].to_numpy(dtype=float)
    X = ofa_predictor_features(archs)
    print(f"{DATA}: {len(y)} subnets, top-1 {y.min():.2f}..{y.max():.2f}% (std {y.std():.2f})")
    official = official_predictor() if "ofa-w1.2" in args.models else None
    official_all = official.predict(archs) * 100.0 if official is not None else None

    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(args.sizes) * args.seeds * len(args.models), unit="fit", desc="settings", file=sys.stderr)
    for n in args.sizes:
        if n >= len(y) - 10:
            raise SystemExit(f"--sizes {n}: must leave a test set (dataset has {len(y)} archs)")
        for seed in range(args.seeds):
            idx = np.random.default_rng(seed).permutation(len(y))
            tr, te = idx[:n], idx[n:]
            a_tr, a_te = [archs[i] for i in tr], [archs[i] for i in te]
            for model in args.models:
                t = time.perf_counter()
                if model in ("mlp", "mlp+ofa"):
                    p = MLPAccuracyPredictor(space, seed=seed, init="ofa" if model == "mlp+ofa" else None)
                    pred = p.fit(a_tr, y[tr]).predict(a_te)
                elif model == "ridge":
                    pred = ridge_loo_fit(X[tr], y[tr], np.logspace(-3, 3, 13))(X[te])
                elif model == "ofa-w1.2":
                    pred = official_all[te]
                    cal = np.polyfit(official_all[tr], y[tr], 1)
                    rows.append(dict(model="ofa-w1.2 (calibrated)", n=n, seed=seed,
                                     **dict(zip(("srcc", "tau", "rmse"), metrics(np.polyval(cal, pred), y[te]))),
                                     time_s=0.0))
                else:
                    raise SystemExit(f"--models: {model!r} unknown; allowed: mlp, mlp+ofa, ridge, ofa-w1.2")
                rows.append(dict(model=model, n=n, seed=seed, **dict(zip(("srcc", "tau", "rmse"), metrics(pred, y[te]))),
                                 time_s=time.perf_counter() - t))
                r = rows[-1]
                bar.update(1)
                bar.write(f"  n={n:<5} seed={seed} {model:<10} SRCC {r['srcc']:.4f}  Kendall {r['tau']:.4f}  "
                          f"RMSE {r['rmse']:.3f}  ({r['time_s']:.1f} s)")
    bar.close()

    res = pd.DataFrame(rows)
    print()
    print(f"Held-out accuracy of predictors (train n archs, test the other {len(y)} - n), mean ± std over {args.seeds} seeds")
    print("ofa-w1.2 = Once-for-All's official predictor, trained on the w1.2 supernet: a different width, no training here")
    print()
    hdr = f"{'model':<24}{'n_train':>8}{'SRCC':>16}{'Kendall':>16}{'RMSE (%)':>16}{'fit s':>8}"
    print(hdr)
    print("-" * len(hdr))
    for (model, n), g in res.groupby(["model", "n"], sort=False):
        f = lambda c: f"{g[c].mean():.4f} ± {g[c].std(ddof=0):.4f}"
        print(f"{model:<24}{n:>8}{f('srcc'):>16}{f('tau'):>16}{f('rmse'):>16}{g['time_s'].mean():>8.1f}")
    print()
    if "mlp" in args.models and "ofa-w1.2" in args.models:
        for n in args.sizes:
            m = res[(res.model == "mlp") & (res.n == n)].srcc.mean()
            o = res[(res.model == "ofa-w1.2") & (res.n == n)].srcc.mean()
            print(f"n={n}: trained MLP SRCC {m:.4f} vs official w1.2 predictor {o:.4f} (ratio {m / o:.3f})")


if __name__ == "__main__":
    from _cli import run

    run(main)
