"""Supernet forward with a subnet active vs the extracted static subnet (vs the timm export when the
export module provides one), same arch and input; and images/s of BN calibration + evaluation on CPU.

    python benchmarks/supernet_forward.py                     # both OFA spaces, r=224 and 160, batch 1 and 16
    python benchmarks/supernet_forward.py --batch 8 --repeats 10 --threads 2

The "anchor" is the extracted static subnet (what deployment runs): ratio = time / static time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from hwnas.spaces import create_space
from hwnas.supernet.data import TensorBatches, evaluate, set_running_statistics
from hwnas.supernet.elastic import ElasticMBConvNet
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def timm_model(space, subnet):
    """The timm model of the subnet from the export module (None when it is not available)."""
    try:
        from hwnas.supernet.timm_export import to_timm
    except Exception:
        return None
    try:
        model, _cfg, _diff = to_timm(subnet, space, subnet.arch, check=False)
        return model.eval()
    except Exception as exc:  # pragma: no cover - optional
        print(f"  (timm export failed: {exc})")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["ofa_mbv3_w12", "ofa_proxyless_w13"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[224, 160])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=at_least(1), default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--eval-images", type=at_least(1), default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    hdr = f"{'space':<18}{'arch':<8}{'r':>5}{'batch':>6}{'super ms':>10}{'static ms':>10}{'timm ms':>9}{'super/static':>13}{'timm/static':>12}{'max|diff|':>11}"
    print(hdr)
    print("-" * len(hdr), flush=True)
    for name in args.spaces:
        space = create_space(name)
        net = ElasticMBConvNet(space).eval()
        archs = {"max": net.max_arch(), "min": net.min_arch(), "random": space.sample(1, 0)[0]}
        for label, a0 in archs.items():
            for r in args.resolutions:
                a = type(a0)(ks=a0.ks, e=a0.e, d=a0.d, r=r)
                sub = net.get_active_subnet(a).eval()
                tm = timm_model(space, sub)
                net.set_active(a)
                for b in args.batches:
                    x = torch.randn(b, 3, r, r)
                    with torch.no_grad():
                        err = float((net(x) - sub(x)).abs().max())
                        t_super = timeit(lambda: net(x), args.repeats)
                        t_static = timeit(lambda: sub(x), args.repeats)
                        t_timm = timeit(lambda: tm(x), args.repeats) if tm is not None else float("nan")
                    ts, tst, tt = t_super * 1e3, t_static * 1e3, t_timm * 1e3
                    print(f"{name:<18}{label:<8}{r:>5}{b:>6}{ts:>10.2f}{tst:>10.2f}{tt:>9.2f}{ts / tst:>13.2f}"
                          f"{tt / tst:>12.2f}{err:>11.1e}", flush=True)

    # evaluation throughput on CPU (decoded uint8 images in memory: the data pipeline is not timed)
    print("\nBN calibration + evaluation throughput (CPU, images in memory, batch 64)")
    print(f"{'space':<18}{'r':>5}{'calib img/s':>13}{'eval img/s':>12}")
    for name in args.spaces:
        space = create_space(name)
        net = ElasticMBConvNet(space).eval()
        for r in args.resolutions:
            a = space.sample(1, 1)[0]
            a = type(a)(ks=a.ks, e=a.e, d=a.d, r=r)
            sub = net.get_active_subnet(a)
            g = torch.Generator().manual_seed(0)
            imgs = torch.randint(0, 256, (args.eval_images, 3, r, r), dtype=torch.uint8, generator=g)
            tb = TensorBatches(imgs, torch.zeros(args.eval_images, dtype=torch.long), 64)
            t0 = time.perf_counter()
            set_running_statistics(sub, tb)
            t_cal = time.perf_counter() - t0
            res = evaluate(sub, tb)
            print(f"{name:<18}{r:>5}{args.eval_images / t_cal:>13.1f}{res['images_per_s']:>12.1f}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    from _cli import run

    run(main)
