"""The README's plug-in examples, run as a user would: a space of one's own (``register_space``) in a
module in the working directory, searched through the ``hwnas-search`` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import cli_env

README = Path(__file__).resolve().parents[1] / "README.md"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(tests_on_path=False), capture_output=True, text=True,
                          timeout=300)


def test_readme_custom_space_searches_end_to_end(tmp_path):
    """``myspace.py`` as printed in the README, found in the working directory without PYTHONPATH: the
    search's front holds valid archs of that space, priced by the module's predictors; the registered
    space round-trips through the data form that result files use."""
    code = re.search(r"```python\n(# myspace\.py\n.*?)```", README.read_text(), re.S)
    assert code, "README.md lost its '# myspace.py' example"
    (tmp_path / "myspace.py").write_text(code.group(1))
    p = _run(["-m", "hwnas.search", "space=custom", "space._target_=myspace.WidthSpace", "+space.n_layers=6",
              "accuracy=custom", "accuracy._target_=myspace.WidthAccuracy", "latency=custom",
              "latency._target_=myspace.WidthLatency", "search.budgets=[10,14]", "search.pop_size=16", "search.n_gen=5",
              "search.plot=false"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Error getting object" not in p.stderr  # (the run folder's name imports the space quietly)
    runs = list((tmp_path / "outputs" / "search").glob("widths-*/pareto.json"))  # the default run folder: the registered name (was custom-*)
    assert len(runs) == 1, runs
    data = json.loads(runs[0].read_text())
    widths = np.array([r["arch"]["widths"] for r in data["front"]])
    assert widths.shape[1] == 6 and set(widths.ravel()) <= {16, 32, 64} and len(widths) >= 3
    np.testing.assert_allclose([r["accuracy"] for r in data["front"]], 1.0 - 8.0 / widths.sum(1))
    np.testing.assert_allclose([r["latency"] for r in data["front"]], widths.sum(1) / 16.0)
    best = data["best"]["10"]
    assert best["latency"] <= 10.0 and best["accuracy"] == max(r["accuracy"] for r in data["front"] if r["latency"] <= 10)

    p = _run(["-c", "import json, myspace\n"
                    "from hwnas.spaces import create_space\n"
                    "from hwnas.spaces.io import space_from_spec, space_spec\n"
                    "spec = space_spec(myspace.WidthSpace(n_layers=6))\n"
                    "back = space_from_spec(json.loads(json.dumps(spec)))\n"
                    "print(json.dumps([spec, back.n_layers, create_space('widths', n_layers=3).n_layers]))"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    spec, n_back, n_created = json.loads(p.stdout)
    assert spec == {"space": "widths", "options": {"name": "widths", "n_layers": 6, "choices": [16, 32, 64]}}
    assert (n_back, n_created) == (6, 3)


PLUG = '''import threading

import numpy as np
import pytest


class Acc:
    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        return np.array([0.7 + 0.001 * sum(a.ks) for a in archs])


class Lat:
    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        return np.array([5.0 + SCALE * sum(a.e) for a in archs])


SCALE = 0.1


class Raises(Acc):
    def predict(self, archs):
        raise ValueError("expected 21 features, got 20")


class TwoColumns(Acc):
    def predict(self, archs):
        v = super().predict(archs)
        return np.stack([v, v], 1)


class Locked(Acc):
    def __init__(self, space=None):
        super().__init__(space)
        self.lock = threading.Lock()


class NoPredict:
    def __init__(self, space=None):
        pass


class Slow(Acc):
    def predict(self, archs):
        import time

        time.sleep(0.002 * len(archs))
        return super().predict(archs)


class Seconds(Lat):
    def predict(self, archs):
        return super().predict(archs) / 1000
'''
SMALL = ["search.budgets=[15]", "search.pop_size=16", "search.n_gen=3", "search.refine.passes=1", "search.plot=false"]


def _plug(tmp_path: Path) -> None:
    (tmp_path / "plug").mkdir(exist_ok=True)
    (tmp_path / "plug" / "__init__.py").write_text("")
    (tmp_path / "plug" / "preds.py").write_text(PLUG)


def _search(tmp_path: Path, acc: str, *extra: str) -> subprocess.CompletedProcess:
    return _run(["-m", "hwnas.search", "accuracy=custom", f"accuracy._target_=plug.preds.{acc}", "latency=custom",
                 "latency._target_=plug.preds.Lat", *SMALL, *extra], tmp_path)


def test_a_space_whose_decode_its_validate_refuses_is_one_line(tmp_path):
    """A space of one's own whose decode() gave 3-layer archs in a 4-layer space: the search ran, and pareto.json
    held archs of another shape."""
    code = re.search(r"```python\n(# myspace\.py\n.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "myspace.py").write_text(code + "\n\nclass BadDecode(WidthSpace):\n    def decode(self, genomes):\n"
                                          "        return [WidthArch(w[:-1]) for w in super().decode(genomes)]\n")
    p = _run(["-m", "hwnas.search", "space=custom", "space._target_=myspace.BadDecode", "accuracy=custom",
              "accuracy._target_=myspace.WidthAccuracy", "latency=custom", "latency._target_=myspace.WidthLatency",
              "search.budgets=[4,5]", "search.pop_size=16", "search.n_gen=3"], tmp_path)
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("hwnas-search: error:")]
    assert p.returncode == 2 and len(err) == 1 and "decode() of genome" in err[0] and "validate() refuses" in err[0], p.stderr[-2000:]
    assert not list((tmp_path / "outputs").glob("search/*/pareto.json"))


def test_editing_a_plugin_is_another_search(tmp_path):
    """The run folder's key follows the plug-in's source file: an edited predictor is searched again in its own
    folder; it used to be told that the old results were 'finished, nothing to do'."""
    _plug(tmp_path)
    first = _search(tmp_path, "Acc")
    assert first.returncode == 0, first.stderr[-2000:]
    same = _search(tmp_path, "Acc")
    assert same.returncode == 0 and "nothing to do" in same.stdout + same.stderr
    (tmp_path / "plug" / "preds.py").write_text(PLUG.replace("SCALE = 0.1", "SCALE = 0.15"))
    edited = _search(tmp_path, "Acc")
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert "nothing to do" not in edited.stdout + edited.stderr
    runs = sorted((tmp_path / "outputs" / "search").glob("*/pareto.json"))
    assert len(runs) == 2, runs
    lat = [max(r["latency"] for r in json.loads(p.read_text())["front"]) for p in runs]
    assert lat[0] != lat[1]


def test_a_plugin_raising_in_predict_is_its_traceback_and_a_line_naming_it(tmp_path):
    """A ValueError inside a plug-in's predict() used to come out as one bare line that read like a config error
    (no class, no traceback); an exception of another type as hydra's 70-line report with no summary."""
    _plug(tmp_path)
    p = _search(tmp_path, "Raises")
    assert p.returncode == 1, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert lines[-1] == ("hwnas-search: error: accuracy (plug.preds.Raises) raised ValueError in predict(): expected 21 "
                         "features, got 20 (the plug-in's traceback is above)")
    assert 'plug/preds.py", line' in p.stderr and "Error executing job" not in p.stderr


