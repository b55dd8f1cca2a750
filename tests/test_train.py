"""Progressive-shrinking training: loss goes down on a learnable toy task, resume is exact, configs load."""

from __future__ import annotations

import pytest
import torch

from hwnas.supernet.train import CONFIG_PATH, SyntheticColours, TrainConfigError, train


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cfg(out, **kw):
    cfg = {
        "space": {"_target_": "hwnas.spaces.create_space", "name": "ofa_proxyless_w13", "width_mult": 0.25, "resolutions": [32]},
        "data": {"kind": "synthetic", "n": 64, "n_classes": 3, "num_workers": 0},
        "device": "cpu",
        "seed": 1,
        "out": str(out),
        "train": {
            "batch_size": 16,
            "n_random": 1,
            "log_every": 100,
            "label_smoothing": 0.0,
            "phases": [
                {"name": "full", "steps": 8, "kernel": [7], "expand": [6], "depth": [4], "lr": 0.02},
                {"name": "kernel", "steps": 1, "kernel": [3, 5, 7], "expand": [6], "depth": [4], "lr": 0.01},
                {"name": "depth", "steps": 1, "kernel": [3, 5, 7], "expand": [6], "depth": [2, 3, 4], "lr": 0.01},
                {"name": "expand", "steps": 2, "kernel": [3, 5, 7], "expand": [3, 4, 6], "depth": [2, 3, 4],
                 "lr": 0.01, "reorganize": 2},
            ],
        },
        "checkpoint": {"every": 4, "resume": True},
    }
    cfg.update(kw)
    return cfg


def test_synthetic_task_is_deterministic_and_labelled():
    a, b = SyntheticColours(n=10, n_classes=3, size=8, seed=0), SyntheticColours(n=10, n_classes=3, size=8, seed=0)
    xa, ya = a[3]
    xb, yb = b[3]
    assert torch.equal(xa, xb) and ya == yb and xa.dtype == torch.uint8 and xa.shape == (3, 8, 8)


def test_full_network_learns_the_toy_task(tmp_path):
    """Judged on the whole (deterministic) dataset after BN recalibration, not on a few noisy
    mini-batch losses: a working trainer reaches >= 90% top-1 where chance is 33%, and a mean
    cross-entropy under half of chance's ln(3) (measured: 100% and 0.03-0.07 over seeds 1-4)."""
    import math

    from hwnas.supernet.data import evaluate, set_running_statistics

    cfg = _cfg(tmp_path)
    cfg["train"]["phases"] = [{"name": "full", "steps": 24, "kernel": [7], "expand": [6], "depth": [4], "lr": 0.01}]
    net = train(cfg)["supernet"]
    ds = SyntheticColours(n=64, n_classes=3, size=32, seed=cfg["seed"])
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(ds), 16)]
    set_running_statistics(net, batches)
    res = evaluate(net, batches)
    assert res["n"] == 64
    assert res["top1"] >= 0.9 and res["loss"] < 0.5 * math.log(3), res


