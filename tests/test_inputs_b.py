"""Hostile inputs to hwnas-train, hwnas-profile, hwnas-measure and hwnas-monotonicity: every wrong
setting is one line (``<prog>: error: ...`` naming the field, exit status 2) before any work, and no
output file is created or changed; a folder of other settings, another device or another protocol is
refused instead of silently replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _pipeline_helpers import cli_env

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _one_line(code: int, err: str, prog: str, field: str) -> str:
    """Exit status 2, no traceback, exactly one error line, naming ``field``; returns it."""
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err[-2000:]
    assert field in lines[0], lines[0]
    return lines[0]


def _in_process(main, argv: list[str], capsys, monkeypatch=None) -> tuple[int, str]:
    """Run a console entry in this process: (exit status, stderr)."""
    capsys.readouterr()
    if monkeypatch is not None:  # hydra entries read sys.argv
        monkeypatch.setattr(sys, "argv", argv)
        argv = None
    try:
        rc = main(argv) if argv is not None else main()
    except SystemExit as exc:
        rc = exc.code
    return int(rc or 0), capsys.readouterr().err


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================ hwnas-train
TRAIN_CASES = [
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=abc", "train.batch_size"),
    ("seed=abc", "seed"),
    ("device=tpu", "device"),
    ("device=cuda:7", "device"),
    ("data.n=0", "data.n"),
    ("train.label_smoothing=5", "train.label_smoothing"),
    ("train.phases.0.lr=nan", "train.phases[0].lr"),
    ("threads=0", "threads"),
    ("stop_after=-1", "stop_after"),
    ("+train.batch_sze=3", "train.batch_sze"),
    ("+data.nn=3", "data.nn"),
    ("train.momentum=0", "train.momentum"),
    ("checkpoint.every=-1", "checkpoint.every"),
]


@pytest.mark.parametrize("override,field", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_settings_are_one_line_before_any_work(override, field, tmp_path, capsys, monkeypatch):
    from hwnas.supernet.train import main

    out = tmp_path / "run"
    code, err = _in_process(main, ["hwnas-train", "--config-name", "smoke", f"out={out}", "stop_after=1",
                                   f"hydra.run.dir={tmp_path / 'h'}", override], capsys, monkeypatch)
    line = _one_line(code, err, "hwnas-train", field)
    assert "\n" not in line
    assert not out.exists()  # refused before the output folder was made


def test_train_library_call_checks_every_setting(tmp_path):
    from hwnas.supernet.train import TrainConfigError, check_settings, train

    with pytest.raises(TrainConfigError, match=r"train\.phases\[0\] has no 'lr'"):
        check_settings({"data": {"kind": "synthetic"}, "train": {"phases": [{"steps": 1}]}})
    with pytest.raises(TrainConfigError, match=r"data\.train is not set"):
        train({"out": str(tmp_path / "x"), "data": {"kind": "imagefolder"}})
    assert not (tmp_path / "x").exists()
    check_settings({"seed": 1, "device": "cpu", "train": {"batch_size": 2, "phases": [{"steps": 1, "lr": 0.1}]},
                    "data": {"kind": "synthetic", "n": 4}})  # a good one passes


def test_train_empty_checkpoint_is_one_line_and_left_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "hwnas.supernet.train", "--config-name", "smoke", f"out={out}",
                        f"hydra.run.dir={tmp_path / 'h'}"], cwd=tmp_path, env=cli_env(tests_on_path=False),
                       capture_output=True, text=True, timeout=300)
    line = _one_line(p.returncode, p.stderr, "hwnas-train", "last.pth")
    assert "cannot resume" in line and "checkpoint.resume=false" in line
    assert (out / "last.pth").read_bytes() == b"" and not (out / "supernet.pth").exists()


# ============================================================================ hwnas-profile
PROFILE_CASES = [
    ("profile.n_samples=0", "profile.n_samples"),
    ("profile.n_samples=abc", "profile.n_samples"),
    ("profile.batch_size=0", "profile.batch_size"),
    ("profile.seed=abc", "profile.seed"),
    ("devices=5", "devices"),
    ("+profile.n_sampels=8", "profile.n_sampels"),
    ("reduce.enabled=abc", "reduce.enabled"),
    ("reduce.name=''", "reduce.name"),
    ("reduce.name=../../escaped", "reduce.name"),
    ("reduce.name=a/b", "reduce.name"),
    ("reduce.name=.hidden", "reduce.name"),
    ("reduce.name='x_{dev}'", "reduce.name"),
    ("overwrite=abc", "overwrite"),
]


@pytest.mark.parametrize("override,field", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_profile_settings_are_one_line_before_any_work(override, field, tmp_path, capsys, monkeypatch):
    from hwnas.search.profile_cli import main

    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path / "uc"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main(argv) sets sys.argv
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pout"
    code, err = _in_process(main, [f"output_dir={out}", f"hydra.run.dir={tmp_path / 'h'}", "profile.progress=false",
                                   "plots=false", override], capsys)
    _one_line(code, err, "hwnas-profile", field)
    assert not out.exists() and not (tmp_path / "uc").exists()
    assert not (tmp_path.parent / "escaped.yaml").exists()
    assert not [p for p in tmp_path.rglob("*.yaml") if ".hydra" not in p.parts]  # hydra's own run record only


def _profile_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        return compose(config_name="profile/default", overrides=[
            "space.resolutions=[160]", "latency=custom", "+latency._target_=test_profile.SynLatency", "device=syn",
            "accuracy=custom", "accuracy._target_=test_profile.SynAccuracy", "profile.progress=false", "plots=false",
            *overrides])


def test_profile_output_dir_of_other_settings_is_refused(tmp_path, monkeypatch):
    from hwnas.predictors.build import ConfigError
    from hwnas.search.profile_cli import run_profile

    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path / "uc"))
    out = tmp_path / "pout"
    first = run_profile(_profile_cfg(["profile.n_samples=4"]), output_dir=out, log=lambda s: None)
    assert first["settings"]["profile"]["n_samples"] == 4
    before = _snapshot(out)
    with pytest.raises(ConfigError, match=r"output_dir .*pout holds a profile of other settings \(profile.n_samples, "
                                          r"profile.seed\).*overwrite=true"):
        run_profile(_profile_cfg(["profile.n_samples=5", "profile.seed=1"]), output_dir=out, log=lambda s: None)
    assert _snapshot(out) == before
    # the same settings: profiled again, the same files
    run_profile(_profile_cfg(["profile.n_samples=4"]), output_dir=out, log=lambda s: None)
    assert _snapshot(out)["profile.csv"] == before["profile.csv"]
    # an explicit overwrite replaces it
    again = run_profile(_profile_cfg(["profile.n_samples=5", "profile.seed=1", "overwrite=true"]), output_dir=out,
                        log=lambda s: None)
    assert json.loads((out / "summary.json").read_text())["seed"] == 1 == again["seed"]
    # a profile.csv whose settings are not recorded is not replaced either
    other = tmp_path / "other"
    other.mkdir()
    (other / "profile.csv").write_text("metric\n")
    with pytest.raises(ConfigError, match="settings are not recorded"):
        run_profile(_profile_cfg(["profile.n_samples=4"]), output_dir=other, log=lambda s: None)
    assert (other / "profile.csv").read_text() == "metric\n"


def test_profile_library_arguments_are_checked():
    from hwnas.search.profile import ProfileError, check_profile_args

    for args, field in (((0,), "n_samples"), ((4, -1), "seed"), ((4, 0, 0), "batch_size"), (("8",), "n_samples")):
        with pytest.raises(ProfileError, match=field):
            check_profile_args(*args)


# ============================================================================ hwnas-measure
def _measure(argv: list[str], capsys) -> tuple[int, str]:
    from hwnas.predictors.measure.cli import main

    space = [] if "--space" in argv else ["--space", "ofa_mbv3_w12", "--resolutions", "128"]
    return _in_process(main, ["--no-progress", *space, *argv], capsys)


@pytest.mark.parametrize("argv,field", [
    (["-n", "-3"], "-n"),
    (["-n", "0"], "-n 0: give an integer >= 1 (e.g. -n 20)"),
    (["-n", "1", "--backend", "foo"], "--backend 'foo' is unknown"),
    (["-n", "1", "--clock", "cpu", "--threads", "2"], "needs --threads 1 (got --threads 2); use --clock 'wall'"),
    (["-n", "1", "--wait", "-5"], "--wait"),
    (["-n", "1", "--seed", "-1"], "--seed"),
    (["-n", "1", "--chunk", "0"], "--chunk"),
    (["-n", "1", "--out", "adir"], "--out adir is a folder"),
    (["-n", "1", "--out", "missing/dir/x.csv"], "does not exist"),
    (["-n", "1", "--out", "local.csv"], "--out local.csv already exists"),
    (["-n", "1", "--out", "binary.csv"], "--out binary.csv already exists"),
    (["-n", "1", "--out", "other_device.csv"], "--out other_device.csv already exists"),
    (["--space", "nasbench201", "-n", "1"], "--space nasbench201"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_measure_options_are_one_line_before_measuring(argv, field, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "local.csv").write_text("hello,world\n1,2\n")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)))
    (tmp_path / "other_device.csv").write_text("arch,pi4\n")
    before = _snapshot(tmp_path)
    code, err = _measure([*argv, "--store", "m.sqlite"], capsys)
    _one_line(code, err, "hwnas-measure", field)
    assert _snapshot(tmp_path) == before  # no store, no CSV, nothing replaced
    assert not (tmp_path / "missing").exists()


def test_measure_out_extends_an_earlier_csv_of_the_same_device(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast = ["--processes", "1", "--repeats", "1", "--warmup", "0", "--store", "m.sqlite", "--out", "m.csv"]
    code, err = _measure(["-n", "1", *fast], capsys)
    assert code == 0, err
    first = (tmp_path / "m.csv").read_text().splitlines()
    assert first[0] == "arch,local-ort-t1" and len(first) == 2
    code, err = _measure(["-n", "1", "--seed", "1", *fast], capsys)
    assert code == 0, err
    assert "1 kept from the earlier file, 1 added" in err
    both = (tmp_path / "m.csv").read_text().splitlines()
    assert both[:2] == first and len(both) == 3
    code, err = _measure(["-n", "1", *fast], capsys)  # a rerun measures nothing and keeps the rows
    assert code == 0 and "1 already in m.sqlite" in err and "0 to measure" in err
    assert (tmp_path / "m.csv").read_text().splitlines() == both


def test_build_lut_folder_records_its_device_and_refuses_another(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast = ["--processes", "1", "--repeats", "1", "--warmup", "0", "--store", "lut.sqlite"]
    code, err = _measure(["--build-lut", "lut", *fast], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "lut" / "lut.json").read_text())
    assert info["device"] == "local-ort-t1" and info["protocol"]["backend"] == "onnxruntime" and info["resolutions"] == [128]
    before = _snapshot(tmp_path / "lut")
    code, err = _measure(["--build-lut", "lut", "--backend", "torch", "--device", "local-torch-t1", *fast], capsys)
    line = _one_line(code, err, "hwnas-measure", "lut")
    assert "local-ort-t1" in line and "local-torch-t1" in line
    assert _snapshot(tmp_path / "lut") == before
    # the loader still reads the folder's tables (it ignores lut.json)
    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.spaces import create_space

    sp = create_space("ofa_mbv3_w12", resolutions=[128])
    assert (LookupTableLatency(sp, tables=str(tmp_path / "lut")).predict(sp.sample(2, 0)) > 0).all()
    # tables of unknown origin
    (tmp_path / "old").mkdir()
    (tmp_path / "lut" / "128_lookup_table.yaml").rename(tmp_path / "old" / "128_lookup_table.yaml")
    code, err = _measure(["--build-lut", "old", *fast], capsys)
    assert "no lut.json" in _one_line(code, err, "hwnas-measure", "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["128_lookup_table.yaml"]


# ============================================================================ hwnas-monotonicity
def _nb201_archs(n: int) -> list[str]:
    from hwnas.spaces import create_space

    sp = create_space("nasbench201")
    return [sp.validate(a).to_str() for a in sp.sample(n, 0)]


def _csv(path: Path, header: str, values: list[str], archs: list[str] | None = None) -> Path:
    archs = archs or _nb201_archs(len(values))
    path.write_text(header + "\n" + "".join(f"{a},{v}\n" for a, v in zip(archs, values)))
    return path


def test_monotonicity_interrupted_is_one_line_and_a_killed_runs_temp_file_goes(tmp_path, capsys, monkeypatch):
    """Ctrl-C was a 48-line traceback; SIGTERM left a half-written heatmap that later runs kept."""
    import subprocess

    import hwnas.predictors.monotonicity as mono

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mono, "monotonicity", stop)
    code, err = _in_process(mono.main, ["--dataset", "nasbench201", "--out", str(tmp_path / "m")], capsys)
    assert code == 130 and err.strip() == "hwnas-monotonicity: interrupted", err
    monkeypatch.undo()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "m").mkdir()
    stale = tmp_path / "m" / f".nasbench201_srcc.png.{dead}.abc.tmp.png"
    stale.write_bytes(b"half")
    csv = _csv(tmp_path / "d.csv", "arch,p,q", ["1,2", "2,3", "3,1"])
    monkeypatch.chdir(tmp_path)
    code, err = _in_process(mono.main, ["--dataset", str(csv), "--out", str(tmp_path / "m")], capsys)
    assert code == 0 and not stale.exists(), err


def test_monotonicity_refuses_what_gives_no_srcc(tmp_path, capsys, monkeypatch):
    from hwnas.predictors.monotonicity import main

    monkeypatch.chdir(tmp_path)
    a = _nb201_archs(4)
    cases = [
        (["--dataset", "nasbench201", "--devices", "pixel3"], "at least 2 device"),
        (["--dataset", str(_csv(tmp_path / "one.csv", "arch,pixel3", ["1", "2", "3"]))], "at least 2 device"),
        (["--dataset", str(_csv(tmp_path / "dupcol.csv", "arch,p,p", ["1,2", "2,3", "3,1"]))], "column 'p' appears 2 times"),
        (["--dataset", str(_csv(tmp_path / "two.csv", "arch,p,q", ["1,2", "2,3"]))], "two.csv has 2 arch(s)"),
        (["--dataset", str(_csv(tmp_path / "neg.csv", "arch,p,q", ["1,2", "-2,3", "3,1"]))], "neg.csv line 3"),
        (["--dataset", str(_csv(tmp_path / "nan.csv", "arch,p,q", ["1,2", "nan,3", "3,1"]))], "nan.csv line 3"),
        (["--dataset", str(_csv(tmp_path / "dup.csv", "arch,p,q", ["1,2", "2,3", "3,1"], [a[0], a[1], a[0]]))],
         "dup.csv line 4: the arch of line 2"),
        (["--dataset", "nasbench201", "--devices", ",,"], "--devices"),
        (["--dataset", "nasbench201", "--devices", "pixel3,pixel3"], "--devices"),
        (["--dataset", "nasbench201", "--mirror", str(tmp_path / "nonexistent")], "--mirror"),
    ]
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    cases.append((["--dataset", str(tmp_path / "bin.csv")], "bin.csv"))
    for argv, field in cases:
        code, err = _in_process(main, [*argv, "--out", str(tmp_path / "mono")], capsys)
        _one_line(code, err, "hwnas-monotonicity", field)
        assert not (tmp_path / "mono").exists(), argv
    # an empty cell is a missing measurement: each pair uses the archs both have
    ok = _csv(tmp_path / "gaps.csv", "arch,p,q", ["1,2", ",3", "3,1", "2,2"])
    code, err = _in_process(main, ["--dataset", str(ok), "--out", str(tmp_path / "mono")], capsys)
    assert code == 0, err
    assert (tmp_path / "mono" / "gaps_srcc.csv").is_file()
