"""Faults in hwnas-profile, hwnas-train and hwnas-measure: a profile killed before its last file is run
again by the same command (and gives the files of an uninterrupted run); the temporary files of killed
runs are removed by the next run (those of live processes are kept); a latency plug-in that returns
values <= 0, NaN, the wrong number of values or no numbers is one line naming it (exit 2), before any
output is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _pipeline_helpers import cli_env
from test_profile import SynLatency

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ============================================================================ helpers
class NegLatency(SynLatency):
    def predict(self, archs):
        return -super().predict(archs)


class ZeroLatency(SynLatency):
    def predict(self, archs):
        return 0.0 * super().predict(archs)


class NanLatency(SynLatency):
    def predict(self, archs):
        v = super().predict(archs)
        v[::3] = np.nan
        return v


class ShortLatency(SynLatency):
    def predict(self, archs):
        return super().predict(archs)[:-1]


class NoneLatency(SynLatency):
    def predict(self, archs):
        return None


class WideLatency(SynLatency):
    def predict(self, archs):
        v = super().predict(archs)
        return np.stack([v, v], 1)


class ColumnLatency(SynLatency):
    """(n, 1): one value per arch, taken as such."""

    def predict(self, archs):
        return super().predict(archs)[:, None]


class TextLatency(SynLatency):
    def predict(self, archs):
        return np.array(["fast"] * len(archs))


class NegAccuracy:
    """Any finite accuracy is accepted (a score, a negative loss ...)."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        return -np.arange(len(archs), dtype=float) / len(archs) - 1.0


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale_and_live(folder: Path, names: list[str]) -> tuple[list[Path], list[Path]]:
    """Temporary files as a killed writer (a dead pid) and a running one (a live pid) leave them."""
    folder.mkdir(parents=True, exist_ok=True)
    dead, live = _dead_pid(), os.getppid()
    assert dead != live
    stale, alive = [], []
    for name in names:
        ext = Path(name).suffix
        s = folder / f".{name}.{dead}.k1ll3d.tmp{ext}"
        a = folder / f".{name}.{live}.runn1n.tmp{ext}"
        s.write_bytes(b"half")
        a.write_bytes(b"busy")
        stale.append(s)
        alive.append(a)
    return stale, alive


def _in_process(main, argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return int(rc or 0), capsys.readouterr().err


def _one_line(code: int, err: str, prog: str, *parts: str) -> str:
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err[-2000:]
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def _profile_argv(tmp_path: Path, out: Path, *extra: str, latency: str = "test_profile.SynLatency",
                  accuracy: str = "test_profile.SynAccuracy", device: str = "syn") -> list[str]:
    return [f"output_dir={out}", f"hydra.run.dir={tmp_path / 'h'}", f"reduce.conf_dir={tmp_path / 'uc'}",
            "profile.progress=false", "plots=false", "space.resolutions=[160,224]", "profile.n_samples=4",
            "latency=custom", f"+latency._target_={latency}", f"device={device}",
            "accuracy=custom", f"accuracy._target_={accuracy}", *extra]


@pytest.fixture
def profile_main(monkeypatch, tmp_path):
    from hwnas.search.profile_cli import main

    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path / "uc"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main(argv) sets sys.argv
    monkeypatch.chdir(tmp_path)
    return main


_TIMING = ("profile_seconds", "seconds", "output_dir")


def _comparable(out: Path) -> dict:
    """The files of a profile, summary.json without its timings and paths."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    summary = json.loads(files.pop("summary.json"))
    for k in _TIMING:
        summary.pop(k)
    for entry in summary["devices"].values():
        entry.pop("config", None)
    files["summary.json"] = json.dumps(summary, sort_keys=True).encode()
    return files


# ============================================================================ 1: resume a killed profile
def test_profile_interrupted_after_profile_csv_is_run_again_by_the_same_command(profile_main, tmp_path, capsys,
                                                                                monkeypatch):
    import hwnas.search.profile_cli as pc

    ref, out = tmp_path / "ref", tmp_path / "prof"
    code, err = _in_process(profile_main, _profile_argv(tmp_path, ref), capsys)
    assert code == 0, err[-2000:]
    ref_space = (tmp_path / "uc" / "space" / "reduced_syn.yaml").read_bytes()
    (tmp_path / "uc" / "space" / "reduced_syn.yaml").unlink()

    real = pc.reduce_space

    def stopped(*a, **k):  # Ctrl-C after profile.csv was written, before the other files
        assert (out / "profile.csv").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(pc, "reduce_space", stopped)
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out), capsys)
    assert code == 130, err[-2000:]
    assert (out / "profile.csv").is_file() and not (out / "summary.json").exists()
    assert json.loads((out / "profile_settings.json").read_text())["settings"]["profile"]["n_samples"] == 4
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    # other settings are still refused, and the folder is left as it is
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out, "profile.seed=1"), capsys)
    _one_line(code, err, "hwnas-profile", "holds a profile of other settings (profile.seed)", "overwrite=true")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # the same command: profiled again, the files of an uninterrupted run
    monkeypatch.setattr(pc, "reduce_space", real)
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out), capsys)
    assert code == 0, err[-2000:]
    assert _comparable(out) == _comparable(ref)
    assert (tmp_path / "uc" / "space" / "reduced_syn.yaml").read_bytes() == ref_space
    # and once more (a finished profile of the same settings)
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out), capsys)
    assert code == 0, err[-2000:]
    assert _comparable(out) == _comparable(ref)


def test_profile_overwrite_removes_the_earlier_reduced_space_of_another_name(profile_main, tmp_path, capsys):
    """overwrite=true replaced profile.csv and summary.json but left the earlier profile's ``<reduce.name>.yaml``
    in the folder, beside the new profile that did not write it. The user's config folder keeps both."""
    out = tmp_path / "prof"
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out, "reduce.name=first_syn"), capsys)
    assert code == 0, err[-2000:]
    assert (out / "first_syn.yaml").is_file()
    (out / "notes.yaml").write_text("# derived by hwnas-profile, says my own file\n")  # not a name it wrote: kept
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out, "reduce.name=second_syn", "profile.seed=1",
                                                         "overwrite=true"), capsys)
    assert code == 0, err[-2000:]
    assert not (out / "first_syn.yaml").exists() and (out / "second_syn.yaml").is_file() and (out / "notes.yaml").is_file()
    assert {p.name for p in (tmp_path / "uc" / "space").glob("*.yaml")} == {"first_syn.yaml", "second_syn.yaml"}


