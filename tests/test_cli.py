"""hwnas-search end to end through the hydra CLI (subprocess) and through the compose API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _pipeline_helpers import cli_env

TINY = ["search.pop_size=16", "search.n_gen=3", "search.refine.passes=1", "search.refine.members=8", "search.plot=true"]


class ToyAccuracy:
    """A custom predictor plugged in by _target_ (``test_cli.ToyAccuracy``): more compute, more accuracy."""

    def __init__(self, space=None, scale: float = 1.0):
        self.space = space
        self.scale = float(scale)

    def predict(self, archs):
        return np.array([self.scale * (0.6 + 0.001 * sum(a.ks[s] * a.e[s] for s in a.active_slots()) + 0.0002 * a.r) for a in archs])


class ToyLatency:
    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        return np.array([1.0 + 0.01 * sum(a.ks[s] ** 2 * a.e[s] for s in a.active_slots()) * (a.r / 224) ** 2 for a in archs])


def run_cli(args, cwd, extra_env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "hwnas.search", *args], cwd=cwd, env=cli_env(extra_env), capture_output=True, text=True,
        timeout=timeout)


def test_tiny_search_end_to_end(tmp_path, data_dir):
    """Real OFA predictor + Note10 LUT, run from an unrelated cwd with a relative mirror path."""
    work = tmp_path / "work"
    work.mkdir()
    run_dir = tmp_path / "run"
    mirror = os.path.relpath(data_dir, work)
    p = run_cli(
        ["space=ofa_mbv3_w12", "accuracy=ofa_predictor", "latency=note10_lut", f"assets.mirror={mirror}",
         *TINY, f"hydra.run.dir={run_dir}"],
        cwd=work,
        extra_env={"HWNAS_ASSETS_MIRROR": ""},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("pareto.csv", "pareto.json", "history.csv", "pareto.svg", "config.yaml", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    log = p.stdout + p.stderr
    assert "gen   3" in log and "@25" in log  # per-generation progress line

    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    data = json.loads((run_dir / "pareto.json").read_text())
    assert data["budgets"] == [15.0, 20.0, 25.0, 30.0]
    archs = [space.validate(r["arch"]) for r in data["front"]]
    assert [str(a) for a in archs] == [r["arch_str"] for r in data["front"]]
    acc = np.array([r["accuracy"] for r in data["front"]])
    lat = np.array([r["latency"] for r in data["front"]])
    np.testing.assert_allclose(acc, OFAAccuracyPredictor(space=space, mirror=data_dir).predict(archs), atol=1e-6)
    np.testing.assert_allclose(lat, LookupTableLatency(space, mirror=data_dir).predict(archs), atol=1e-9)
    assert (lat <= 30.0).all() and (np.diff(lat) > 0).all() and (np.diff(acc) > 0).all()
    hist = (run_dir / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + 3 + 1  # header, 3 generations, 1 refinement pass
    cfg = (run_dir / "config.yaml").read_text()
    assert "pop_size: 16" in cfg and "resolutions:" in cfg


def test_predictor_only_search_never_imports_torch(tmp_path, data_dir):
    """The README command's objects, search and results (its plot included) need neither torch nor matplotlib."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from hwnas.search.cli import run_from_config\n"
        "with initialize_config_module(config_module='hwnas.conf', version_base='1.3'):\n"
        f"    cfg = compose('config', overrides=['assets.mirror={data_dir}', 'search.n_gen=2', 'search.pop_size=16',\n"
        "                                       'search.refine.passes=1', 'search.verbose=false'])\n"
        f"run_from_config(cfg, out_dir={str(tmp_path / 'run')!r})\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "pareto.json").is_file() and (tmp_path / "run" / "pareto.svg").is_file()


