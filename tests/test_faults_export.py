"""Faults around exports, training, profiling and saved predictors, as a hostile user would cause them:
crafted files that try to run code (a marker file must NOT appear), kill -9 in the middle of an export,
read-only output folders, binary and malformed inputs. Each gets one line naming the file or field and
the fix, and leaves a state the same command resumes from."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hwnas.spaces import SpaceError, create_space
from hwnas.spaces.io import read_archs, space_spec

from _pipeline_helpers import cli_env

R = 64


class Payload:
    """Unpickling this creates ``path`` (stands for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(tests_on_path=False), capture_output=True, text=True, timeout=timeout)


def _one_error_line(p: subprocess.CompletedProcess, prog: str) -> str:
    """The run failed with exit status 2 and exactly one error line (no traceback); returns it."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    return lines[0]


def _run_folder(tmp: Path, space, archs, best: dict, space_block=None) -> Path:
    rows = [{"arch": a.to_dict(), "arch_str": a.to_str(), "accuracy": 0.7 + 0.01 * i, "latency": 10.0 + i}
            for i, a in enumerate(archs)]
    data = {"space": space_spec(space) if space_block is None else space_block, "budgets": [float(b) for b in best],
            "best": {b: rows[i] for b, i in best.items()}, "front": rows}
    run = tmp / "run"
    run.mkdir(parents=True)
    (run / "pareto.json").write_text(json.dumps(data))
    return run


# ============================================================================ crafted files run nothing
@pytest.mark.parametrize("block", [
    "os_system",       # a _target_ that would run a shell command
    "torch_load",      # a _target_ that would unpickle a payload (issue 13, item 1)
])
def test_export_of_a_crafted_pareto_json_runs_nothing(tmp_path, block):
    marker = tmp_path / "MARKER"
    torch.save(Payload(marker), tmp_path / "payload.pt")
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    spec = ({"_target_": "os.system", "command": f"mkdir {marker}"} if block == "os_system"
            else {"_target_": "torch.load", "f": str(tmp_path / "payload.pt"), "weights_only": False})
    run = _run_folder(tmp_path, space, space.sample(1, 0), {"12": 0}, space_block=spec)
    line = _one_error_line(_cli(["-m", "hwnas.supernet.export_cli", str(run)], tmp_path), "hwnas-export")
    assert str(run / "pareto.json") in line and "nothing was run" in line
    assert not marker.exists() and not (run / "export").exists()


def test_crafted_predictor_files_run_nothing(tmp_path):
    """A saved accuracy predictor is data: a space block naming a class, or a pickled payload, is refused
    naming the file (issue 13, item 3)."""
    from hwnas.predictors.acc_mlp import MLPAccuracyPredictor
    from hwnas.predictors.ofa_accuracy import PredictorLoadError

    marker = tmp_path / "MARKER"
    space = create_space("ofa_mbv3_w12")
    good = MLPAccuracyPredictor(space, hidden=8, epochs=1, min_steps=2).fit(space.sample(8, 0), list(range(8)))
    good.save(tmp_path / "good.pt")
    blob = torch.load(tmp_path / "good.pt", weights_only=True)
    # the legacy form: an unknown space name and a config whose _target_ would create the marker
    legacy = {**blob, "space": "not_registered", "space_config": {"_target_": "os.mkdir", "path": str(marker)}}
    torch.save(legacy, tmp_path / "legacy.pt")
    with pytest.raises(SpaceError, match=r"legacy\.pt.*names a class to build.*nothing was run"):
        MLPAccuracyPredictor.load(tmp_path / "legacy.pt")
    crafted = {**blob, "space": {"_target_": "os.mkdir", "path": str(marker)}}
    torch.save(crafted, tmp_path / "crafted.pt")
    with pytest.raises(SpaceError, match="crafted.pt"):
        MLPAccuracyPredictor.load(tmp_path / "crafted.pt")
    torch.save(Payload(marker), tmp_path / "payload.pt")
    with pytest.raises(PredictorLoadError, match="payload.pt is not a readable predictor file"):
        MLPAccuracyPredictor.load(tmp_path / "payload.pt")
    assert not marker.exists()
    # the real file still loads, with its space rebuilt from data
    assert MLPAccuracyPredictor.load(tmp_path / "good.pt").space.name == "ofa_mbv3_w12"


@pytest.mark.slow
def test_crafted_checkpoints_run_nothing(tmp_path):
    """A pickled payload as a supernet checkpoint (export) or a training checkpoint (resume): one line
    naming the file, nothing run, the file left untouched."""
    marker = tmp_path / "MARKER"
    torch.save(Payload(marker), tmp_path / "payload.pt")
    arch = create_space("ofa_mbv3_w12", resolutions=[R]).sample(1, 0)[0]
    p = _cli(["-m", "hwnas.supernet.export_cli", arch.to_str().replace(f"r{R}", "r160"), "--space", "ofa_mbv3_w12",
              "--checkpoint", str(tmp_path / "payload.pt"), "--no-calib", "--out", str(tmp_path / "out")], tmp_path)
    assert "payload.pt could not be read" in _one_error_line(p, "hwnas-export")
    out = tmp_path / "train"
    out.mkdir()
    shutil.copy(tmp_path / "payload.pt", out / "last.pth")
    p = _cli(["-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={out}", f"hydra.run.dir={tmp_path / 'h'}"], tmp_path)
    line = _one_error_line(p, "hwnas-train")
    assert "cannot resume" in line and "last.pth" in line and "checkpoint.resume=false" in line
    assert not marker.exists()
    assert (out / "last.pth").read_bytes() == (tmp_path / "payload.pt").read_bytes()


# ============================================================================ damaged / other training checkpoints
def _train_cfg(out: Path, width: float, n_classes: int = 3) -> dict:
    return {"space": {"_target_": "hwnas.spaces.create_space", "name": "ofa_proxyless_w13", "width_mult": width,
                      "resolutions": [32]},
            "data": {"kind": "synthetic", "n": 16, "n_classes": n_classes, "num_workers": 0}, "device": "cpu",
            "threads": 1, "out": str(out), "stop_after": 1,
            "train": {"batch_size": 8, "n_random": 0, "phases": [{"name": "full", "steps": 4, "kernel": [7], "expand": [6],
                                                                   "depth": [4], "lr": 0.01}]}}


def test_truncated_and_other_network_training_checkpoints_are_one_line(tmp_path):
    """A truncated last.pth, or one of another network, used to print hundreds of "size mismatch" lines;
    now one line each, and the file is left as it was."""
    from hwnas.supernet.checkpoint import CheckpointError
    from hwnas.supernet.train import train

    out = tmp_path / "train"
    train(_train_cfg(out, 0.25))
    saved = (out / "last.pth").read_bytes()
    with pytest.raises(CheckpointError, match="trains space 'ofa_proxyless_w0.25', this run space 'ofa_proxyless_w0.35'"):
        train(_train_cfg(out, 0.35))
    with pytest.raises(CheckpointError, match=r"other settings \(data.n_classes\)"):  # the checkpoint records them
        train(_train_cfg(out, 0.25, n_classes=5))
    assert (out / "last.pth").read_bytes() == saved
    # a checkpoint without recorded settings (an older hwnas): the tensors of another shape, one line
    import torch

    state = torch.load(out / "last.pth", weights_only=True)
    del state["settings"]
    torch.save(state, out / "last.pth")
    older = (out / "last.pth").read_bytes()
    with pytest.raises(CheckpointError) as ei:  # the same space with 5 classes: a tensor of another shape
        train(_train_cfg(out, 0.25, n_classes=5))
    assert "wrong shapes" in str(ei.value) and "classifier.linear.weight" in str(ei.value) and "\n" not in str(ei.value)
    assert (out / "last.pth").read_bytes() == older
    (out / "last.pth").write_bytes(saved)
    (out / "last.pth").write_bytes(saved[: len(saved) // 2])
    with pytest.raises(CheckpointError, match="is not a readable training checkpoint"):
        train(_train_cfg(out, 0.25))
    assert (out / "last.pth").read_bytes() == saved[: len(saved) // 2]
    # a pickle as last.pth: hwnas's own reason, never torch's advice to load it with weights_only=False
    import pickle

    marker = tmp_path / "RAN"
    (out / "last.pth").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=r"not a readable training checkpoint \(not a weights-only torch file") as ei:
        train(_train_cfg(out, 0.25))
    assert "weights_only=False" not in str(ei.value) and not marker.exists()
    (out / "last.pth").write_bytes(saved[: len(saved) // 2])
    # through the command: one line, no traceback, no "size mismatch" listing
    line = _one_error_line(_cli(["-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={out}",
                                 f"hydra.run.dir={tmp_path / 'h'}"], tmp_path), "hwnas-train")
    assert "cannot resume" in line and str(out / "last.pth") in line


# ============================================================================ kill -9, then the same command
@pytest.mark.slow
def test_export_killed_mid_way_resumes_without_overwrite(tmp_path):
    """kill -9 while the second of three archs is being written: the rerun of the same command keeps the
    finished folder (not redone), removes the killed run's temporary folder and finishes the rest."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    run = _run_folder(tmp_path, space, space.sample(3, 1), {"10": 0, "11": 1, "12": 2})
    out = run / "export"
    cmd = [sys.executable, "-m", "hwnas.supernet.export_cli", str(run), "--formats", "torch", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tests_on_path=False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = [p for p in out.glob("budget*") if p.is_dir()] if out.is_dir() else []
            temps = list(out.glob(".budget*.tmp")) if out.is_dir() else []
            if len(done) == 1 and temps:
                break
            assert proc.poll() is None, "the export finished before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no moment with one finished folder and one being written")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (first,) = done
    stamp = (first / "metadata.json").stat().st_mtime_ns
    assert list(out.glob(".budget*.tmp"))  # the killed run's temporary folder is still there
    p = _cli(cmd[1:], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "exported 2 arch(s), skipped 1 already exported" in p.stdout
    assert (first / "metadata.json").stat().st_mtime_ns == stamp
    assert not [q for q in out.iterdir() if q.name.startswith(".")]
    index = json.loads((out / "index.json").read_text())["exports"]
    assert len(index) == 3 and all((out / e["name"] / "model_state_dict.pth").is_file() for e in index)


def test_an_edited_export_is_exported_again_not_skipped(tmp_path):
    """metadata.json whose accuracy was edited by hand (or a listed file changed at the same size) was taken as
    "already exported": the folder went on claiming the edited numbers. Now it is exported again, as written."""
    from hwnas.supernet.export import ExportItem, export_many

    space = create_space("ofa_proxyless_w13", resolutions=[R])
    item = ExportItem(arch=space.sample(1, 3)[0], accuracy=0.7, latency=12.0)
    (d,) = export_many(space, [item], tmp_path / "out", formats=["torch"])
    meta_text, arch_text = (d / "metadata.json").read_text(), (d / "arch.json").read_bytes()
    calls = []
    export_many(space, [item], tmp_path / "out", formats=["torch"], progress=lambda i, n, p, skipped: calls.append(skipped))
    assert calls == [True]  # untouched: skipped
    meta = json.loads(meta_text)
    meta["accuracy"]["value"] = 0.99
    (d / "metadata.json").write_text(json.dumps(meta, indent=1))
    export_many(space, [item], tmp_path / "out", formats=["torch"], progress=lambda i, n, p, skipped: calls.append(skipped))
    assert calls == [True, False] and json.loads((d / "metadata.json").read_text())["accuracy"]["value"] == 0.7
    edited = arch_text.replace(b'"arch_str"', b'"arch_sTr"')  # the same size, another content
    assert len(edited) == len(arch_text) and edited != arch_text
    (d / "arch.json").write_bytes(edited)
    export_many(space, [item], tmp_path / "out", formats=["torch"], progress=lambda i, n, p, skipped: calls.append(skipped))
    assert calls == [True, False, False] and (d / "arch.json").read_bytes() == arch_text


# ============================================================================ read-only output folders
def _readonly(cmd: list[str], folder: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``folder`` read-only: chmod for a normal user; as root (whom chmod does not stop)
    inside a private mount namespace where ``folder`` is bind-mounted read-only."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, cwd=cwd, env=cli_env(tests_on_path=False), capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root, where chmod does not stop writes, and `unshare` is not installed")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, where chmod does not stop writes, and no private read-only mount: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), *cmd], cwd=cwd, env=cli_env(tests_on_path=False),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_read_only_output_folders_are_one_line(tmp_path):
    """export, train and profile into a read-only folder: one line naming it, before any work."""
    ro = tmp_path / "ro"
    ro.mkdir()
    arch = create_space("ofa_mbv3_w12").sample(1, 0)[0].to_str()
    runs = {
        "hwnas-export": [sys.executable, "-m", "hwnas.supernet.export_cli", arch, "--space", "ofa_mbv3_w12", "--out", str(ro)],
        "hwnas-train": [sys.executable, "-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={ro}",
                        f"hydra.run.dir={tmp_path / 'h1'}"],
        "hwnas-profile": [sys.executable, "-m", "hwnas.search.profile_cli", f"output_dir={ro}", f"hydra.run.dir={tmp_path / 'h2'}",
                          "profile.n_samples=2"],
    }
    for prog, cmd in runs.items():
        line = _one_error_line(_readonly(cmd, ro, tmp_path), prog)
        assert str(ro) in line and ("read-only" in line or "permission denied" in line), line
    assert not any(ro.iterdir())