def test_profile_settings_alone_do_not_hold_the_folder(profile_main, tmp_path, capsys):
    """A run that failed before its first output leaves at most profile_settings.json: another command
    may use the folder (nothing of a profile is in it)."""
    out = tmp_path / "prof"
    out.mkdir()
    (out / "profile_settings.json").write_text(json.dumps({"settings": {"profile": {"n_samples": 99}}}))
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out), capsys)
    assert code == 0, err[-2000:]
    assert json.loads((out / "profile_settings.json").read_text())["settings"]["profile"]["n_samples"] == 4
    assert (out / "summary.json").is_file()


def test_profile_killed_by_sigkill_resumes_with_the_same_command(tmp_path):
    """A real kill -9 as soon as profile.csv exists (plots on: the heatmaps take a while after it)."""
    out = tmp_path / "prof"
    cmd = [sys.executable, "-m", "hwnas.search.profile_cli",
           *[a for a in _profile_argv(tmp_path, out) if a != "plots=false"]]
    env = cli_env({"HWNAS_CONFIG_DIR": str(tmp_path / "uc"), "OPENBLAS_NUM_THREADS": "1"})
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while p.poll() is None and not (out / "profile.csv").exists() and time.time() - t0 < 300:
        time.sleep(0.002)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    rc = p.wait()
    err = p.stderr.read()
    p.stderr.close()
    assert rc in (-signal.SIGKILL, 0), (rc, err[-2000:])  # 0: it finished before the kill landed (a fast machine)
    if rc != 0:
        assert (out / "profile.csv").is_file() and not (out / "summary.json").exists()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["profile"]["n_samples"] == 4
    assert (out / "heatmap_syn.png").is_file() and (out / "reduced_syn.yaml").is_file()
    assert not [q for q in out.iterdir() if ".tmp" in q.name]


# ============================================================================ 2: temporary files of killed runs
def test_profile_removes_temporary_files_of_killed_runs(profile_main, tmp_path, capsys):
    out = tmp_path / "prof"
    stale, alive = _stale_and_live(out, ["profile.csv", "summary.json", "heatmap_syn.png", "profile_settings.json"])
    s2, a2 = _stale_and_live(tmp_path / "uc" / "space", ["reduced_syn.yaml"])
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out), capsys)
    assert code == 0, err[-2000:]
    assert [p for p in stale + s2 if p.exists()] == []
    assert all(p.read_bytes() == b"busy" for p in alive + a2)
    assert (out / "summary.json").is_file() and (tmp_path / "uc" / "space" / "reduced_syn.yaml").is_file()


def test_train_removes_temporary_files_of_killed_runs(tmp_path):
    from test_train import _cfg

    from hwnas.supernet.train import train

    out = tmp_path / "run"
    stale, alive = _stale_and_live(out, ["last.pth", "supernet.pth"])
    res = train(_cfg(out, stop_after=1))
    assert res["step"] == 1 and (out / "last.pth").is_file()
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"busy" for p in alive)


def _fake_measuring(monkeypatch):
    """Every arch 'measured' at 1 ms, without timing anything."""
    import hwnas.predictors.measure.measurer as mm
    from hwnas.predictors.measure.protocol import Measurement
    from hwnas.spaces.io import arch_key

    def fake(store, device, space, archs, measurer, progress=False):
        for a in archs:
            store.put(device, space.name, arch_key(space, a), Measurement(1.0, 0.0, 3, [1.0], True), measurer.config,
                      {"machine": "test"})
        return [1.0] * len(archs)

    monkeypatch.setattr(mm, "measure_into_store", fake)


