"""Shared helpers of the tests: toy predictors importable by subprocesses and Dask workers, the
environment of a command run as a subprocess, filling a measurement plan."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from hwnas.spaces import create_space


TESTS = Path(__file__).resolve().parent


def cli_env(extra: dict | None = None, tests_on_path: bool = True) -> dict:
    """The environment of a command run as a subprocess: hydra's one-line errors (no HYDRA_FULL_ERROR),
    the tests folder on the import path (the toy predictors' ``_target_``; else no PYTHONPATH at all,
    as a user has), plus ``extra``."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    if tests_on_path:
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    else:
        env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


def fill_plan(plan_csv, values) -> list[dict]:
    """Write ``values`` (one per row, or a function of the row) into a plan's latency_ms column; returns the rows."""
    with open(plan_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["latency_ms"] = values(r) if callable(values) else values[i]
    with open(plan_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


class ToyAccuracy:
    """Deterministic linear score over the one-hot features of a categorical space. Integer weights:
    sums are exact, so a batch and one-at-a-time evaluation give bit-identical values."""

    def __init__(self, space="nasbench201"):
        self.space = create_space(space) if isinstance(space, str) else space
        n = self.space.features(self.space.sample(1, 0)).shape[1]
        self.w = np.arange(n, dtype=float) % 7

    def predict(self, archs):
        return self.space.features(list(archs)) @ self.w


class ToyLatency(ToyAccuracy):
    def __init__(self, space="nasbench201"):
        super().__init__(space)
        self.w = 1.0 + (np.arange(len(self.w)) * 5) % 11

    def predict(self, archs):
        return 1.0 + super().predict(archs)


class MacsLatency:
    """A stand-in target device for MBConv spaces: latency (ms) proportional to MACs."""

    def __init__(self, space, ms_per_gmac: float = 20.0):
        self.space, self.k = space, ms_per_gmac

    def predict(self, archs):
        return np.array([self.space.macs(a) / 1e9 * self.k for a in archs])


def search_front(out_dir, ckpt, seed=1, n_gen=8):
    """One checkpointed search on NAS-Bench-201 with the toy predictors; writes pareto.json."""
    from hwnas.search.checkpoint import SearchCheckpoint
    from hwnas.search.nsga import run_search
    from hwnas.search.results import write_results

    space = create_space("nasbench201")
    ck = SearchCheckpoint(ckpt, settings={"seed": seed, "n_gen": n_gen})
    res = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=20, n_gen=n_gen, seed=seed, refine=2,
                     verbose=False, checkpoint=ck)
    write_results(res, out_dir, plot=False)
    return ck, res


def comparable(pareto_json_path):
    """pareto.json without its wall time (and the digest, which covers it)."""
    d = json.loads(open(pareto_json_path).read())
    d.pop("wall_time_s", None)
    d.pop("digest", None)
    return d


if __name__ == "__main__":  # python _pipeline_helpers.py OUT_DIR CKPT
    ck, res = search_front(sys.argv[1], sys.argv[2])
    print(json.dumps({"resumed_from": ck.resumed_from, "saved": ck.saved, "n_evals": res.n_evals}))


# --------------------------------------------------------------------------- pytest fixture
import pytest  # noqa: E402

# reduce.apply=true: the small run also covers the reduced (restricted) space through every later stage
SMALL = ["target.device=titan_rtx_1", "samples.pool=400", "samples.k=10", "reduce.n_samples=32", "reduce.apply=true", "search.n_gen=6",
         "search.pop_size=16", "search.refine.passes=1", "search.verbose=false", "search.plot=false"]


def compose_pipeline(overrides, name="pipeline_nasbench201"):
    from hydra import compose, initialize_config_module

    with initialize_config_module("hwnas.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="session")
def small_pipeline_cfg(data_dir):
    return compose_pipeline(SMALL + [f"assets.mirror={data_dir}"])


@pytest.fixture(scope="session")
def small_pipeline_run(small_pipeline_cfg, tmp_path_factory):
    """One small pipeline study (NAS-Bench-201, pixel3 -> titan_rtx_1): (run_dir, summary)."""
    from hwnas.search.pipeline import run_pipeline

    d = tmp_path_factory.mktemp("pipeline") / "run"
    return d, run_pipeline(small_pipeline_cfg, d)