# ============================================================================ malformed inputs
@pytest.mark.slow
def test_malformed_export_inputs_are_one_line(tmp_path):
    space = create_space("ofa_mbv3_w12")
    arch = space.sample(1, 0)[0].to_str()
    binary = tmp_path / "archs.json"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpaceError, match=r"archs\.json is not a text file"):
        read_archs(binary, space)
    (tmp_path / "a_file").write_text("x")
    front5 = tmp_path / "bad" / "pareto.json"
    front5.parent.mkdir()
    front5.write_text(json.dumps({"space": space_spec(space), "budgets": [10.0], "front": 5}))
    cases = [
        ([str(binary), "--space", "ofa_mbv3_w12"], "is not a text file"),
        ([str(front5)], "'front' must be a list of archs (got int)"),
        ([arch, "--space", "ofa_mbv3_w12", "--opset", "5", "--out", str(tmp_path / "o1")], "--opset 5 is not"),
        ([arch, "--space", "ofa_mbv3_w12", "--opset", "x", "--out", str(tmp_path / "o1")], "--opset x is not"),
        ([arch, "--space", "ofa_mbv3_w12", "--out", str(tmp_path / "a_file")], "is a file; give a folder"),
        ([arch, "--space", "ofa_mbv3_w12", "--out", str(tmp_path / "a_file" / "sub")], "a part of the path is a file"),
        ([arch, "--space", "ofa_mbv3_w12", "--checkpoint", str(tmp_path / "a_file")], "--calib-data"),
    ]
    from hwnas.supernet.export_cli import main

    for argv, want in cases:
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2, argv
    # the same inputs through the installed command: one line each, naming the problem
    for argv, want in cases[:3]:
        assert want in _one_error_line(_cli(["-m", "hwnas.supernet.export_cli", *argv], tmp_path), "hwnas-export")
    assert not (tmp_path / "o1").exists()


