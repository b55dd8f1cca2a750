"""Write and read a search's results directory.

``write_results(result, out_dir, config=None)`` writes (atomically, temp file + rename):

* ``pareto.csv`` -- one row per front member, sorted by latency: ``rank, accuracy, latency, arch_str, arch``
  (``arch`` is the JSON dict in OFA's convention);
* ``pareto.json`` -- ``{"space": <space config>, "budgets": [...], "best": {budget: row}, "front": [rows]}``
  where a row is ``{"arch": {...}, "arch_str": "...", "accuracy": .., "latency": ..}``;
* ``history.csv`` -- per generation (and refinement pass): ``gen, phase, n_evals, front_size,
  hypervolume, time_s, best_acc@<budget>...``;
* ``pareto.png`` -- the front, every budget as a vertical line with its best arch marked;
* ``config.yaml`` -- the resolved config (when given).

``load_front(path, space)`` reads ``pareto.json`` back into validated archs with their objectives.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from hwnas.predictors.assets import atomic_path, atomic_write  # noqa: F401  (atomic_write re-exported)

from .nsga import SearchResult


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def front_json(result: SearchResult) -> dict:
    rows = result.rows()
    best = {}
    for b, item in result.best_at_budgets().items():
        if item is None:
            best[f"{b:g}"] = None
        else:
            arch, acc, lat = item
            best[f"{b:g}"] = {"arch": arch.to_dict(), "arch_str": str(arch), "accuracy": acc, "latency": lat}
    space_cfg = result.space.to_config() if hasattr(result.space, "to_config") else {"name": getattr(result.space, "name", "")}
    return {
        "space": space_cfg,
        "budgets": list(result.budgets),
        "objectives": {"accuracy": "maximise", "latency": "minimise"},
        "hv_ref": {"accuracy": result.hv_ref[0], "latency": result.hv_ref[1]},
        "hypervolume": result.hypervolume,
        "n_evals": result.n_evals,
        "wall_time_s": result.wall_time,
        "seed": result.seed,
        "best": best,
        "front": rows,
    }


def write_results(result: SearchResult, out_dir: str | os.PathLike, config: Any = None, plot: bool = True) -> dict[str, Path]:
    """Write the results files into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    rows = result.rows()
    csv_rows = [
        {"rank": i, "accuracy": f"{r['accuracy']:.6f}", "latency": f"{r['latency']:.6f}", "arch_str": r["arch_str"],
         "arch": json.dumps(r["arch"], sort_keys=True)}
        for i, r in enumerate(rows)
    ]
    paths["pareto.csv"] = atomic_write(out / "pareto.csv", _csv(csv_rows, ["rank", "accuracy", "latency", "arch_str", "arch"]))
    paths["pareto.json"] = atomic_write(out / "pareto.json", json.dumps(front_json(result), indent=1) + "\n")

    hist_fields = ["gen", "phase", "n_evals", "front_size", "hypervolume", "time_s"] + [f"best_acc@{b:g}" for b in result.budgets]
    hist_rows = []
    for h in result.history:
        row = {}
        for k in hist_fields:
            v = h.get(k, "")
            row[k] = f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else ("" if isinstance(v, float) else v)
        hist_rows.append(row)
    paths["history.csv"] = atomic_write(out / "history.csv", _csv(hist_rows, hist_fields))

    if config is not None:
        try:
            from omegaconf import OmegaConf

            text = OmegaConf.to_yaml(config, resolve=True) if OmegaConf.is_config(config) else OmegaConf.to_yaml(OmegaConf.create(config))
        except Exception:  # plain data without omegaconf support
            text = json.dumps(config, indent=1, default=str)
        paths["config.yaml"] = atomic_write(out / "config.yaml", text)

    if plot:
        paths["pareto.png"] = plot_front(result, out / "pareto.png")
    return paths


def plot_front(result: SearchResult, path: str | os.PathLike) -> Path:
    """Accuracy vs latency of the front, budgets as dashed lines with the best arch under each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scale = 100.0 if len(result.accuracy) and abs(result.accuracy).max() <= 1.0 else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.step(result.latency, result.accuracy * scale, where="post", color="tab:blue", lw=1, alpha=0.6)
    ax.plot(result.latency, result.accuracy * scale, "o", ms=3, color="tab:blue", label=f"Pareto front ({len(result)} archs)")
    for b, item in result.best_at_budgets().items():
        ax.axvline(b, color="tab:gray", ls="--", lw=0.8)
        if item is not None:
            _, acc, lat = item
            ax.plot([lat], [acc * scale], "*", ms=10, color="tab:red")
            ax.annotate(f"{acc * scale:.2f}" + ("%" if scale == 100 else ""), (lat, acc * scale), textcoords="offset points",
                        xytext=(-4, 6), ha="right", fontsize=8)
    ax.set_xlabel("latency" + (" (ms)" if True else ""))
    ax.set_ylabel("predicted top-1 (%)" if scale == 100 else "accuracy")
    ax.set_title(f"{getattr(result.space, 'name', 'space')}: {result.n_evals} evals, {result.wall_time:.1f} s")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def load_front(path: str | os.PathLike, space: Any = None) -> list[dict]:
    """Rows of a ``pareto.json`` (file or its folder) with ``arch`` validated into the space's arch type
    (``space`` defaults to the one recorded in the file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "pareto.json"
    data = json.loads(p.read_text())
    if space is None:
        from hydra.utils import instantiate

        space = instantiate(data["space"], _convert_="all")
    out = []
    for row in data["front"]:
        out.append({**row, "arch": space.validate(row["arch"])})
    return out