def test_a_class_without_predict_and_bad_targets_are_one_line(tmp_path):
    _plug(tmp_path)
    (tmp_path / "plug" / "boom.py").write_text("x = 1 / 0\n")
    (tmp_path / "plug" / "needs.py").write_text("import not_installed_anywhere_xyz\n")
    cases = {
        "NoPredict": "accuracy: NoPredict has no predict(archs) method",
        "Accc": "accuracy._target_='plug.preds.Accc': module plug.preds has no 'Accc'",
    }
    for acc, expect in cases.items():
        p = _search(tmp_path, acc)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "[ERROR]" not in p.stderr, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1].startswith(f"hwnas-search: error: {expect}"), p.stderr[-500:]
    p = _run(["-m", "hwnas.search", "accuracy=custom", "accuracy._target_=plug.boom.X", "latency=custom",
              "latency._target_=plug.needs.X", *SMALL], tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        "hwnas-search: error: accuracy._target_='plug.boom.X': importing it failed: ZeroDivisionError: division by zero ("), p.stderr
    assert "boom.py, line 1)" in p.stderr
    p = _run(["-m", "hwnas.search", "accuracy=custom", "accuracy._target_=plug.preds.Acc", "latency=custom",
              "latency._target_=plug.needs.X", *SMALL], tmp_path)
    assert p.stderr.strip().splitlines()[-1] == ("hwnas-search: error: latency._target_='plug.needs.X': importing it failed: "
                                                 "it needs module 'not_installed_anywhere_xyz', which is not installed")