def test_measure_removes_temporary_files_of_killed_runs(tmp_path, capsys, monkeypatch):
    from hwnas.predictors.measure.cli import main

    _fake_measuring(monkeypatch)
    outdir = tmp_path / "out"
    stale, alive = _stale_and_live(outdir, ["local.csv"])
    argv = ["--no-progress", "--space", "ofa_mbv3_w12", "--resolutions", "128", "-n", "2", "--device", "here",
            "--store", str(tmp_path / "m.sqlite"), "--out", str(outdir / "local.csv")]
    code, err = _in_process(main, argv, capsys)
    assert code == 0, err[-2000:]
    assert (outdir / "local.csv").read_text().splitlines()[0] == "arch,here"
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"busy" for p in alive)
    # a relative --out: the temporary files in the current folder
    monkeypatch.chdir(outdir)
    stale, alive = _stale_and_live(outdir, ["rel.csv"])
    code, err = _in_process(main, [*argv[:-1], "rel.csv"], capsys)
    assert code == 0, err[-2000:]
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in alive)


def test_measure_build_lut_removes_temporary_files_of_killed_runs(tmp_path, capsys, monkeypatch):
    import hwnas.predictors.measure.lut_build as lb
    from hwnas.predictors.measure.cli import main

    monkeypatch.setattr(lb, "build_lut", lambda *a, **k: {})  # the folder's clean-up only, no timing
    lut = tmp_path / "lut"
    stale, alive = _stale_and_live(lut, ["160_lookup_table.yaml", "lut.json"])
    code, err = _in_process(main, ["--no-progress", "--space", "ofa_mbv3_w12", "--resolutions", "160", "--device", "here",
                                   "--store", str(tmp_path / "m.sqlite"), "--build-lut", str(lut)], capsys)
    assert code == 0, err[-2000:]
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"busy" for p in alive)


# ============================================================================ 3, 4: broken latency plug-ins
@pytest.mark.parametrize("cls,parts", [
    ("NegLatency", ["latency['bad']", "latency <= 0", "arch ", "positive"]),
    ("ZeroLatency", ["latency['bad']", "latency <= 0", "e.g. 0 for arch"]),
    ("NanLatency", ["latency['bad']", "non-finite", "e.g. nan for arch"]),
    ("ShortLatency", ["latency['bad']", "returned 3 values for 4 archs"]),
    ("TextLatency", ["latency['bad']", "not numbers"]),
], ids=["neg", "zero", "nan", "short", "text"])
def test_profile_refuses_unusable_latencies_in_one_line(cls, parts, profile_main, tmp_path, capsys):
    out = tmp_path / "prof"
    argv = _profile_argv(tmp_path, out, "profile.batch_size=4", latency=f"test_faults_e.{cls}", device="bad")
    code, err = _in_process(profile_main, argv, capsys)
    line = _one_line(code, err, "hwnas-profile", *parts)
    if cls in ("NegLatency", "ZeroLatency"):
        from hwnas.search.profile import profile_genomes

        from hwnas.spaces import create_space

        n = len(profile_genomes(create_space("ofa_mbv3_w12", resolutions=[160, 224]), 4, 0)[0])
        assert f"for {n} of {n} archs" in line, line  # every prediction is bad
    if cls == "NanLatency":
        assert " of " in line
    assert not (out / "profile.csv").exists() and not (out / "summary.json").exists()
    assert not (tmp_path / "uc" / "space" / "reduced_bad.yaml").exists()


def test_profile_accepts_any_finite_accuracy(profile_main, tmp_path, capsys):
    out = tmp_path / "prof"
    code, err = _in_process(profile_main, _profile_argv(tmp_path, out, accuracy="test_faults_e.NegAccuracy"), capsys)
    assert code == 0, err[-2000:]
    assert (out / "summary.json").is_file()


def test_profile_library_raises_profile_errors_for_bad_predictions():
    from hwnas.search.profile import ProfileError, profile_space
    from hwnas.spaces import create_space
    from hwnas.spaces.errors import UserError

    space = create_space("ofa_mbv3_w12", resolutions=[160])
    for bad, match in ((NegLatency, r"latency\['d'\] \(NegLatency\): predicted a latency <= 0"),
                       (NanLatency, r"latency\['d'\] \(NanLatency\): predicted a non-finite value"),
                       (ShortLatency, r"latency\['d'\] \(ShortLatency\): predict\(\) returned \d+ values for \d+ archs"),
                       (NoneLatency, r"latency\['d'\] \(NoneLatency\): predict\(\) returned None"),
                       (WideLatency, r"latency\['d'\] \(WideLatency\): predict\(\) returned an array of shape \(\d+, 2\)")):
        with pytest.raises(ProfileError, match=match) as e:
            profile_space(space, latency={"d": bad(space)}, n_samples=2)
        assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    col = profile_space(space, latency={"d": ColumnLatency(space)}, n_samples=2)
    assert np.array_equal(col.baseline["d"], profile_space(space, latency={"d": SynLatency(space)}, n_samples=2).baseline["d"])
    # a negative accuracy is a number like any other
    prof = profile_space(space, latency={"d": SynLatency(space)}, accuracy={"a": NegAccuracy(space)}, n_samples=2)
    assert (prof.baseline["a"] < 0).all()
