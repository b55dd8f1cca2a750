"""Hydra's own errors (an unknown config group value, a misspelt key, bad override syntax, a run folder
that is a file) are one line and exit status 2 in every hydra command, like every other bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hwnas.spaces.errors import hydra_error_message, one_line

CASES = [
    ("hwnas.search", ["space=nope"], ["Could not find 'space/nope'", "ofa_mbv3_w12, ofa_proxyless_w13"]),
    ("hwnas.search", ["search.pop_sze=10"], ["Could not override 'search.pop_sze'", "+search.pop_sze=10", "not in struct"]),
    ("hwnas.search", ["search.budgets=[15"], ["'[15'"]),
    ("hwnas.search", ["hydra.run.dir=afile"], ["afile: already exists"]),
    ("hwnas.supernet.train", ["--config-name", "smoke", "train.batch_sze=3"], ["Could not override 'train.batch_sze'"]),
    ("hwnas.search.pipeline.cli", ["nope=1"], ["Could not override 'nope'"]),
    ("hwnas.search.profile_cli", ["space=zz"], ["Could not find 'space/zz'"]),
]


@pytest.mark.parametrize("module, args, parts", CASES, ids=[f"{m.split('.')[-1]}:{a[-1]}" for m, a, _ in CASES])
def test_hydra_errors_are_one_line(tmp_path, module, args, parts):
    (tmp_path / "afile").write_text("mine\n")
    env = {**os.environ, "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    prog = {"hwnas.search": "hwnas-search", "hwnas.supernet.train": "hwnas-train", "hwnas.search.pipeline.cli": "hwnas-pipeline",
            "hwnas.search.profile_cli": "hwnas-profile"}[module]
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), p.stderr
    for part in parts:
        assert part in lines[0]
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_message_helpers():
    assert one_line("a\n\n  b\nb\n c ") == "a b c"

    class ConfigCompositionException(Exception):
        pass

    exc = ConfigCompositionException("In 'config': Could not find 'space/x'\n\nAvailable options in 'space':\n\tfbnet\n\tnb\n"
                                     "Config search path:\n\tprovider=hydra")
    assert hydra_error_message(exc) == "In 'config': Could not find 'space/x' Available options in 'space': fbnet, nb"


def test_a_broken_user_preset_and_a_user_primary_config_without_the_user_folder_are_one_line(tmp_path):
    """A YAML syntax error in a preset of the user's was a 122-line traceback; a primary config of the user's own
    (defaults: [search_base]) did not find the user's presets, and the error did not say why."""
    uc = tmp_path / "uc"
    (uc / "latency").mkdir(parents=True)
    (uc / "latency" / "bad.yaml").write_text("latency:\n  _target_: [unclosed\n")
    (uc / "latency" / "mine.yaml").write_text("# @package latency\n_target_: x.Y\n")
    (tmp_path / "myconf").mkdir()
    (tmp_path / "myconf" / "myrun.yaml").write_text("defaults:\n  - search_base\n  - _self_\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["HWNAS_CONFIG_DIR"] = str(uc)
    for args, part in ((["latency=bad"], f"a config file is not valid YAML: while parsing a flow sequence in \"{uc / 'latency' / 'bad.yaml'}\", line 2"),
                       (["--config-dir", "myconf", "--config-name", "myrun", "latency=mine"],
                        "Could not find 'latency/mine'")):
        p = subprocess.run([sys.executable, "-m", "hwnas.search", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and part in lines[0], p.stderr
    assert f"({uc / 'latency' / 'mine.yaml'} is in your user config folder: a primary config of your own needs it on hydra's search path" in lines[0]
