"""SIGTERM is one line and exit 143 in every command, after the same clean-up as Ctrl-C, and the same
command goes on from where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from _pipeline_helpers import cli_env


def _wait_for(path, proc, timeout=120.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_of_training_is_one_line_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={out}", "checkpoint.every=2",
           f"hydra.run.dir={tmp_path / 'h'}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "last.pth", p)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "hwnas-train: terminated (SIGTERM); run the same command again to go on"
    assert "Traceback" not in err
    again = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout + again.stderr
    assert (out / "supernet.pth").is_file()


def test_a_command_with_its_own_sigterm_handler_keeps_it():
    """cli_errors leaves a handler the command installed itself (hwnas-search saves its front on SIGTERM)."""
    from hwnas.spaces.errors import Terminated, cli_errors

    def mine(signum, frame):
        raise RuntimeError("mine")

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(RuntimeError, match="mine"):
            with cli_errors("x"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)
    with pytest.raises(SystemExit) as e:
        with cli_errors("x"):
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert e.value.code == 143 and signal.getsignal(signal.SIGTERM) is old
    assert issubclass(Terminated, KeyboardInterrupt)


def _latency_that_at_call(base, n, action):
    """A subclass of the toy latency ``base`` that runs ``action()`` at its ``n``-th predict call."""
    class Acting(base):
        calls = 0

        def predict(self, archs):
            Acting.calls += 1
            if Acting.calls == n:
                action()
            return super().predict(archs)

    return Acting


def test_sigterm_inside_a_search_is_reported_as_sigterm(capsys):
    """The pipeline's search stage turned SIGTERM (cli_errors' Terminated) into a Ctrl-C: 'interrupted', 130."""
    from test_cli import ToyAccuracy, ToyLatency

    from hwnas.search.nsga import SearchInterrupted, run_search
    from hwnas.spaces import create_space
    from hwnas.spaces.errors import Terminated, cli_errors

    space = create_space("ofa_mbv3_w12")

    def sigterm():
        raise Terminated("SIGTERM")

    Killed = _latency_that_at_call(ToyLatency, 3, sigterm)
    with pytest.raises(SystemExit) as e:
        with cli_errors("hwnas-pipeline"):
            try:
                run_search(space, ToyAccuracy(space), Killed(space), pop_size=16, n_gen=20, refine=0, budgets=[12], seed=1,
                           verbose=False)
            except SearchInterrupted as exc:
                assert exc.signal == "SIGTERM"
                raise
    assert e.value.code == 143
    assert capsys.readouterr().err.strip() == "hwnas-pipeline: terminated (SIGTERM); run the same command again to go on"


def test_a_swallowed_interrupt_still_stops_the_search_at_the_next_step(tmp_path):
    """A signal whose exception lands in a callback that ignores exceptions (a Dask client's GC
    callback) used to be lost: the search ran to the end. The handlers also record it, and the search
    stops after the step it is in, with the checkpoint and the partial front, like any interrupt."""
    from test_cli import ToyAccuracy, ToyLatency

    from hwnas.search.checkpoint import SearchCheckpoint
    from hwnas.search.nsga import SearchInterrupted, request_stop, run_search
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")

    # what the handler records; its exception went nowhere
    Swallowing = _latency_that_at_call(ToyLatency, 3, lambda: request_stop("SIGTERM"))

    ck = SearchCheckpoint(tmp_path / "ck.npz")
    with pytest.raises(SearchInterrupted) as e:
        run_search(space, ToyAccuracy(space), Swallowing(space), pop_size=16, n_gen=20, refine=0, budgets=[12],
                   seed=1, verbose=False, checkpoint=ck)
    assert e.value.signal == "SIGTERM" and e.value.result.partial
    assert len(e.value.result.history) == 2  # the step in progress finished, nothing after it
    assert (tmp_path / "ck.npz").is_file()
    # the same search again resumes and is not stopped by the old request
    res = run_search(space, ToyAccuracy(space), ToyLatency(space), pop_size=16, n_gen=20, refine=0, budgets=[12], seed=1,
                     verbose=False, checkpoint=SearchCheckpoint(tmp_path / "ck.npz"))
    assert not res.partial and len(res.history) == 20


def test_a_killed_process_not_yet_reaped_is_not_alive(tmp_path):
    """The temporary files of a process killed a moment ago are removed at once: its zombie (not yet
    reaped by its parent) writes nothing more."""
    from hwnas.predictors.assets import pid_alive, remove_stale_temps, temp_prefix

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while pid_alive(p.pid) and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert not pid_alive(p.pid)
        assert p.poll() is None or p.returncode == -signal.SIGKILL  # not necessarily reaped yet
        stale = tmp_path / f".out.csv.{p.pid}.abc.tmp.csv"
        stale.write_text("half")
        assert remove_stale_temps(tmp_path) == [stale] and not stale.exists()
    finally:
        p.kill()
        p.wait()
    assert pid_alive(os.getpid()) and temp_prefix(tmp_path / "x").startswith(".x.")


def test_every_console_script_starts_in_the_light_launcher():
    """The scripts start in hwnas.search.launch, which imports nothing heavy, and each runs its command's main."""
    import importlib
    import tomllib
    from pathlib import Path

    from hwnas.search import launch

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(launch.COMMANDS)
    for prog, target in scripts.items():
        module, func = target.split(":")
        assert module == "hwnas.search.launch"
        assert func == prog.removeprefix("hwnas-")
        assert callable(importlib.import_module(launch.COMMANDS[prog]).main)
    probe = "import sys, hwnas.search.launch; print(sorted(m for m in ('numpy', 'torch', 'hydra') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_ctrl_c_while_a_command_imports_is_one_line(tmp_path):
    """An interrupt during the start-up imports (before any handler of the command exists) is one line and
    exit 130, not a KeyboardInterrupt traceback from inside an import."""
    (tmp_path / "slow_to_import.py").write_text("raise KeyboardInterrupt\n")
    code = ("from hwnas.search import launch; launch.COMMANDS['hwnas-search'] = 'slow_to_import'; launch.search()")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stderr
    assert r.stderr == "hwnas-search: interrupted\n"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`hwnas-search --help | head` ended with 'hwnas-search: error: Broken pipe'."""
    cmd = f"{sys.executable} -m hwnas.search --help | true"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=cli_env(), capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert "error" not in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 141)


def test_ctrl_c_of_training_keeps_the_step_it_was_at(tmp_path):
    """Ctrl-C of hwnas-train saved nothing: the rerun resumed from the last periodic checkpoint (up to
    checkpoint.every - 1 steps lost). The step in progress now ends and is saved first."""
    import re

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={out}", "checkpoint.every=1000",
           "train.log_every=1", f"hydra.run.dir={tmp_path / 'h'}"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    try:
        for line in p.stdout:  # wait until a few steps are done
            seen += line
            if re.search(r"step ([3-9]|\d\d)/60", line):
                p.send_signal(signal.SIGINT)
                break
        rest, _ = p.communicate(timeout=120)
        seen += rest
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, seen[-2000:]
    saved = int(re.search(r"interrupted at step (\d+): saved", seen).group(1))
    assert saved >= 3 and seen.strip().splitlines()[-1] == "hwnas-train: interrupted"
    again = subprocess.run([*cmd, "stop_after=1000"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"at step {saved}" in again.stdout + again.stderr
