"""Write and read a search's results directory.

``write_results(result, out_dir, config=None)`` writes (atomically, temp file + rename):

* ``pareto.csv`` -- one row per front member, sorted by latency: ``rank, accuracy, latency, arch_str, arch``
  (``arch`` is the JSON dict in OFA's convention);
* ``pareto.json`` -- ``{"space": {"space": name, "options": {...}}, "budgets": [...], "best": {budget: row},
  "front": [rows], "partial": bool, "settings_key": ...}`` where a row is
  ``{"arch": {...}, "arch_str": "...", "accuracy": .., "latency": ..}``. The space is data (a registered
  name and plain options, :mod:`hwnas.spaces.io`), never a class to build;
* ``history.csv`` -- per step (generation or refinement pass): ``gen, phase, n_evals, front_size,
  hypervolume, time_s, best_acc@<budget>...``;
* ``pareto.svg`` -- the front, every budget as a vertical line with its best arch marked (legend, no
  labels that can overlap; :mod:`hwnas.search.svgplot`, no plotting library); an older plot is
  removed when no plot is written;
* ``config.yaml`` -- the resolved config (when given).

``read_front(path)`` / ``load_front(path, space)`` read ``pareto.json`` back (file or run folder) into
validated archs with their objectives; anything malformed is one error naming the file.
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
from hwnas.spaces.errors import UserError
from hwnas.spaces.io import json_digest

from .nsga import SearchResult

#: the files a search writes into its run folder
RESULT_FILES = ("pareto.csv", "pareto.json", "history.csv", "pareto.svg", "config.yaml")


class ResultsError(UserError, ValueError):
    """A results file cannot be read; the message names the file and what is wrong."""


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()


def space_block(space: Any) -> dict:
    """The ``space`` entry of ``pareto.json``: :func:`hwnas.spaces.io.space_spec`, or for a space that
    is not registered (so no file can name it) its name alone."""
    from hwnas.spaces.base import SpaceError
    from hwnas.spaces.io import space_spec

    try:
        return space_spec(space)
    except SpaceError:
        name = getattr(space, "name", type(space).__name__)
        if name not in _SAID_UNREGISTERED:
            _SAID_UNREGISTERED.add(name)
            import logging

            logging.getLogger("hwnas.search").warning(
                f"space {name!r} ({type(space).__name__}) is not registered, so the results cannot name it: hwnas-export "
                "and load_front will need the space given (--space) once it is; decorate its class with "
                "@hwnas.spaces.register_space(\"<name>\") (README: A search space of your own)")
        return {"space": None, "name": name}


_SAID_UNREGISTERED: set = set()


def front_json(result: SearchResult, key: str | None = None) -> dict:
    rows = result.rows()
    best = {}
    for b, item in result.best_at_budgets().items():
        if item is None:
            best[f"{b:g}"] = None
        else:
            arch, acc, lat = item
            best[f"{b:g}"] = {"arch": arch.to_dict(), "arch_str": str(arch), "accuracy": acc, "latency": lat}
    return {
        "space": space_block(result.space),
        "partial": bool(result.partial),
        "settings_key": key,
        "budgets": list(result.budgets),
        "objectives": {"accuracy": "maximise", "latency": "minimise"},
        **({"values": result.values} if getattr(result, "values", None) else {}),
        "hv_ref": {"accuracy": result.hv_ref[0], "latency": result.hv_ref[1]},
        "hypervolume": result.hypervolume,
        "n_evals": result.n_evals,
        "wall_time_s": result.wall_time,
        "seed": result.seed,
        **({"seed_drawn": str(result.seed_drawn)} if getattr(result, "seed_drawn", None) is not None else {}),
        "best": best,
        "front": rows,
    }


def write_results(result: SearchResult, out_dir: str | os.PathLike, config: Any = None, plot: bool = True,
                  key: str | None = None) -> dict[str, Path]:
    """Write the results files into ``out_dir``; returns ``{name: path}``. ``key``: the settings
    fingerprint recorded in ``pareto.json`` (a rerun compares it)."""
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

    (out / "pareto.png").unlink(missing_ok=True)  # the plot of an older hwnas version: stale
    if plot:
        paths["pareto.svg"] = plot_front(result, out / "pareto.svg")
    else:
        (out / "pareto.svg").unlink(missing_ok=True)  # a plot of older results would be stale
    # pareto.json last: its "partial" flag and key describe the whole set
    data = front_json(result, key)
    data["digest"] = json_digest(data)  # a pareto.json edited by hand is not taken for these results
    paths["pareto.json"] = atomic_write(out / "pareto.json", json.dumps(data, indent=1) + "\n")
    return paths


def plot_front(result: SearchResult, path: str | os.PathLike) -> Path:
    """Write the front as an SVG (:func:`hwnas.search.svgplot.front_svg`, atomically)."""
    from .svgplot import front_svg

    return atomic_write(Path(path), front_svg(result))


def read_front(path: str | os.PathLike, space: Any = None) -> tuple[Any, list[dict], dict]:
    """``(space, rows, data)`` of a ``pareto.json`` (the file or its run folder): rows with ``arch``
    validated; the space is rebuilt from the file's data through the space registry unless given."""
    from hwnas.spaces.base import SpaceError
    from hwnas.spaces.io import check_digest, space_from_spec

    p = Path(path)
    if p.is_dir():
        p = p / "pareto.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{p} does not exist; give a search run folder or its pareto.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{p} is not a pareto.json ({type(exc).__name__}: {exc}); give a search run folder") from None
    try:
        check_digest(data, str(p))
    except SpaceError as exc:
        raise ResultsError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("front"), list):
        got = type(data.get("front")).__name__ if isinstance(data, dict) and "front" in data else "no 'front'"
        raise ResultsError(f"{p}: 'front' must be a list of {{'arch': ..., 'accuracy': .., 'latency': ..}} rows (got {got})")
    if space is None:
        block = data.get("space")
        if isinstance(block, dict) and block.get("space") is None and "name" in block:
            raise ResultsError(f"{p}: space {block['name']!r} is not a registered space, so the file cannot rebuild it; pass the space")
        space = space_from_spec(block, source=p)
    rows = []
    for i, row in enumerate(data["front"]):
        if not isinstance(row, dict) or "arch" not in row:
            raise ResultsError(f"{p}: front[{i}] has no 'arch'; rows look like {{'arch': {{...}}, 'accuracy': .., 'latency': ..}}")
        try:
            rows.append({**row, "arch": space.validate(row["arch"])})
        except SpaceError as exc:
            raise ResultsError(f"{p}: front[{i}]: {exc}") from None
    return space, rows, data


def load_front(path: str | os.PathLike, space: Any = None) -> list[dict]:
    """Rows of a ``pareto.json`` (file or its folder) with ``arch`` validated into the space's arch type
    (``space`` defaults to the one recorded in the file, rebuilt as data; see :func:`read_front`)."""
    return read_front(path, space)[1]