def test_a_search_on_a_proxy_score_exports_the_score_as_such(tmp_path):
    """A search whose 'accuracy' is a proxy score (here negative) used to be refused by hwnas-export ('not a top-1
    accuracy ... or leave it out', which a run folder cannot do): the score is kept as search_score, the top-1
    is unknown, and one note says so."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    run = _run_folder(tmp_path, space, space.sample(1, 3), {"12": 0})
    data = json.loads((run / "pareto.json").read_text())
    for row in [*data["front"], *data["best"].values()]:
        row["accuracy"] = -0.25
    (run / "pareto.json").write_text(json.dumps(data))
    p = _cli(["-m", "hwnas.supernet.export_cli", str(run), "--formats", "torch", "--no-progress"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "not top-1 accuracies (e.g. -0.25: a proxy score?)" in p.stderr
    (meta,) = [json.loads(f.read_text()) for f in (run / "export").glob("*/metadata.json")]
    assert meta["accuracy"]["value"] is None and meta["extra"]["search_score"] == -0.25


def test_a_pipeline_run_folder_exports_its_front_with_the_measured_latency(tmp_path):
    """hwnas-export <pipeline run> said 'folder without pareto.json'; its 07_export/archs.json exported with
    latency None although each row holds latency_measured. Both are read now, the target recorded."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    arch = space.sample(1, 5)[0]
    (tmp_path / "prun" / "07_export").mkdir(parents=True)
    (tmp_path / "prun" / "07_export" / "archs.json").write_text(json.dumps({
        "space": space_spec(space), "target": {"plan_device": "npu"},
        "archs": [{"arch": arch.to_dict(), "arch_str": arch.to_str(), "accuracy": 0.75, "latency_measured": 2.5,
                   "latency_predicted": 2.4}]}))
    p = _cli(["-m", "hwnas.supernet.export_cli", str(tmp_path / "prun"), "--formats", "torch", "--no-progress",
              "--out", str(tmp_path / "ex")], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "a pipeline run folder: exporting its final front" in p.stderr
    (meta,) = [json.loads(f.read_text()) for f in (tmp_path / "ex").glob("*/metadata.json")]
    assert meta["latency"] == {"value": 2.5, "kind": "measured", "unit": "ms", "device": "npu"}
    assert meta["extra"]["target"] == {"plan_device": "npu"} and meta["accuracy"]["value"] == 0.75
    card = next((tmp_path / "ex").glob("*/README.md")).read_text()
    assert "latency: 2.5 ms (measured, on npu)" in card
