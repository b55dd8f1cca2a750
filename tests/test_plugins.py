"""The README's plug-in examples, run as a user would: a space of one's own (``register_space``) in a
module in the working directory, searched through the ``hwnas-search`` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

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
    runs = list((tmp_path / "outputs" / "search").glob("custom-*/pareto.json"))  # the default run folder
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