@pytest.mark.slow
def test_dask_evaluator_checks_each_answer_and_refuses_an_unpicklable_plugin(tmp_path):
    """Under evaluator=dask a (1, 2) answer per arch used to be taken as its first value, silently; an object
    that cannot be pickled was 600 lines of Dask's serialisation tracebacks."""
    _plug(tmp_path)
    dask = ["evaluator=dask", "evaluator.n_workers=1", "search.refine.passes=0"]
    p = _search(tmp_path, "TwoColumns", *dask)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        "hwnas-search: error: accuracy (TwoColumns): predict() returned an array of shape (1, 2) for 1 arch; it must "
        "return one value per arch (an array of shape (1,))"]
    p = _search(tmp_path, "Locked", *dask)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    assert p.stderr.startswith("hwnas-search: error: evaluator=dask: plug.preds.Locked cannot be sent to the workers "
                               "(TypeError: cannot pickle '_thread.lock' object)")
    p = _search(tmp_path, "Raises", *dask)
    assert p.returncode == 1 and "Compute Failed" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("hwnas-search: error: accuracy (plug.preds.Raises) raised ValueError")


def test_a_custom_space_the_pipeline_cannot_adapt_on_is_one_line(tmp_path):
    """The README's WidthSpace in hwnas-pipeline: an interpolation error ('space.name' not found), then, with a
    name, a 67-line AttributeError traceback from the samples stage; now one line before any work."""
    code = re.search(r"```python\n(# myspace\.py\n.*?)```", README.read_text(), re.S)
    (tmp_path / "myspace.py").write_text(code.group(1))
    p = _run(["-m", "hwnas.search.pipeline.cli", "space=custom", "space._target_=myspace.WidthSpace", "accuracy=custom",
              "accuracy._target_=myspace.WidthAccuracy", "latency=custom", "latency._target_=myspace.WidthLatency",
              "target=custom", "target._target_=myspace.WidthLatency"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(
        "hwnas-pipeline: error: space 'widths' (WidthSpace): the pipeline adapts a per-operator latency model"), p.stderr
    assert not list((tmp_path / "outputs").rglob("01_*"))  # no stage ran


def test_a_plugin_latency_in_seconds_gets_a_warning(tmp_path):
    """Latencies in seconds were searched without a word (budgets and reports then say ms)."""
    _plug(tmp_path)
    common = ["-m", "hwnas.search", "accuracy=custom", "accuracy._target_=plug.preds.Acc", "latency=custom",
              "search.pop_size=16", "search.n_gen=2", "search.refine.passes=0", "search.plot=false"]
    p = _run([*common, "latency._target_=plug.preds.Seconds"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(r"warning: latency \(Seconds\) gives latencies that imply [\d,]+ GMAC/s, faster than any device "
                     r"\(3000 GMAC/s\); are they in seconds\? write milliseconds \(x1000\)", p.stdout + p.stderr), p.stdout[-2000:]
    p = _run([*common, "latency._target_=plug.preds.Lat"], tmp_path)
    assert p.returncode == 0 and "GMAC/s" not in p.stdout + p.stderr, p.stdout[-2000:]


def test_a_slow_plugin_gets_a_hint_about_the_refinements_cost(tmp_path):
    """A predictor at a few ms per arch: the ETA of the generations said '1s', then the refinement ran for
    minutes without a word. One note says what it will cost and how to bound it."""
    _plug(tmp_path)
    common = ["-m", "hwnas.search", "latency=custom", "latency._target_=plug.preds.Lat", "search.budgets=[15]",
              "search.pop_size=16", "search.n_gen=1", "search.refine.passes=1", "search.refine.members=2",
              "search.refine.pairs=0", "search.plot=false", "accuracy=custom"]
    p = _run([*common, "accuracy._target_=plug.preds.Slow"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(r"note: the predictors take [\d.]+ ms per arch \(\d+ archs/s\).*search\.max_evals=<N>",
                     p.stdout + p.stderr), (p.stdout + p.stderr)[-2000:]
    p = _run([*common, "accuracy._target_=plug.preds.Acc"], tmp_path)
    assert p.returncode == 0 and "ms per arch" not in p.stdout + p.stderr
