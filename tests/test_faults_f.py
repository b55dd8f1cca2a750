"""Fault audit F: a target or predictor returning the wrong number of values, or latencies <= 0, is refused
before anything is stored; ``python -m hwnas.supernet.evaluate`` checks every argument before any work;
the model card's timm code runs as written; a ``--multirun`` sweep resumes after a kill and exits 2 when a
job failed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import cli_env
from test_cli import TINY, run_cli
from test_export import R, exported  # noqa: F401  (exported: the export fixture)

from hwnas.predictors.base import PredictionError, check_values
from hwnas.spaces import create_space


# ============================================================================ plug-ins (by _target_)
class HashTarget:
    """A fake device: latency from a hash of the arch; ``HWNAS_TEST_BAD`` corrupts its answer."""

    def __init__(self, space, device="hashdev"):
        self.space, self.device = space, device

    def predict(self, archs):
        v = np.array([1.0 + (zlib.crc32(str(a).encode()) % 1000) / 100.0 for a in archs])
        bad = os.environ.get("HWNAS_TEST_BAD", "")
        if bad == "extra":
            return np.concatenate([[4.2], v])
        if bad == "short":
            return v[:-1]
        if bad == "2d":
            return np.stack([v, v * 10], 1)
        if bad == "nan":
            v[::3] = np.nan
        if bad == "neg":
            v = -v
        if bad == "zero":
            v[1:] = 0.0
        return v


class ToyLatency:
    """OFA-space latency (``test_faults_f.ToyLatency``); ``HWNAS_TEST_BAD=neg|zero`` makes it wrong;
    ``HWNAS_TEST_SLOW`` (seconds) slows each call (a sweep to kill while it runs)."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        time.sleep(float(os.environ.get("HWNAS_TEST_SLOW", "0")))
        v = np.array([1.0 + 0.01 * sum(a.ks[s] ** 2 * a.e[s] for s in a.active_slots()) * (a.r / 224) ** 2 for a in archs])
        bad = os.environ.get("HWNAS_TEST_BAD", "")
        if bad == "neg":
            return -v
        if bad == "zero":
            return np.zeros(len(v))
        return v


