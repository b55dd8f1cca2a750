"""The README cannot drift from the code: its commands run (benchmarks/readme_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker():
    """benchmarks/readme_check.py, a script (not a package module), loaded from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_check", ROOT / "benchmarks" / "readme_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


readme_check = _load_checker()

SAMPLE = """
Some text.

```bash
pip install -e .   # set-up
hwnas-search a=1 b='x # not a comment' \\
    c=2                        # a comment
# a whole-line comment

hwnas-export outputs/run1 --top 3 --checkpoint ofa_mbv3_d234_e346_k357_w1.2
hwnas-search latency=custom latency._target_=mypkg.MyLatency
```

```python
# tool.py
print("hi")
```

```python
x = 1
```
"""


def test_commands_files_and_plans_of_a_readme():
    cmds = readme_check.commands(SAMPLE)
    assert [c.text for c in cmds] == [
        "pip install -e .",
        "hwnas-search a=1 b='x # not a comment' c=2",
        "hwnas-export outputs/run1 --top 3 --checkpoint ofa_mbv3_d234_e346_k357_w1.2",
        "hwnas-search latency=custom latency._target_=mypkg.MyLatency",
    ]
    assert [c.line for c in cmds] == [5, 6, 10, 11]
    assert readme_check.files(SAMPLE) == {"tool.py": '# tool.py\nprint("hi")\n'}
    run, notes = readme_check.plan(cmds[0].text, fast=False)
    assert run is None and "installs" in notes[0]
    assert readme_check.plan(cmds[3].text, fast=False)[0] is None
    run, notes = readme_check.plan(cmds[2].text, fast=True)
    assert run.startswith(cmds[2].text + " --formats torch")
    assert any("outputs/run1" in n for n in notes) and any("ofa_mbv3_d234_e346_k357_w1.2" in n for n in notes)
    assert readme_check.plan(cmds[1].text, fast=True) == (None, ["not in the fast subset"])
    assert readme_check.plan(cmds[1].text, fast=False) == (cmds[1].text, [])


@pytest.mark.slow
def test_readme_commands_run():
    """The fast subset of README.md's commands, each run as written (small settings appended), passes."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_check.py"), "--fast"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " 0 failed" in p.stdout and "commands run" in p.stdout


def test_reliability_table_lists_each_fault_once_with_tests_that_exist():
    """Every row of the README's Reliability table is a distinct fault whose tests exist:
    ``tests/<file>::<name>`` names a file of this folder with a ``def <name>(``."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]
    assert len(rows) >= 20, "README.md lost its Reliability table"
    faults = [r.split(" | ")[0] for r in rows]
    assert len(set(faults)) == len(faults), [f for f in faults if faults.count(f) > 1]
    missing = []
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        names = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", cell)
        assert names and len(names) == cell.count("`") // 2, f"the test cell of this row names no test as tests/<file>::<name>: {row}"
        for path, name in names:
            f = ROOT / path
            if not f.is_file() or not re.search(rf"^def {name}\(", f.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert not missing, missing


def test_config_table_lists_every_shipped_choice():
    """The README's config table names every config file of each group in conf/."""
    import re

    text = (ROOT / "README.md").read_text()
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)`(?: \(\w+\))? \| (.*) \|$", text, re.M)}
    for group in ("space", "accuracy", "latency", "target", "search", "evaluator"):
        shipped = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
        named = set(re.findall(r"`(\w+)`", table.get(group, "")))
        assert shipped <= named, f"README's config table lacks {group}: {sorted(shipped - named)}"
