"""``hwnas-search`` / ``python -m hwnas.search``: the hydra entry point of the NSGA-II search.

    hwnas-search space=ofa_mbv3_w12 accuracy=ofa_predictor latency=note10_lut assets.mirror=../shared/data
    hwnas-search search.pop_size=200 search.n_gen=100 search.seed=3 search.refine.passes=0
    hwnas-search --multirun search.budgets=[15],[20],[25]
    hwnas-search accuracy._target_=mypkg.MyPredictor +accuracy.some_arg=1   # any predictor by _target_

The config tree ships in the package ``hwnas.conf`` (``config.yaml`` + groups ``space/``,
``accuracy/``, ``latency/``, ``search/``). Predictors are built with
``hydra.utils.instantiate(cfg.accuracy, space=space)`` (same for ``cfg.latency``), so a predictor class
takes a ``space`` keyword. Results go to hydra's run directory (see :mod:`hwnas.search.results`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("hwnas.search")

CONFIG_PATH = "pkg://hwnas.conf"
CONFIG_NAME = "config"


# the one config -> object path (kept importable from here for existing code)
from hwnas.predictors.build import ConfigError, apply_assets, build  # noqa: E402,F401


def search_kwargs(s: Any) -> dict:
    """``cfg.search`` -> keyword arguments of :func:`hwnas.search.nsga.run_search`."""
    s = OmegaConf.to_container(s, resolve=True) if OmegaConf.is_config(s) else dict(s)
    algo = s.get("algorithm", "nsga2")
    if algo != "nsga2":
        raise ConfigError(f"search.algorithm={algo!r} is unknown; allowed values: ['nsga2']")
    known = {"algorithm", "pop_size", "n_gen", "seed", "budgets", "constraint", "max_latency", "hv_ref", "sampling",
             "crossover", "mutation", "refine", "threads", "verbose", "plot"}
    extra = sorted(set(s) - known)
    if extra:
        raise ConfigError(f"search has unknown key(s) {extra}; known keys: {sorted(known)}")
    samp, cx, mut, ref = (s.get(k) or {} for k in ("sampling", "crossover", "mutation", "refine"))
    return dict(
        pop_size=int(s.get("pop_size", 100)),
        n_gen=int(s.get("n_gen", 40)),
        seed=s.get("seed", 0),
        budgets=s.get("budgets") or [],
        constraint=bool(s.get("constraint", True)),
        max_latency=s.get("max_latency"),
        hv_ref=s.get("hv_ref"),
        structured=float(samp.get("structured", 0.25)),
        crossover=cx.get("mode", "unit"),
        crossover_prob=float(cx.get("prob", 0.9)),
        mutation_rate=mut.get("rate"),
        neighbour=float(mut.get("neighbour", 0.5)),
        refine=int(ref.get("passes", 0) or 0),
        refine_members=ref.get("members"),
        refine_moves=ref.get("moves", "grid"),
        threads=s.get("threads", 1),
        verbose=bool(s.get("verbose", True)),
    )


def run_from_config(cfg: Any, out_dir: str | os.PathLike | None = None) -> Any:
    """Build everything from ``cfg``, search, write the results into ``out_dir`` (default: hydra's
    run directory); returns the :class:`~hwnas.search.nsga.SearchResult`."""
    from .nsga import run_search
    from .results import write_results

    apply_assets(cfg)
    kwargs = search_kwargs(cfg.search)
    space, accuracy, latency = build(cfg)
    if out_dir is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            out_dir = HydraConfig.get().runtime.output_dir
        except ValueError:
            out_dir = os.getcwd()
    try:
        result = run_search(space, accuracy, latency, log=log.info, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    paths = write_results(result, out_dir, config=cfg, plot=bool(cfg.search.get("plot", True)))
    if not kwargs["verbose"]:
        print(result.summary())
    log.info(f"results: {Path(out_dir).resolve()} ({', '.join(sorted(paths))})")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float:
    try:
        result = run_from_config(cfg)
    except ConfigError as exc:
        print(f"hwnas-search: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(result.hypervolume)  # sweepers (e.g. optuna) can maximise it


def main() -> None:
    """Console-script entry point (``hwnas-search``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