def test_progressive_shrinking_resumes_exactly(tmp_path):
    full = train(_cfg(tmp_path / "a"))
    h = full["history"]
    assert full["step"] == 12 and len(h) == 12
    assert (tmp_path / "a" / "supernet.pth").is_file() and (tmp_path / "a" / "last.pth").is_file()

    # interrupted after 6 steps (checkpoint at stop), then resumed: same losses and weights as one run
    part = train(_cfg(tmp_path / "b", stop_after=6))
    assert part["step"] == 6 and not (tmp_path / "b" / "supernet.pth").exists()
    rest = train(_cfg(tmp_path / "b"))
    assert rest["step"] == 12
    assert rest["history"][:6] == pytest.approx(h[:6], rel=1e-5)
    assert rest["history"] == pytest.approx(h, rel=1e-4, abs=1e-5)
    sa, sb = full["supernet"].state_dict(), rest["supernet"].state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=1e-4, rtol=1e-4)

    # the final file is an OFA-format supernet checkpoint loadable by the checkpoint loader
    from hwnas.spaces import create_space
    from hwnas.supernet.checkpoint import load_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet

    net = ElasticMBConvNet(create_space("ofa_proxyless_w13", width_mult=0.25, resolutions=[32]), n_classes=3)
    load_checkpoint(net, tmp_path / "a" / "supernet.pth")

    # it records the space it was trained for: evaluate rebuilds it (a name alone cannot say its width), and a
    # network of another width is refused naming the settings that select it
    from hwnas.supernet.checkpoint import CheckpointError, recorded_space
    from hwnas.supernet.evaluate import evaluated_space
    from hwnas.spaces.errors import UserError

    ckpt = tmp_path / "a" / "supernet.pth"
    assert recorded_space(ckpt)["options"]["width_mult"] == 0.25 == recorded_space(tmp_path / "a" / "last.pth")["options"]["width_mult"]
    sp = evaluated_space(None, str(ckpt))
    assert (sp.name, sp.width_mult, list(sp.resolutions)) == (net.space.name, 0.25, [32])
    assert evaluated_space(None, "ofa_mbv3_d234_e346_k357_w1.2").width_mult == 1.2  # an official name: the default space
    with pytest.raises(UserError, match=r"--space ofa_mbv3_w12: .*trained for space ofa_proxyless_w13 \(width_mult=0.25"):
        evaluated_space("ofa_mbv3_w12", str(ckpt))
    with pytest.raises(CheckpointError, match=r"space=ofa_proxyless_w13 space.width_mult=0.25 space.resolutions=\[32\]"):
        load_checkpoint(ElasticMBConvNet(create_space("ofa_proxyless_w13", resolutions=[32]), n_classes=3), ckpt)


def test_bad_training_config_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    cfg["train"]["phases"][1]["kernel"] = [9]
    with pytest.raises(TrainConfigError, match=r"phases\[1\]\.kernel=\[9\]: none is a choice of space"):
        train(cfg)
    with pytest.raises(TrainConfigError, match="data.kind"):
        train(_cfg(tmp_path, data={"kind": "webdataset"}))


def test_ofa_schedule_serves_a_space_with_other_choices(caplog):
    # the configs' schedule is OFA's (expand 3/4/6); ProxylessNAS-mobile has expand 3 and 6 only
    from hydra import compose, initialize_config_dir

    import hwnas.conf  # noqa: F401  (registers ${hwnas_user_conf:}, as hwnas-train does)
    from hwnas.spaces import create_space
    from hwnas.supernet.elastic import ElasticMBConvNet
    from hwnas.supernet.train import parse_phases

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("default", overrides=["data.train=/data/imagenet/train"])
    net = ElasticMBConvNet(create_space("proxyless_mobile", resolutions=[32]), n_classes=3)
    phases = parse_phases(cfg.train.phases, net)
    assert [p.expand for p in phases] == [[6], [6], [6], [6], [6], [3, 6]]
    assert [p.reorganize for p in phases[4:]] == [0, 1]  # staged ordering over the widths the space has
    assert "expand [4] not choices of space proxyless_mobile" in caplog.text
    with pytest.raises(TrainConfigError, match=r"phases\[0\]\.expand=\[4\]: none is a choice of space proxyless_mobile"):
        parse_phases([{"steps": 1, "expand": [4]}], net)


def test_hydra_configs_compose():
    from hydra import compose, initialize_config_dir

    import hwnas.conf  # noqa: F401  (registers ${hwnas_user_conf:}, as hwnas-train does)

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("default", overrides=["data.train=/data/imagenet/train"])
        assert [p["name"] for p in cfg.train.phases] == ["full", "kernel", "depth_34", "depth_234", "expand_46", "expand_346"]
        smoke = compose("smoke")
        assert smoke.data.kind == "synthetic" and smoke.space.width_mult == 0.25