def test_custom_predictors_by_target(tmp_path):
    """Both predictors defined in this test module, plugged in by _target_ with an extra argument."""
    run_dir = tmp_path / "run"
    p = run_cli(
        ["accuracy=custom", "accuracy._target_=test_cli.ToyAccuracy", "+accuracy.scale=0.5",
         "latency=custom", "latency._target_=test_cli.ToyLatency", "search.budgets=[10,14]",
         *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    from hwnas.spaces import create_space

    data = json.loads((run_dir / "pareto.json").read_text())
    space = create_space("ofa_mbv3_w12")  # no latency config setting resolutions: the space's defaults
    assert data["space"] == {"space": "ofa_mbv3_w12", "options": {**data["space"]["options"], "resolutions": space.resolutions}}
    archs = [space.validate(r["arch"]) for r in data["front"]]
    np.testing.assert_allclose([r["accuracy"] for r in data["front"]], ToyAccuracy(scale=0.5).predict(archs))
    np.testing.assert_allclose([r["latency"] for r in data["front"]], ToyLatency().predict(archs))
    assert max(r["latency"] for r in data["front"]) <= 14


def test_unknown_space_is_one_clear_error(tmp_path):
    p = run_cli(["space.name=ofa_mbv9", "latency=custom", "latency._target_=test_cli.ToyLatency",
                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert p.returncode == 2
    err = p.stderr
    assert "hwnas-search: error: space" in err and "ofa_mbv9" in err and "ofa_mbv3_w12" in err
    assert "Traceback" not in err


def test_unknown_config_name_lists_options(tmp_path):
    p = run_cli(["space=nope", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert p.returncode != 0
    assert "space/nope" in p.stderr and "ofa_mbv3_w12" in p.stderr


# ------------------------------------------------------------------ in-process (compose API): fast checks
def compose(overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="hwnas.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


def test_config_tree_defaults_and_overrides():
    cfg = compose([])
    assert cfg.space.name == "ofa_mbv3_w12" and list(cfg.space.resolutions) == [160, 176, 192, 208, 224]
    assert list(cfg.search.budgets) == [15, 20, 25, 30]
    assert cfg.accuracy._target_.endswith("OFAAccuracyPredictor")
    cfg = compose(["search.budgets=[20]", "space.resolutions=[176,224]", "search.seed=5"])
    assert list(cfg.search.budgets) == [20] and list(cfg.space.resolutions) == [176, 224] and cfg.search.seed == 5
    cfg = compose(["space=proxyless_mobile", "latency=proxyless_mobile_lut"])
    assert cfg.space.name == "proxyless_mobile" and list(cfg.space.resolutions) == [224]
    for name in ("ofa_mbv3_w10", "ofa_proxyless_w13"):
        assert compose([f"space={name}"]).space.name == name


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["search.pop_size=2"], "pop_size"),
        (["search.crossover.mode=twopoint"], "crossover.mode"),
        (["+search.popsize=10"], "unknown key"),
        (["search.algorithm=cmaes"], "search.algorithm"),
        (["accuracy=custom"], "accuracy._target_"),
        (["space.depth_choices=[5]"], "space.*depth_choices"),
        (["assets.mirror=/nonexistent/dir"], "assets.mirror"),
    ],
)
def test_bad_values_raise_config_error(overrides, match, tmp_path):
    from hwnas.search.cli import ConfigError, run_from_config

    base = ["latency=custom", "latency._target_=test_cli.ToyLatency", "accuracy._target_=test_cli.ToyAccuracy",
            "~accuracy.path", "search.n_gen=1", "search.pop_size=8", "search.verbose=false", "search.refine.passes=0",
            "search.plot=false"]
    if "accuracy=custom" in overrides:
        base = [o for o in base if not o.startswith(("accuracy.", "~accuracy"))]
    cfg = compose(base + overrides)
    with pytest.raises(ConfigError, match=match):
        run_from_config(cfg, out_dir=tmp_path)


@pytest.mark.slow
def test_multirun_summary_and_a_failing_job_recorded(tmp_path):
    """A sweep writes one summary of every job; a job with impossible budgets is recorded, the sweep goes on,
    and the process then exits 2 with one line naming the failed job's failed.json."""
    p = run_cli(["--multirun", "accuracy=custom", "accuracy._target_=test_cli.ToyAccuracy", "latency=custom",
                 "latency._target_=test_cli.ToyLatency", "search.budgets=[10],[0.001],[14]", *TINY,
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}"], cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("hwnas-search: error: 1 of 3 sweep jobs failed") and "sweep/1/failed.json" in last, last
    sweep = tmp_path / "sweep"
    for i, b in ((0, 10), (2, 14)):
        data = json.loads((sweep / str(i) / "pareto.json").read_text())
        assert data["budgets"] == [float(b)]
        assert max(r["latency"] for r in data["front"]) <= b
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert failed["error"].startswith("hwnas-search: error: search.budgets=[0.001]") and not (sweep / "1" / "pareto.json").exists()
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("job,overrides,status,n_evals,hypervolume")
    by_job = {r.split(",")[0]: r for r in rows[1:]}
    assert by_job["0"].split(",")[2] == "ok" and by_job["2"].split(",")[2] == "ok"
    assert "failed: hwnas-search: error: search.budgets=[0.001]" in by_job["1"]
    assert "search.budgets=[14]" in by_job["2"]
    assert (sweep / "summary.md").read_text().count("\n") == 2 + 3
    assert (sweep / "fronts.png").stat().st_size > 1000
    # the jobs run in one process: the second job's figures say the peak memory is the process's
    results = [ln for i in (0, 2) for ln in (sweep / str(i) / "hwnas-search.log").read_text().splitlines()
               if "| cpu s: start-up" in ln]
    assert len(results) == 2 and "(the process's" not in results[0] and "(the process's, over its jobs so far)" in results[1]


def test_a_plugin_in_the_working_directory_imports_without_pythonpath(tmp_path, monkeypatch):
    """``latency._target_=mypkg.MyLatency`` with ./mypkg finds it, as ``python -m`` would."""
    import sys

    from omegaconf import OmegaConf

    from hwnas.predictors.build import build_predictor
    from hwnas.spaces import create_space

    pkg = tmp_path / "mypkg_cwd_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import numpy as np\n"
        "class MyLatency:\n"
        "    metric = 'latency_ms'\n"
        "    def __init__(self, space, ms=2.0):\n"
        "        self.space, self.ms = space, ms\n"
        "    def predict(self, archs):\n"
        "        return np.full(len(archs), self.ms)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    space = create_space("nasbench201")
    cfg = OmegaConf.create({"latency": {"_target_": "mypkg_cwd_probe.MyLatency", "ms": 3.0}})
    lat = build_predictor(cfg, "latency", space)
    assert lat.predict(space.sample(2, rng=0)).tolist() == [3.0, 3.0]