class NegativeAccuracy:
    """An accuracy in any unit (here negative: e.g. minus a loss) is allowed: only NaN / inf are not."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        return np.array([-5.0 + 0.001 * sum(a.ks[s] * a.e[s] for s in a.active_slots()) for a in archs])


OFA_TOYS = ["accuracy=custom", "accuracy._target_=test_cli.ToyAccuracy", "latency=custom",
            "latency._target_=test_faults_f.ToyLatency"]


# ============================================================================ 1. pipeline target
@pytest.mark.parametrize("bad, what", [
    ("extra", "predict() returned 17 values for 16 archs"),
    ("short", "predict() returned 15 values for 16 archs"),
    ("2d", "predict() returned an array of shape (16, 2) for 16 archs"),
    ("nan", "predict() returned a non-finite value (nan) for 6 of 16 archs"),
    ("neg", "predict() returned a latency <= 0"),
    ("zero", "predict() returned a latency <= 0 (0) for 15 of 16 archs"),
])
def test_target_ledger_checks_a_whole_answer_before_storing_any(tmp_path, monkeypatch, bad, what):
    from hwnas.predictors.measure.store import MeasurementStore
    from hwnas.search.pipeline.evaluate import TargetLedger

    space = create_space("nasbench201")
    archs = space.sample(16, np.random.default_rng(0))
    monkeypatch.setenv("HWNAS_TEST_BAD", bad)
    target = HashTarget(space)
    target.config = type("C", (), {"chunk": 16})()  # one call for all 16 archs
    ledger = TargetLedger(tmp_path, space, target, {"device": "hash"})
    with pytest.raises(PredictionError) as ei:
        ledger.measure(archs, tmp_path / "stage", "samples")
    msg = str(ei.value)
    assert msg.startswith("target (HashTarget): ") and what in msg and "\n" not in msg, msg
    assert ledger.new == 0 and ledger.count == 0
    assert MeasurementStore(tmp_path / "measurements.sqlite").records() == []
    # the same target, mended: every arch gets its own latency (nothing shifted, nothing stuck)
    monkeypatch.setenv("HWNAS_TEST_BAD", "")
    got = ledger.measure(archs, tmp_path / "stage", "samples")
    np.testing.assert_allclose(got, HashTarget(space).predict(archs))
    assert ledger.count == 16


@pytest.mark.slow
def test_pipeline_custom_target_with_an_extra_value_exits_2_and_stores_nothing(tmp_path):
    from hwnas.predictors.measure.store import MeasurementStore

    args = ["--config-name", "pipeline_nasbench201", "target=custom", "target._target_=test_faults_f.HashTarget",
            "target.device=hash_extra", "~target.dataset", "~target.outside", "search.pop_size=16", "search.n_gen=3",
            "search.refine.passes=0", f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run([sys.executable, "-m", "hwnas.search.pipeline.cli", *args], cwd=tmp_path, capture_output=True,
                       text=True, env=cli_env({"HWNAS_TEST_BAD": "extra", "HWNAS_CONFIG_DIR": str(tmp_path / "uc"),
                                               "OPENBLAS_NUM_THREADS": "1"}), timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"hwnas-pipeline: error: target \(HashTarget\): predict\(\) returned \d+ values for \d+ archs?; "
                        r"it must return one per arch", last), last
    db = tmp_path / "run" / "measurements.sqlite"
    assert not db.exists() or MeasurementStore(db).records() == []


# ============================================================================ 2. search: latency <= 0
def test_check_values_messages_and_what_passes():
    archs = ["a", "b", "c"]
    np.testing.assert_array_equal(check_values([[1.0], [2.0], [3.0]], archs, "latency (X)", positive=True), [1, 2, 3])
    np.testing.assert_array_equal(check_values([-1.0, 0.0, 2.0], archs, "accuracy (Y)", finite=True), [-1, 0, 2])
    for values, what in ((None, "returned None for 3 archs"), (5.0, "returned a scalar for 3 archs"),
                         (["x", "y", "z"], "returned text, not numbers"), (["1", "2", "3"], "returned text, not numbers"),
                         (np.ones(3, bool), "returned booleans, not numbers"), ([{}, {}, {}], "returned list, not numbers"),
                         ([1.0, -2.0, 3.0], "latency <= 0 (-2) for 1 of 3 archs, e.g. b"),
                         ([1.0, np.inf, 3.0], "non-finite value (inf) for 1 of 3 archs, e.g. b")):
        with pytest.raises(PredictionError, match=re.escape(what)):
            check_values(values, archs, "latency (X)", positive=True)
    # a torch predictor's output, grad and all (its predict() not under no_grad: "Can't call numpy() on Tensor that
    # requires grad" was a 71-line traceback)
    import torch

    t = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True) * 2
    np.testing.assert_array_equal(check_values(t, archs, "latency (X)", positive=True), [2, 4, 6])


@pytest.mark.parametrize("bad, value", [("neg", r"-\d[\d.]*"), ("zero", "0")])
def test_search_refuses_latencies_not_above_zero(tmp_path, bad, value):
    run = tmp_path / "run"
    p = run_cli([*OFA_TOYS, "search.pop_size=16", "search.n_gen=3", "search.refine.passes=0", f"hydra.run.dir={run}"],
                cwd=tmp_path, extra_env={"HWNAS_TEST_BAD": bad})
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert re.fullmatch(rf"hwnas-search: error: latency \(ToyLatency\): predict\(\) returned a latency <= 0 \({value}\) "
                        r"for 16 of 16 archs, e.g. r\d+:[k\de./]+; a latency must be > 0", lines[0]), lines[0]
    assert not (run / "pareto.json").exists() and "@" not in p.stdout


def test_search_allows_any_finite_accuracy(tmp_path):
    p = run_cli(["accuracy=custom", "accuracy._target_=test_faults_f.NegativeAccuracy", "latency=custom",
                 "latency._target_=test_faults_f.ToyLatency", "search.pop_size=16", "search.n_gen=3",
                 "search.refine.passes=0", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())["front"]
    assert front and all(r["accuracy"] < 0 and r["latency"] > 0 for r in front)


# ============================================================================ 3. supernet evaluate CLI
def _image_folder(root: Path, n: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in {"blue": (30, 60, 220), "red": (220, 40, 40)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (36, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    _image_folder(root / "train", 3, 0)
    _image_folder(root / "val", 2, 1)
    return root


def _eval(argv, capsys):
    from hwnas.supernet.evaluate import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _bad_args(tmp_path):
    not_sqlite = tmp_path / "passwd"
    not_sqlite.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cases = [
        (["--random", "-3"], "--random=-3"),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--batch-size", "-2"], "--batch-size=-2"),
        (["--n-val", "-5"], "--n-val=-5"),
        (["--n-calib", "0"], "--n-calib=0"),
        (["--workers", "-1"], "--workers=-1"),
        (["--seed", "-1"], "--seed=-1"),
        (["--device", "nope"], "--device='nope' is unknown"),
        (["--device", "cuda:99"], "--device='cuda:99' is not available"),
        (["--cache", str(not_sqlite)], f"--cache {not_sqlite} is not an SQLite file"),
        (["--cache", str(tmp_path)], f"--cache {tmp_path} is a folder"),
        (["--out", str(tmp_path)], f"--out {tmp_path} is a folder"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device='cuda' is not available on this machine (0 CUDA device(s))"))
    return cases


def test_evaluate_cli_checks_every_argument_before_any_work(images, tmp_path, capsys, monkeypatch):
    import hwnas.supernet.evaluate as ev

    def no_work(*a, **k):
        raise AssertionError("the evaluation started before the arguments were checked")

    monkeypatch.setattr(ev, "SupernetAccuracy", no_work)
    monkeypatch.setattr(ev, "create_space", no_work)
    common = ["--space", "ofa_mbv3_w10", "--checkpoint", "none", "--data", str(images), "--random", "1",
              "--n-calib", "4", "--batch-size", "4", "--workers", "0"]
    for extra, what in _bad_args(tmp_path):
        code, err = _eval(common + extra, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (extra, err)
        assert lines[0].startswith("python -m hwnas.supernet.evaluate: error: " + what), (extra, lines[0])
    assert (tmp_path / "passwd").read_text().startswith("root:")  # left as it was


def test_evaluate_cli_broken_cache_is_one_line_and_a_good_run_writes_its_csv(images, tmp_path, capsys):
    common = ["--space", "ofa_mbv3_w10", "--checkpoint", "none", "--data", str(images), "--arch",
              "r128:k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3", "--n-calib", "4", "--batch-size", "4",
              "--workers", "0", "--device", "cpu"]
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000)
    code, err = _eval(common + ["--cache", str(broken)], capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "is corrupted or not an hwnas cache" in err, err
    out = tmp_path / "new" / "acc.csv"
    code, err = _eval(common + ["--cache", str(tmp_path / "c.sqlite"), "--out", str(out)], capsys)
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "arch,arch_str,top1,top5,loss,n"


# ============================================================================ 4. the model card's timm code
def test_model_card_code_runs_verbatim_in_a_fresh_python(exported, tmp_path):
    """The card's timm block, as written, in a new interpreter (where a plain ``import timm`` first can fail
    next to a mismatched torchvision): exit 0, and the model's logits equal the TorchScript export's."""
    space, arch, out, path = exported
    card = (path / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    timm_code = next(b for b in blocks if "register_timm" in b)
    ts_code = next(b for b in blocks if "torch.jit.load" in b)
    check = (
        "import torch\n"
        f"x = torch.randn(2, 3, {R}, {R}, generator=torch.Generator().manual_seed(3))\n"
        "with torch.no_grad():\n"
        "    a, b = model(x), m.eval()(x)\n"
        "torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)\n"
        "assert a.abs().max() > 1e-3\n"
        "assert finetune.get_classifier().out_features == 10\n"
        "print('same logits')\n"
    )
    script = tmp_path / "card.py"
    script.write_text(timm_code + "\n" + ts_code + "\n" + check)
    env = cli_env(tests_on_path=False)
    p = subprocess.run([sys.executable, str(script)], cwd=path, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "same logits" in p.stdout
    assert timm_code.startswith("from hwnas.supernet.timm_export import register_timm\nimport timm\n")


def test_importing_timm_export_makes_timm_importable():
    p = subprocess.run([sys.executable, "-c", "from hwnas.supernet.timm_export import register_timm\nimport timm\n"
                        "print(timm.create_model)"], capture_output=True, text=True, env=cli_env(tests_on_path=False),
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


# ============================================================================ 5. --multirun
def _jobs(sweep: Path) -> list[dict]:
    return json.loads((sweep / "jobs.json").read_text())["jobs"]


@pytest.mark.slow
def test_multirun_jobs_use_their_settings_folder_and_resume_after_a_kill(tmp_path):
    """Each job runs in outputs/search/<space>-<key> (the folder a single run of its settings uses); a sweep
    killed in its second job and run again reports the first as done and resumes the second from its
    checkpoint; the summary of each sweep goes to its own folder, listing the jobs' folders."""
    sweep_args = ["--multirun", *OFA_TOYS, "search.budgets=[10],[14]", *TINY, "search.checkpoint_s=0", "search.plot=false"]
    env = cli_env({"HWNAS_TEST_SLOW": "0.05"})
    p = subprocess.Popen([sys.executable, "-m", "hwnas.search", *sweep_args, f"hydra.sweep.dir={tmp_path / 's1'}"],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 200
        while time.time() < deadline and p.poll() is None:
            jobs = _jobs(tmp_path / "s1") if (tmp_path / "s1" / "jobs.json").is_file() else []
            if len(jobs) == 2 and (Path(jobs[1]["dir"]) / "checkpoint.npz").is_file():
                break
            time.sleep(0.05)
        assert p.poll() is None, "the sweep ended before it could be killed: " + p.stderr.read()[-2000:]
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    first, second = (Path(j["dir"]) for j in _jobs(tmp_path / "s1"))
    assert first.parent == second.parent == tmp_path / "outputs" / "search"
    assert first.name.startswith("ofa_mbv3_w12-") and first != second
    done = json.loads((first / "pareto.json").read_text())
    assert not done.get("partial") and (second / "checkpoint.npz").is_file()
    before = (first / "pareto.json").read_bytes()

    p2 = run_cli([*sweep_args, f"hydra.sweep.dir={tmp_path / 's2'}"], cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr[-3000:]
    log = p2.stdout + p2.stderr
    assert f"{first} already holds the finished results of this search" in log, log[-3000:]
    m = re.search(r"resuming the search from step \d+.*?\((\d+) evaluations\)", log)
    assert m and int(m.group(1)) >= 16, log[-3000:]  # (at least the initial population kept, not redone)
    assert (first / "pareto.json").read_bytes() == before  # not redone
    assert [Path(j["dir"]) for j in _jobs(tmp_path / "s2")] == [first, second]
    assert not json.loads((second / "pareto.json").read_text()).get("partial")
    assert not (second / "checkpoint.npz").exists()
    rows = (tmp_path / "s2" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in r for r in rows[1:])
    assert rows[1].startswith(f"outputs/search/{first.name},") and "search.budgets=[10]" in rows[1]
    assert not list((tmp_path / "s2").glob("*/pareto.json"))  # the sweep folder holds the summary, not the jobs
    # a single run of the first job's settings finds the same folder
    p3 = run_cli([*OFA_TOYS, "search.budgets=[10]", *TINY, "search.checkpoint_s=0", "search.plot=false"], cwd=tmp_path,
                 extra_env={"HWNAS_TEST_SLOW": "0"})
    assert p3.returncode == 0, p3.stderr[-3000:]
    assert f"{first} already holds the finished results" in p3.stdout + p3.stderr


@pytest.mark.slow
def test_multirun_with_a_failed_job_exits_2_naming_it_and_a_fixed_rerun_clears_it(tmp_path):
    args = ["--multirun", *OFA_TOYS, *TINY, "search.plot=false", f"hydra.sweep.dir={tmp_path / 's'}"]
    p = run_cli([*args, "search.budgets=[0.001],[14]"], cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    jobs = [Path(j["dir"]) for j in _jobs(tmp_path / "s")]
    last = p.stderr.strip().splitlines()[-1]
    rel = (jobs[0] / "failed.json").relative_to(tmp_path).as_posix()
    assert last.startswith("hwnas-search: error: 1 of 2 sweep jobs failed (" + rel) and "summary.md" in last, last
    assert (jobs[0] / "failed.json").is_file() and (jobs[1] / "pareto.json").is_file()
    summary = (tmp_path / "s" / "summary.csv").read_text()
    assert "failed: hwnas-search: error: search.budgets=[0.001]" in summary
    # the good job alone again: done, exit 0
    p2 = run_cli([*args, "search.budgets=[14]"], cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr[-3000:]


@pytest.mark.slow
def test_sweep_jobs_sharing_one_folder_are_refused_and_the_first_kept(tmp_path):
    """A fixed hydra.run.dir for a sweep: job #1 replaced (overwrite) or 'resumed' job #0's results, and the
    end said '1 of 1 sweep jobs failed' for two jobs."""
    import json

    run = tmp_path / "shared"
    args = ["--multirun", *OFA_TOYS, *TINY, "search.plot=false", f"hydra.sweep.dir={tmp_path / 's'}",
            f"hydra.run.dir={run}", "search.seed=3,4", "search.overwrite=true"]
    p = run_cli(args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"sweep jobs #0 and #1 run in the same folder {run}" in p.stdout + p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("hwnas-search: error: 1 of 2 sweep jobs failed")
    assert json.loads((run / "pareto.json").read_text())["seed"] == 3  # job #0's results, not replaced


@pytest.mark.slow
def test_sweep_jobs_of_the_same_settings_are_one_search_not_failures(tmp_path):
    """search.seed=0,0 (or null,null, or overrides that change no result) was refused as 'jobs #0 and #1 run in the
    same folder (hydra.run.dir is the same)' -- which the user never set --, counted '1 of 2 failed' and left
    failed.json in job #0's finished folder."""
    args = ["--multirun", *OFA_TOYS, *TINY, "search.budgets=[14]", f"hydra.sweep.dir={tmp_path / 's'}"]
    p = run_cli([*args, "search.seed=0,0", "search.plot=true,false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "sweep job #1 has the same settings as job #0: the same search" in log
    assert "sweep job #3 has the same settings as job #0" in log
    assert p.stderr.strip().splitlines()[-1].startswith("hwnas-search: sweep summary: s/summary.md")  # (it never said where)
    (folder,) = {Path(j["dir"]) for j in _jobs(tmp_path / "s")}
    assert (folder / "pareto.json").is_file() and not (folder / "failed.json").exists()
    rows = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert len(rows) == 2 and ",ok," in rows[1] and "(jobs #0, #1, #2, #3: the same settings, one search)" in rows[1]
