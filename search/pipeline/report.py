"""Per-run report of ``hwnas-pipeline``: ``report.md`` + PNGs in the run dir.

* ``fronts.png`` -- the searched front at its predicted target latency and at its measured target
  latency (kept members = Pareto-optimal on the target), and the true front of the full target data
  when the dataset has it;
* ``srcc.png`` -- SRCC of the proxy on the K samples, and over the full data before/after adaptation
  (evaluation only, when the target's full column is known);
* ``reduced_space.png`` -- mean target latency of each (position, choice) from the profile, dropped
  choices crossed out (categorical spaces) -- MBConv spaces list the dropped blocks per unit.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.predictors.assets import atomic_write


def _target_name(summary: dict) -> str:
    t = summary.get("target") or {}
    return str(t.get("device") or t.get("plan_device") or "target")


def _proxy_name(summary: dict) -> str:
    """The proxy as the report names it: its device where the config names one (pixel3), else its class."""
    return str(summary.get("proxy_device") or str(summary.get("proxy") or "proxy").rsplit(".", 1)[-1])


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ref(ref: Any) -> str:
    """A hypervolume reference point (accuracy, latency) as text: ``(0.7531, 3.33 ms)``."""
    try:
        a, lat = (float(v) for v in ref)
    except (TypeError, ValueError):
        return str(ref)
    return f"({a:.4g}, {lat:.4g} ms)"


def _f(x: Any, nd: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if v != v else f"{v:.{nd}f}"


def plot_fronts(run_dir: Path, summary: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = _rows(run_dir / "06_remeasure" / "front.csv")
    if not rows:
        return None
    acc = np.array([float(r["accuracy"]) for r in rows])
    pred = np.array([float(r["predicted_latency"]) for r in rows])
    meas = np.array([float(r["measured_latency"]) for r in rows])
    keep = np.array([int(r["pareto_on_target"]) for r in rows], dtype=bool)
    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    tf = (summary.get("evaluation") or {}).get("true_front")
    if tf:
        ax.step([r["latency"] for r in tf], [r["accuracy"] for r in tf], where="post", color="0.5", lw=1.2,
                label=f"true front, full target data ({len(tf)})")
    ax.plot(pred, acc, "o", mfc="none", color="tab:blue", ms=5, label="searched front, predicted latency")
    ax.plot(meas[keep], acc[keep], "o", color="tab:red", ms=5, label=f"final front, measured ({keep.sum()})")
    if (~keep).any():
        ax.plot(meas[~keep], acc[~keep], "x", color="tab:red", ms=6, label="dropped after re-measuring")
    ax.set_xlabel(f"latency on {_target_name(summary)} (ms)")
    ax.set_ylabel("accuracy" if summary.get("space", "").startswith("ofa") else "accuracy source (see report)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{_proxy_name(summary)} -> {_target_name(summary)}")
    fig.tight_layout()
    return _save(fig, run_dir / "fronts.png")


def plot_srcc(run_dir: Path, summary: dict) -> Path:
    import matplotlib.pyplot as plt

    a = summary.get("adapt") or {}
    names = ["proxy, K samples", "proxy, full data", "adapted, full data"]
    vals = [a.get("srcc_proxy_on_samples"), a.get("eval_srcc_proxy_full"), a.get("eval_srcc_adapted_full")]
    vals = [np.nan if v is None else float(v) for v in vals]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.bar(names, vals, color=["tab:gray", "tab:blue", "tab:green"])
    ax.axhline(float(a.get("threshold", 0.9)), color="tab:red", ls="--", lw=1, label="reuse threshold")
    for i, v in enumerate(vals):
        if v == v:
            ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylim(min(0.0, np.nanmin(vals) if np.isfinite(vals).any() else 0.0), 1.05)
    ax.set_ylabel("SRCC vs target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, run_dir / "srcc.png")


def plot_reduced(run_dir: Path) -> Path | None:
    import matplotlib.pyplot as plt

    rows = _rows(run_dir / "04_reduce" / "profile.csv")
    if not rows or "position" not in rows[0] or "op" not in rows[0]:
        return None
    pos = sorted({int(r["position"]) for r in rows})
    ops = list(dict.fromkeys(r["op"] for r in rows))
    M = np.full((len(ops), len(pos)), np.nan)
    K = np.zeros_like(M, dtype=bool)
    for r in rows:
        i, j = ops.index(r["op"]), pos.index(int(r["position"]))
        M[i, j] = float(r["latency_mean"])
        K[i, j] = bool(int(r["kept"]))
    fig, ax = plt.subplots(figsize=(0.5 * len(pos) + 3, 0.4 * len(ops) + 1.6))
    im = ax.imshow(M, aspect="auto", cmap="viridis")
    for i in range(len(ops)):
        for j in range(len(pos)):
            if not K[i, j]:
                ax.text(j, i, "x", ha="center", va="center", color="white", fontsize=10)
    ax.set_yticks(range(len(ops)), ops, fontsize=7)
    ax.set_xticks(range(len(pos)), pos, fontsize=7)
    ax.set_xlabel("position (x = dropped)")
    fig.colorbar(im, ax=ax, label="mean target latency (ms)")
    fig.tight_layout()
    return _save(fig, run_dir / "reduced_space.png")


def write_report(run_dir: str | Path, summary: dict) -> Path:
    run_dir = Path(run_dir)
    pngs = [p for p in (plot_fronts(run_dir, summary), plot_srcc(run_dir, summary), plot_reduced(run_dir)) if p]
    a = summary.get("adapt") or {}
    ev = summary.get("evaluation") or {}
    L = [f"# hwnas pipeline: {_proxy_name(summary)} -> {_target_name(summary)} ({summary.get('space')})", ""]
    L += ["| | |", "|---|---|",
          f"| target | `{json.dumps(summary.get('target'), sort_keys=True)}` |",
          f"| target measurements (total in this folder, earlier runs' included) | {summary.get('target_measurements')} (K = {summary.get('k')} samples + re-measured fronts) |",
          f"| new measurements this run | {summary.get('new_measurements_this_run')} ({_f(summary.get('target_measure_s'), 1)} s) |",
          f"| SRCC proxy vs target, K samples | {_f(a.get('srcc_proxy_on_samples'))} (lower {a.get('confidence')} bound {_f(a.get('srcc_lower_bound'))}; threshold {a.get('threshold')}) |",
          f"| decision | {a.get('decision')} |"]
    if "eval_srcc_proxy_full" in a:
        L.append(f"| SRCC over all target data (evaluation only): proxy -> adapted | {_f(a.get('eval_srcc_proxy_full'))} -> {_f(a.get('eval_srcc_adapted_full'))} |")
    L += [f"| budgets (ms) | {summary.get('budgets')} ({summary.get('budgets_from') or a.get('budgets_from')}) |",
          f"| searched front: members re-measured / kept (Pareto-optimal on the target) | {summary.get('front_size')} / {summary.get('final_size')} |",
          f"| hypervolume on measured latency | {_f(summary.get('hv_measured'), 4)} (ref {_ref(summary.get('hv_ref'))}) |"]
    for b, r in (summary.get("best_at_budgets") or {}).items():
        best = "-" if r is None else f"{_f(r['accuracy'], 4)} at {_f(r['measured'])} ms"
        how = "fitted: not a row of the target's dataset" if r is not None and r.get("fitted") else "measured"
        L.append(f"| best under {b} ms ({how}) | {best} |")
    if summary.get("fitted_in_final"):
        L.append(f"| final front archs whose target latency is fitted (target.outside=fit: not rows of the dataset) | "
                 f"{summary['fitted_in_final']} of {summary.get('final_size')} |")
    if ev:
        L.append(f"| hypervolume: final front (true latency) / true front of full data | {_f(ev['hv_final'], 4)} / {_f(ev['hv_true_front'], 4)} = **{_f(ev['hv_ratio'], 4)}** (ref {_ref(ev['hv_ref'])}) |")
    L += [f"| stages run / skipped | {', '.join(summary.get('stages_ran') or []) or '-'} / {', '.join(summary.get('stages_skipped') or []) or '-'} |", ""]
    if not str(summary.get("space", "")).startswith(("ofa", "proxyless")):
        L += ["Accuracy source: unless `accuracy._target_` was set, `CapacityAccuracy` (log of the relative parameter "
              "count), a capacity proxy and **not** an accuracy estimate; the benchmark data have no accuracy for this space.", ""]
    dropped = summary.get("dropped") or []
    L += ["## Reduced space", ""]
    if not dropped and summary.get("unfriendly"):  # profiled, not applied
        dropped = summary["unfriendly"]
        L += ["Unfriendly choices on the target (profiled; the search kept them, `reduce.apply=true` drops them):", ""]
    if dropped and isinstance(dropped[0], dict):
        by: dict[int, list[str]] = {}
        for d in dropped:
            by.setdefault(int(d["position"]), []).append(d["op"])
        L += ["| position | dropped |", "|---|---|"] + [f"| {p} | {', '.join(v)} |" for p, v in sorted(by.items())]
    elif dropped:
        L += ["| unit | dropped |", "|---|---|"] + [f"| {u} | {', '.join(map(str, v)) or '-'} |" for u, v in enumerate(dropped)]
    else:
        L.append("nothing dropped")
    L += ["", "## Final front (measured on the target)", "", "| arch | accuracy | predicted ms | measured ms |", "|---|---|---|---|"]
    for r in _rows(run_dir / "06_remeasure" / "front.csv"):
        if int(r["pareto_on_target"]):
            arch = str(r["arch"]).replace("|", "\\|")  # (NAS-Bench-201's cells hold '|': a table cell separator)
            L.append(f"| `{arch}` | {_f(r['accuracy'], 4)} | {_f(r['predicted_latency'])} | {_f(r['measured_latency'])} |")
    L += [""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    return atomic_write(run_dir / "report.md", "\n".join(L))