def test_hwnas_train_entry_point_runs_smoke_config(tmp_path, monkeypatch):
    import sys

    from hwnas.supernet.train import main

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "hwnas-train", "--config-name", "smoke", f"out={out}", "stop_after=2", "train.batch_size=8",
        "data.n=32", f"hydra.run.dir={tmp_path / 'hydra'}",
    ])
    main()
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert int(state["step"]) == 2 and len(state["history"]) == 2


def test_resume_under_other_settings_is_refused_and_leaves_the_checkpoint(tmp_path):
    """A checkpoint records the settings that decide the run: resuming with another seed or schedule is
    one error naming them (it used to continue silently, a finished run "resumed" with another seed
    trained nothing and rewrote supernet.pth); settings that only change how it runs resume."""
    from hwnas.supernet.checkpoint import CheckpointError

    out = tmp_path / "run"
    part = train(_cfg(out, stop_after=4))
    assert part["step"] == 4
    saved = (out / "last.pth").read_bytes()
    with pytest.raises(CheckpointError, match=r"other settings \(seed\)") as e:
        train(_cfg(out, seed=2))
    assert "checkpoint.resume=false" in str(e.value)
    other = _cfg(out)
    other["train"]["phases"][0]["steps"] = 9
    with pytest.raises(CheckpointError, match=r"train\.phases"):
        train(other)
    assert (out / "last.pth").read_bytes() == saved and not (out / "supernet.pth").exists()
    # how it runs (log interval, loader workers, where it stops) is not part of the identity
    same = _cfg(out, stop_after=6)
    same["train"]["log_every"] = 1
    assert train(same)["step"] == 6


def test_resume_on_changed_images_is_refused(tmp_path):
    """A checkpoint records the images of data.train (paths, classes, sizes, times): a resume after images
    were replaced or added under the same path is refused naming it; the same images resume."""
    import numpy as np
    from PIL import Image

    from hwnas.supernet.checkpoint import CheckpointError

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "img" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(tmp_path / "img" / f"c{c}" / f"{i}.png")
    out = tmp_path / "run"
    cfg = _cfg(out, stop_after=2, data={"kind": "imagefolder", "train": str(tmp_path / "img"), "num_workers": 0})
    cfg["train"]["batch_size"] = 4
    assert train(cfg)["step"] == 2
    assert train({**cfg, "stop_after": 3})["step"] == 3  # the same images: resumed
    saved = (out / "last.pth").read_bytes()
    Image.fromarray(np.zeros((36, 36, 3), "uint8")).save(tmp_path / "img" / "c1" / "4.png")  # one image more
    with pytest.raises(CheckpointError, match=r"the images under data.train=.* changed since") as e:
        train({**cfg, "stop_after": 4})
    assert "out=<new folder>" in str(e.value) and (out / "last.pth").read_bytes() == saved


def test_a_full_disk_while_saving_is_an_os_error_not_torchs_runtime_error(tmp_path, monkeypatch):
    """torch's writer reports a full disk as 'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
    pos ...' (a 68-line traceback from hwnas-train, 37 from hwnas-export); it is the OSError it is, one line."""
    import errno
    import shutil
    from collections import namedtuple

    import torch

    from hwnas.spaces.errors import os_error_message
    from hwnas.supernet.checkpoint import save_checkpoint

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3122944 vs 3122832")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(10, 10, 0))
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path / "last.pth", {"x": 1})
    assert e.value.errno == errno.ENOSPC and "no space left on the device" in os_error_message(e.value)
    assert not list(tmp_path.iterdir())  # the temporary file is gone, nothing half-written


def test_a_reduced_space_is_trained_as_reduced(tmp_path):
    """hwnas-train space=reduced_<device>: the preset's resolutions were replaced by the training default, and the
    sampler drew blocks the reduction had dropped (21 of 22 subnets outside the space)."""
    import json
    import random
    import subprocess
    import sys

    from hwnas.spaces import create_space
    from hwnas.supernet.elastic import ElasticMBConvNet
    from hwnas.supernet.train import PhaseSampler, parse_phases

    blocks = [["k3e3", "k5e4"], ["k5e4", "k7e6"], ["k3e3"], ["k5e6", "k7e6"], ["k3e4"], ["k3e3", "k5e6"]]
    sp = create_space("ofa_proxyless_w13", width_mult=0.25, resolutions=[32, 40], block_choices=blocks)
    net = ElasticMBConvNet(sp, n_classes=3)
    phases = parse_phases(_cfg(tmp_path)["train"]["phases"], net)
    for ph in phases:
        smp = PhaseSampler(net, ph, random.Random(0))
        for arch in [smp.largest(32), smp.smallest(40)] + [smp.random(32) for _ in range(20)]:
            sp.validate(arch)  # every subnet trained is one of the space's
    assert PhaseSampler(net, phases[0], random.Random(0)).largest(32).ks[0] == 5  # k7 dropped in unit 0: its largest is k5
    # the preset's own resolutions through the command
    (tmp_path / "conf" / "space").mkdir(parents=True)
    (tmp_path / "conf" / "space" / "reduced_t.yaml").write_text(
        "_target_: hwnas.spaces.create_space\nname: ofa_proxyless_w13\nwidth_mult: 0.25\nresolutions: [36, 44]\n")
    env = {**__import__("os").environ, "HWNAS_CONFIG_DIR": str(tmp_path / "conf")}
    p = subprocess.run([sys.executable, "-m", "hwnas.supernet.train", "space=reduced_t", "stop_after=1", "data.kind=synthetic",
                        "data.n=8", "data.num_workers=0", "threads=1", "train.batch_size=4", f"out={tmp_path / 'run'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert json.loads(state["settings"])["space"]["options"]["resolutions"] == [36, 44]


def test_a_truncated_checkpoint_is_named_in_whole_sentences(tmp_path, monkeypatch):
    """torch's message for a truncated file is three sentences; it was cut at 200 characters, mid-sentence
    ("... your checkpoint file is; is the file complete and written by torch.save?"). Its first sentence is kept."""
    from hwnas.predictors.tensorfile import TensorFileError, torch_load_weights
    from hwnas.supernet.checkpoint import CheckpointError

    out = tmp_path / "run"
    train(_cfg(out, stop_after=2))
    data = (out / "last.pth").read_bytes()
    (out / "last.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        train(_cfg(out))
    msg = str(e.value)
    assert "\n" not in msg and "file is;" not in msg
    assert "failed finding central directory; is the file complete and written by torch.save?); start in another" in msg

    torch_msg = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
                 "miniz error. If you are seeing this error, there is a high likelihood that your checkpoint file is "
                 "corrupted. This can happen if the checkpoint was not saved properly, was transferred incorrectly, or "
                 "the file was modified after saving.")

    def load(*a, **kw):
        raise RuntimeError(torch_msg)

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(TensorFileError) as e:
        torch_load_weights(out / "last.pth")
    assert e.value.reason == ("RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
                              "directory; is the file complete and written by torch.save?")


def test_init_from_a_checkpoint_of_other_classes_fine_tunes_with_a_new_classifier(tmp_path, caplog):
    """init_from an ImageNet supernet (1000 classes) onto your own classes was refused ("2 tensors with wrong shapes ...
    classifier.linear.weight (1000, 1536) vs (3, 1536)"): every other tensor is loaded, the classifier re-initialised,
    said in one line. Another network is still the one-line error; resuming from last.pth stays strict."""
    import logging

    from hwnas.spaces import create_space
    from hwnas.supernet.checkpoint import CheckpointError, save_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet
    from hwnas.supernet.train import init_from

    space = create_space("ofa_proxyless_w13", width_mult=0.25, resolutions=[32])
    torch.manual_seed(5)
    src = ElasticMBConvNet(space, n_classes=7).state_dict()
    save_checkpoint(tmp_path / "ck7.pth", {"state_dict": src})
    torch.manual_seed(6)
    net = ElasticMBConvNet(space, n_classes=3)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="hwnas.train"):
        init_from(net, str(tmp_path / "ck7.pth"))
    got = net.state_dict()
    assert [k for k in got if k.startswith("classifier.")] == ["classifier.linear.weight", "classifier.linear.bias"]
    for k in got:
        assert torch.equal(got[k], fresh[k] if k.startswith("classifier.") else src[k].to(got[k].dtype)), k
    lines = [r.getMessage() for r in caplog.records if r.name == "hwnas.train"]
    assert lines == [f"init_from={tmp_path / 'ck7.pth'}: its classifier has 7 classes, this run 3: every other tensor "
                     "loaded, the classifier re-initialised"]
    # through a training run (3 synthetic classes)
    assert train(_cfg(tmp_path / "ft", init_from=str(tmp_path / "ck7.pth"), stop_after=1))["step"] == 1

    # a network of another width (its classifier too): refused in one line
    save_checkpoint(tmp_path / "wide.pth", {"state_dict": ElasticMBConvNet(
        create_space("ofa_proxyless_w13", width_mult=0.5, resolutions=[32]), n_classes=7).state_dict()})
    with pytest.raises(CheckpointError, match=r"does not match ElasticMBConvNet of space ofa_proxyless_w0\.25: \d+ tensors "
                                              r"with wrong shapes") as e:
        init_from(ElasticMBConvNet(space, n_classes=3), str(tmp_path / "wide.pth"))
    assert "\n" not in str(e.value)

    # resume stays strict: a last.pth whose classifier has other classes is refused, not re-initialised
    out = tmp_path / "run"
    train(_cfg(out, stop_after=1))
    state = torch.load(out / "last.pth", weights_only=True)
    state["state_dict"]["classifier.linear.weight"] = torch.zeros(7, state["state_dict"]["classifier.linear.weight"].shape[1])
    state["state_dict"]["classifier.linear.bias"] = torch.zeros(7)
    save_checkpoint(out / "last.pth", state)
    with pytest.raises(CheckpointError, match=r"cannot resume: .*classifier\.linear\.weight \(7, \d+\) vs \(3, \d+\)"):
        train(_cfg(out, stop_after=2))


def _train_lines(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "hwnas.train"]
    caplog.clear()
    return lines


def test_stop_after_says_where_it_stopped_and_the_same_command_trains_no_more(tmp_path, caplog):
    """stop_after stopped silently (no line, no supernet.pth), and the same command again trained one step more
    each time."""
    import logging
    import os

    caplog.set_level(logging.INFO, logger="hwnas.train")
    out = tmp_path / "run"
    last = out / "last.pth"
    assert train(_cfg(out, stop_after=6))["step"] == 6
    stopped = (f"stopped at step 6 of 12 (stop_after=6): checkpoint {last}; the same command without stop_after "
               "(or with a larger one) continues from there")
    assert _train_lines(caplog)[-1] == stopped and not (out / "supernet.pth").exists()
    # last.pth is already a supernet checkpoint (as the README says: evaluate and accuracy=supernet take it)
    from hwnas.supernet.checkpoint import load_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet
    from hwnas.supernet.evaluate import evaluated_space

    net = ElasticMBConvNet(evaluated_space(None, str(last)), n_classes=3)
    load_checkpoint(net, last)
    assert torch.equal(net.state_dict()["classifier.linear.weight"],
                       torch.load(last, weights_only=True)["state_dict"]["classifier.linear.weight"])
    ino = os.stat(last).st_ino
    res = train(_cfg(out, stop_after=6))  # the same command: nothing more, last.pth left as it is
    assert res["step"] == 6 and len(res["history"]) == 6 and os.stat(last).st_ino == ino
    assert _train_lines(caplog) == ["resumed from %s at step 6" % last, stopped]
    assert train(_cfg(out, stop_after=8))["step"] == 8


def test_a_finished_run_started_again_trains_nothing_and_rewrites_nothing(tmp_path, caplog):
    """A finished run started again only said "resumed ... at step 12" and rewrote an identical supernet.pth (and
    last.pth); it says it is finished, and writes supernet.pth only when it is missing or differs."""
    import logging
    import os

    caplog.set_level(logging.INFO, logger="hwnas.train")
    out = tmp_path / "run"
    last = out / "last.pth"
    assert train(_cfg(out))["step"] == 12
    assert _train_lines(caplog)[-1] == f"finished at step 12: wrote {out / 'supernet.pth'}"
    before = {p: (os.stat(p).st_ino, p.read_bytes()) for p in (last, out / "supernet.pth")}
    first = torch.load(out / "supernet.pth", weights_only=True)["state_dict"]
    assert train(_cfg(out))["step"] == 12
    assert _train_lines(caplog) == [
        f"nothing to train: {last} is at step 12 of 12 (finished); {out / 'supernet.pth'} is up to date, left as it is "
        "(checkpoint.resume=false or another out= trains again)"]
    assert {p: (os.stat(p).st_ino, p.read_bytes()) for p in before} == before  # neither file rewritten
    (out / "supernet.pth").unlink()
    train(_cfg(out))
    assert _train_lines(caplog)[-1].endswith("supernet.pth was missing or differed: written again (checkpoint.resume=false "
                                             "or another out= trains again)")
    again = torch.load(out / "supernet.pth", weights_only=True)["state_dict"]
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_seconds_per_step_after_a_resume_count_the_steps_of_this_run(tmp_path, caplog, monkeypatch):
    """After a resume at step 6 of 12, the time of this process was divided by all 12 steps (half the real figure)."""
    import logging

    import hwnas.supernet.train as tr

    class Clock:  # each reading one second later: t0, then the log line at step 12
        n = -1.0

        @classmethod
        def perf_counter(cls):
            cls.n += 1.0
            return cls.n

    caplog.set_level(logging.INFO, logger="hwnas.train")
    out = tmp_path / "run"
    train(_cfg(out, stop_after=6))
    monkeypatch.setattr(tr, "time", Clock)
    train(_cfg(out))
    step_lines = [m for m in _train_lines(caplog) if m.startswith("step ")]
    assert step_lines == [step_lines[0]] and step_lines[0].startswith("step 12/12 ")
    assert step_lines[0].endswith("(0.17 s/step)")  # 1 s / 6 steps, not 1 s / 12


def test_an_image_file_given_as_the_data_folder_is_named_a_file(tmp_path):
    """data.train=<an image> said "data folder ... does not exist"; it is a file, not a folder."""
    from PIL import Image

    from hwnas.supernet.data import DataError, ImageFolderSource

    img = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(img)
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError) as e:
        train(_cfg(out, data={"kind": "imagefolder", "train": str(img), "num_workers": 0}))
    assert str(e.value) == (f"data.train={img} is a file, not a folder; give the ImageFolder root (class sub-folders: "
                            "data.train=/path/to/imagenet/train)")
    assert not out.exists()  # before any work
    with pytest.raises(DataError) as e:
        ImageFolderSource(img)
    assert str(e.value) == (f"data folder {img} is a file, not a folder; give the ImageFolder root (class sub-folders: "
                            "root/<class>/<image>)")


def test_smoke_width_is_for_its_own_space_only(tmp_path, monkeypatch):
    """--config-name smoke space=ofa_mbv3_w10 kept the smoke config's width_mult 0.25, which OFA-MobileNetV3 refuses
    ("allowed values: [1.0, 1.2]"): the quarter width is the smoke space's (ofa_proxyless_w13) only; another space
    keeps its own, and space.width_mult= on the command line still decides."""
    import json
    import sys

    from hydra import compose, initialize_config_dir

    import hwnas.conf  # noqa: F401
    from hwnas.supernet.train import main

    def run(*overrides):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        monkeypatch.setattr(sys, "argv", ["hwnas-train", "--config-name", "smoke", f"out={out}", "stop_after=1",
                                          "train.batch_size=4", "data.n=8", "space.resolutions=[32]",
                                          f"hydra.run.dir={tmp_path / 'hydra'}", *overrides])
        main()
        return json.loads(torch.load(out / "last.pth", weights_only=True)["settings"])["space"]

    assert run()["options"]["width_mult"] == 0.25
    w10 = run("space=ofa_mbv3_w10")
    assert (w10["space"], w10["options"]["width_mult"]) == ("ofa_mbv3_w10", 1.0)
    assert run("space=ofa_proxyless_w13", "space.width_mult=0.5")["options"]["width_mult"] == 0.5
    assert "width_mult" not in run("space=proxyless_mobile")["options"]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):  # the compose API: the same
        assert compose("smoke").space.width_mult == 0.25
        assert compose("smoke", overrides=["space=ofa_mbv3_w12"]).space.width_mult is None


def test_loader_workers_default_to_the_cpus_at_most_8(tmp_path, monkeypatch):
    """data.num_workers was 8 by default: on a 2-CPU machine torch warned "8 worker processes ... suggested max is 2"
    (at every epoch). Null (the default now) is one worker per CPU this process may use, at most 8."""
    import os

    from hydra import compose, initialize_config_dir

    import hwnas.conf  # noqa: F401
    import hwnas.supernet.train as tr

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        assert compose("default", overrides=["data.train=/data/imagenet/train"]).data.num_workers is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (tr.loader_workers(None), tr.loader_workers(0), tr.loader_workers(5)) == (2, 0, 5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert tr.loader_workers(None) == 8

    made = []
    real = tr.DataLoader

    def loader(*a, **kw):
        made.append(kw["num_workers"])
        return real(*a, **{**kw, "num_workers": 0})  # (no processes started in the test)

    monkeypatch.setattr(tr, "DataLoader", loader)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    train(_cfg(tmp_path / "run", stop_after=1, data={"kind": "synthetic", "n": 16, "n_classes": 3, "num_workers": None}))
    assert made == [2]


def test_a_supernet_records_its_classes_and_is_not_evaluated_on_others(tmp_path):
    """supernet.pth recorded its space only: the same number of other (or re-ordered) class folders was evaluated
    as if they were its classes (top-1 of unrelated labels, silently)."""
    import shutil

    import numpy as np
    from PIL import Image

    from hwnas.spaces import create_space
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.checkpoint import recorded_classes
    from hwnas.supernet.data import DataError

    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "img" / part / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(tmp_path / "img" / part / c / f"{i}.png")
    cfg = _cfg(tmp_path / "run", data={"kind": "imagefolder", "train": str(tmp_path / "img" / "train"), "num_workers": 0})
    cfg["train"]["batch_size"] = 4
    train(cfg)
    ck = tmp_path / "run" / "supernet.pth"
    assert recorded_classes(ck) == ["cat", "dog"]
    space = create_space("ofa_proxyless_w13", width_mult=0.25, resolutions=[32])
    kw = dict(checkpoint=str(ck), n_calib=4, n_val=4, batch_size=4, device="cpu")
    SupernetAccuracy(space, data=tmp_path / "img", **kw)  # its own classes: taken
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "img", other)
    for part in ("train", "val"):
        (other / part / "dog").rename(other / part / "wolf")
    with pytest.raises(DataError, match=r"was trained on the classes \['cat', 'dog'\]; data .*other/train has \['cat', 'wolf'\] "
                                        r"\(label 1: 'dog' there, 'wolf' here\)"):
        SupernetAccuracy(space, data=other, **kw)
