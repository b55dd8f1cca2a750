"""Export: timm model == static subnet, ONNX / TorchScript == torch, metadata, CLI end to end, errors."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from hwnas.spaces import SpaceError, create_space
from hwnas.spaces.io import space_spec
from hwnas.supernet.export import ExportError, ExportItem, WeightsSource, export_arch, load_timm, read_items
from hwnas.supernet.export_cli import main as _main
from hwnas.supernet.static import build_static
from hwnas.supernet.timm_export import TimmExportError, copy_weights, create_timm_model, timm_config, to_timm

R = 64


def main(argv):
    """``hwnas-export`` in-process: its exit status (errors exit through ``cli_errors``)."""
    try:
        return _main(argv)
    except SystemExit as exc:
        return exc.code


def randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every tensor a non-trivial value (OFA's init makes the logits ~0, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("bn.weight") or name.endswith("running_mean"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + (0.75 if name.endswith("weight") else -0.25))
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
    return net.eval()


class _Supernet:
    """Stands in for a loaded supernet: subnets with fixed random weights."""

    def __init__(self, space, seed=0):
        self.space, self.seed = space, seed

    def get_active_subnet(self, arch):
        return randomize(build_static(self.space, arch), self.seed)


@pytest.mark.parametrize("name", ["ofa_mbv3_w12", "ofa_proxyless_w13"])
def test_timm_model_equals_static_subnet(name):
    space = create_space(name, resolutions=[R])
    for seed in (0,):
        arch = space.sample(1, seed)[0]
        net = randomize(build_static(space, arch), seed)
        model, cfg, diff = to_timm(net, space, arch)
        x = torch.randn(3, 3, R, R, generator=torch.Generator().manual_seed(7 + seed))
        with torch.no_grad():
            ref, got = net(x), model(x)
        assert ref.abs().max() > 1e-2  # non-trivial logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert cfg["model_class"] == ("EfficientNet" if "proxyless" in name else "MobileNetV3")
        n_ir = sum(s.startswith("ir_") for stage in cfg["arch_def"] for s in stage)
        assert n_ir == sum(arch.d)
        if "proxyless" in name:  # relu6 everywhere, no SE
            assert not any("_se" in s or "_n" in s for stage in cfg["arch_def"] for s in stage)
        else:
            assert any("_se0.25" in s for stage in cfg["arch_def"] for s in stage)


def test_timm_block_strings_follow_arch():
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    arch = space.validate(f"r{R}:k3e3.k5e4/k7e6.k3e3/k5e4.k5e4/k3e6.k7e3/k3e3.k3e3")
    cfg = timm_config(space, arch)
    assert cfg["arch_def"][1] == ["ir_r1_k3_s2_e3_c32_nre", "ir_r1_k5_s1_e4_c32_nre"]
    assert cfg["arch_def"][2][0] == "ir_r1_k7_s2_e6_c48_se0.25_nre"
    assert cfg["arch_def"][3] == ["ir_r1_k5_s2_e4_c96", "ir_r1_k5_s1_e4_c96"]
    assert cfg["arch_def"][4][1] == "ir_r1_k7_s1_e3_c136_se0.25"
    assert cfg["arch_def"][-1] == ["cn_r1_k1_s1_c1152"]
    assert (cfg["stem_size"], cfg["num_features"], cfg["bn_eps"]) == (24, 1536, 1e-5)


def test_timm_copy_refuses_other_arch():
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    a, b = space.sample(2, 3)
    assert a != b
    net = build_static(space, a)
    other = create_timm_model(timm_config(space, b))
    with pytest.raises(TimmExportError, match="does not match|layers but"):
        copy_weights(net, other, R)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    arch = space.sample(1, 11)[0]
    out = tmp_path_factory.mktemp("export")
    path = export_arch(space, ExportItem(arch, 0.7712, 18.5, "predicted", "measured"), out,
                       weights=WeightsSource(_Supernet(space, 5), "fake.pth"), allow_uncalibrated=True)
    return space, arch, out, path


def test_export_files_and_atomicity(exported):
    space, arch, out, path = exported
    names = {p.name for p in path.iterdir()}
    assert {"arch.json", "metadata.json", "README.md", "model_state_dict.pth", "model_torchscript.pt", "model.onnx",
            "timm_model.pth", "timm_config.json"} <= names
    assert [p.name for p in out.iterdir()] == [path.name]  # no temp folders left
    assert space.validate(json.loads((path / "arch.json").read_text())["arch"]) == arch
    # folders get the user's umask (not mkdtemp's 0700)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask
    # the same export again is skipped (the folder untouched); other settings are refused, naming them
    item = ExportItem(arch, 0.7712, 18.5, "predicted", "measured")
    weights = WeightsSource(_Supernet(space, 5), "fake.pth")
    stamp = (path / "metadata.json").stat().st_mtime_ns
    assert export_arch(space, item, out, weights=weights, allow_uncalibrated=True) == path
    assert (path / "metadata.json").stat().st_mtime_ns == stamp
    with pytest.raises(ExportError, match=r"other settings \(formats"):
        export_arch(space, item, out, weights=weights, allow_uncalibrated=True, formats=["torch"])
    with pytest.raises(ExportError, match="BN statistics re-calibrated"):
        export_arch(space, item, out, weights=weights)
    # the same checkpoint path with other contents (retrained) is another export, not "already exported"
    retrained = WeightsSource(_Supernet(space, 5), "fake.pth", checkpoint_fingerprint="sha256:other")
    with pytest.raises(ExportError, match=r"other settings \(weights"):
        export_arch(space, item, out, weights=retrained, allow_uncalibrated=True)


def test_export_onnx_torchscript_timm_equal_torch(exported):
    space, arch, out, path = exported
    import onnxruntime as ort

    net = build_static(space, arch)
    net.load_state_dict(torch.load(path / "model_state_dict.pth", weights_only=True))
    net.eval()
    x = torch.randn(4, 3, R, R, generator=torch.Generator().manual_seed(1))  # batch != export batch
    with torch.no_grad():
        ref = net(x)
    assert ref.abs().max() > 1e-2
    ref_expected = _Supernet(space, 5).get_active_subnet(arch)(x).detach()
    torch.testing.assert_close(ref, ref_expected)  # the state dict holds the supernet's weights
    sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref.numpy(), atol=1e-4, rtol=1e-4)
    ts = torch.jit.load(str(path / "model_torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(ts(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(load_timm(path)(x), ref, atol=1e-5, rtol=1e-5)
    ft = load_timm(path, num_classes=10)  # fine-tuning head
    assert ft.classifier.out_features == 10


def test_export_metadata(exported):
    space, arch, out, path = exported
    import onnx

    meta = json.loads((path / "metadata.json").read_text())
    assert meta["arch"] == arch.to_dict() and meta["resolution"] == R and meta["space"] == "ofa_mbv3_w12"
    assert meta["accuracy"] == {"value": 0.7712, "kind": "predicted", "metric": "top1"}
    assert meta["latency"]["value"] == 18.5 and meta["latency"]["kind"] == "measured"
    assert meta["weights"]["trained"] is True and meta["weights"]["bn_calibrated"] is False
    assert meta["checks"]["onnx_max_abs_diff"] <= 1e-4 and meta["checks"]["timm_max_abs_diff"] <= 1e-5
    props = {p.key: p.value for p in onnx.load(str(path / "model.onnx")).metadata_props}
    assert json.loads(props["hwnas.arch"]) == arch.to_dict()
    assert props["hwnas.resolution"] == str(R)
    assert json.loads(props["hwnas.accuracy"])["value"] == 0.7712
    assert json.loads(props["hwnas.weights"])["bn_calibrated"] is False
    readme = (path / "README.md").read_text()
    assert arch.to_str() in readme and "77.12%" in readme
    # weights without BN re-calibration are flagged in every file that can say so
    assert "NOT re-calibrated" in readme and "NOT re-calibrated" in meta["weights"]["warning"]
    for f in ("arch.json", "timm_config.json"):
        assert json.loads((path / f).read_text())["weights"]["bn_calibrated"] is False


def _pareto(tmp_path, space, archs, best=None, budgets=None):
    """A run folder whose pareto.json holds ``archs`` (latency 10, 11, ...); ``best``: budget -> row index."""
    rows = [{"arch": a.to_dict(), "arch_str": a.to_str(), "accuracy": 0.7 + 0.01 * i, "latency": 10.0 + i}
            for i, a in enumerate(archs)]
    best = {"12": 0} if best is None else best
    data = {"space": space_spec(space), "budgets": [float(b) for b in best] if budgets is None else budgets,
            "objectives": {"accuracy": "maximise", "latency": "minimise"},
            "best": {b: None if i is None else rows[i] for b, i in best.items()}, "front": rows}
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "pareto.json").write_text(json.dumps(data))
    return run


def test_cli_exports_pareto_front(tmp_path, capsys):
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    archs = space.sample(2, 4)
    run = _pareto(tmp_path, space, archs)
    rc = main([str(run), "--formats", "torch,onnx", "--all"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err
    index = json.loads((run / "export" / "index.json").read_text())
    assert [e["arch_str"] for e in index["exports"]] == [a.to_str() for a in archs]
    assert [e["latency"]["value"] for e in index["exports"]] == [10.0, 11.0]
    for e in index["exports"]:
        meta = json.loads((run / "export" / e["name"] / "metadata.json").read_text())
        assert meta["weights"]["trained"] is False and "NOT trained" in (run / "export" / e["name"] / "README.md").read_text()
        assert meta["checks"]["onnx_max_abs_diff"] <= 1e-4
        assert not (run / "export" / e["name"] / "timm_model.pth").exists()
    space2, items, _ = read_items(run, select="all")
    assert space2.resolutions == [R] and [it.arch for it in items] == archs
    # a second call into the folder: the index lists every export in it (it listed only the last call's)
    assert main([str(run), "--formats", "torch,onnx", "--no-progress"]) == 0  # the budget's best, a folder of its own
    assert len(json.loads((run / "export" / "index.json").read_text())["exports"]) == 3
    # an index.json of the user's own in the output folder is not replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.json").write_text('{"my": "notes"}')
    assert main([str(run), "--formats", "torch", "--out", str(tmp_path / "mine"), "--no-progress"]) == 2
    assert "is not an hwnas-export index" in capsys.readouterr().err
    assert (tmp_path / "mine" / "index.json").read_text() == '{"my": "notes"}'


def test_cli_exports_the_best_arch_per_budget_by_default(tmp_path, capsys):
    """A run knows its budgets: by default one folder per budget's best arch (an arch best for two
    budgets once), a budget no arch met is named; --all takes the whole front."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    archs = space.sample(4, 6)
    run = _pareto(tmp_path, space, archs, best={"10.5": 0, "12": 2, "13": 2, "5": None})
    assert main([str(run), "--formats", "torch", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "budget 5: no arch" in err
    index = json.loads((run / "export" / "index.json").read_text())["exports"]
    assert [e["arch_str"] for e in index] == [archs[0].to_str(), archs[2].to_str()]
    names = sorted(p.name for p in (run / "export").iterdir() if p.is_dir())
    assert [n.split("_r")[0] for n in names] == ["budget10_5", "budget12"]
    meta = json.loads((run / "export" / names[1] / "metadata.json").read_text())
    assert meta["extra"]["budgets"] == ["12", "13"] and meta["latency"]["value"] == 12.0
    # a run without budgets: the front is not exported silently
    nob = _pareto(tmp_path / "nob", space, archs, best={}, budgets=[])
    assert main([str(nob), "--formats", "torch"]) == 2
    assert "--all (4 archs)" in capsys.readouterr().err


def test_untrained_weights_are_the_same_for_the_same_arch():
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    a, b = space.sample(2, 3)
    w = WeightsSource()
    one, two, other = w.subnet(space, a).state_dict(), w.subnet(space, a).state_dict(), w.subnet(space, b).state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one if k in other and one[k].shape == other[k].shape and one[k].dim() > 1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    w.subnet(space, a)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is not moved by building a subnet


def test_formats_given_as_a_string(tmp_path):
    """export_arch(formats="torch") was read letter by letter: "formats ['t', 'o', 'r', 'c', 'h']: unknown"."""
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    path = export_arch(space, ExportItem(space.sample(1, 0)[0]), tmp_path, formats="torch")
    assert json.loads((path / "metadata.json").read_text())["files"] == {"torch": "model_state_dict.pth"}


def test_output_checks_are_relative_to_the_outputs_scale():
    """An untrained subnet's logits are ~1e-9: a tolerance of 1e-4 in absolute terms passed zeros or a permutation
    of them, so the 'checked' exports were not checked. The tolerance is relative to the output's own scale."""
    from hwnas.supernet.export import _check_close
    from hwnas.supernet.onnx import output_diff

    ref = torch.randn(2, 10, generator=torch.Generator().manual_seed(0)) * 1e-9
    assert _check_close("x", ref, ref.numpy() * (1 + 1e-7), 1e-4) > 0  # float noise: passes
    for wrong in (np.zeros((2, 10)), ref.numpy()[:, ::-1].copy(), ref.numpy()[:, :9]):
        with pytest.raises(ExportError, match="x output differs"):
            _check_close("x", ref, wrong, 1e-4)
    assert output_diff(np.zeros(3), np.zeros(3), 1e-4)[0] and not output_diff(np.zeros(3), np.full(3, 1e-30), 1e-4)[0]
    assert output_diff(np.full(3, 100.0), np.full(3, 100.001), 1e-4)[0]  # a trained net's logits: 1e-5 relative


def test_export_labels_what_the_search_recorded(tmp_path, capsys):
    """A search on the supernet's measured top-1 and a device's measured latency records that in pareto.json
    (``values``); the export labels them measured and names the device, and ignores what is not a known kind."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    archs = space.sample(2, 4)
    run = _pareto(tmp_path, space, archs, best={"10.5": 0, "12": 1})
    data = json.loads((run / "pareto.json").read_text())
    data["values"] = {"accuracy": {"kind": "measured", "by": "SupernetAccuracy"},
                      "latency": {"kind": "measured", "by": "MeasuredLatency", "device": "pi4-ort"}}
    (run / "pareto.json").write_text(json.dumps(data))
    assert main([str(run), "--formats", "torch", "--no-progress"]) == 0
    for e in json.loads((run / "export" / "index.json").read_text())["exports"]:
        meta = json.loads((run / "export" / e["name"] / "metadata.json").read_text())
        assert meta["accuracy"]["kind"] == "measured"
        assert meta["latency"] == {"value": meta["latency"]["value"], "kind": "measured", "unit": "ms", "device": "pi4-ort"}
        assert "(measured, on pi4-ort)" in (run / "export" / e["name"] / "README.md").read_text()
    # a hostile or unknown record: the defaults, no device
    data["values"] = {"accuracy": {"kind": "__import__('os')"}, "latency": {"kind": 3, "device": ["x"]}}
    (run / "pareto.json").write_text(json.dumps(data))
    _, items, _ = read_items(run, select="all")
    assert {(it.accuracy_kind, it.latency_kind, it.latency_device) for it in items} == {("predicted", "predicted", None)}


def test_search_records_what_its_values_are(tmp_path):
    """pareto.json says what each objective is (provenance): a plug-in without ``kind`` is predicted; a
    measured latency names its device; wrappers are looked through."""
    from hwnas.predictors.base import Predictor, provenance
    from hwnas.search import run_search
    from hwnas.search.evaluators import DistributedPredictor
    from hwnas.search.results import write_results

    class Acc:
        def predict(self, archs):
            return np.array([0.5 + 0.01 * a.r / R for a in archs])

    class Lat(Predictor):
        kind, device_name = "measured", "board-7"

        def predict(self, archs):
            return np.array([float(space.macs(a)) / 1e6 for a in archs])

    space = create_space("ofa_proxyless_w13", resolutions=[R])
    assert provenance(DistributedPredictor(Lat(), None)) == {"kind": "measured", "by": "Lat", "device": "board-7"}
    res = run_search(space, Acc(), Lat(), pop_size=8, n_gen=2, refine=0, seed=0, verbose=False)
    write_results(res, tmp_path, plot=False)
    values = json.loads((tmp_path / "pareto.json").read_text())["values"]
    assert values == {"accuracy": {"kind": "predicted", "by": "Acc"},
                      "latency": {"kind": "measured", "by": "Lat", "device": "board-7"}}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["best"]["12"].update(arch_str=d["front"][1]["arch_str"]), r"best\['12'\]: arch and arch_str are two different"),
    (lambda d: d["best"]["12"].update(latency=30.0), r"best\['12'\]: its latency 30 is above the budget 12"),
    (lambda d: d["front"][0].update(accuracy="hello"), r"entry 0 accuracy is 'hello', not a number"),
    (lambda d: d["best"].update({"12": "x"}), r"best\['12'\] is str, not an entry"),
])
def test_an_edited_pareto_json_is_refused_not_exported_mislabelled(tmp_path, capsys, edit, message):
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    run = _pareto(tmp_path, space, space.sample(2, 4))
    data = json.loads((run / "pareto.json").read_text())
    edit(data)
    (run / "pareto.json").write_text(json.dumps(data))
    assert main([str(run), "--formats", "torch", "--no-progress"] + (["--all"] if "entry 0" in message else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (run / "export").exists()


def test_a_truncated_pareto_json_says_so(tmp_path, capsys):
    """A pareto.json cut short was read as JSON lines: 'line 9 is a int; an entry is an arch ...'."""
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    run = _pareto(tmp_path, space, space.sample(2, 4))
    text = json.dumps(json.loads((run / "pareto.json").read_text()), indent=1)
    (run / "pareto.json").write_text(text[: len(text) // 2])
    assert main([str(run), "--formats", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not valid JSON" in err[0] and "cut short" in err[0], err
    # a search stopped before its first front: its checkpoint only
    (run / "pareto.json").unlink()
    (run / "checkpoint.npz").write_bytes(b"x")
    assert main([str(run), "--formats", "torch"]) == 2
    assert "has not written its front yet" in capsys.readouterr().err


def test_the_front_of_an_unfinished_search_is_exported_with_a_note(tmp_path, capsys):
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    run = _pareto(tmp_path, space, space.sample(2, 4))
    data = json.loads((run / "pareto.json").read_text())
    (run / "pareto.json").write_text(json.dumps({**data, "partial": True}))
    assert main([str(run), "--formats", "torch", "--no-progress"]) == 0
    assert "unfinished search" in capsys.readouterr().err
    (name,) = [e["name"] for e in json.loads((run / "export" / "index.json").read_text())["exports"]]
    assert json.loads((run / "export" / name / "metadata.json").read_text())["extra"]["partial_search"] is True
    assert "unfinished search" in (run / "export" / name / "README.md").read_text()
    # the finished search's export of the same arch is another export, not "already exported"
    (run / "pareto.json").write_text(json.dumps(data))
    assert main([str(run), "--formats", "torch", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_single_arch_string(tmp_path):
    out = tmp_path / "o"
    arch = f"r{R}:k3e3.k3e3/k5e4.k5e4/k7e6.k7e6/k3e3.k3e3/k5e6.k5e6"
    rc = main([arch, "--space", "ofa_mbv3_w10", "--out", str(out), "--formats", "timm", "--accuracy", "0.75",
               "--accuracy-kind", "measured"])
    # r64 is not in the default w1.0 space -> clear error naming r and the allowed values
    assert rc == 2
    space = create_space("ofa_mbv3_w10")
    rc = main([arch.replace(f"r{R}", "r128"), "--space", "ofa_mbv3_w10", "--out", str(out), "--formats", "timm",
               "--accuracy", "0.75", "--accuracy-kind", "measured"])
    assert rc == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["accuracy"] == {"value": 0.75, "kind": "measured", "metric": "top1"}
    assert space.validate(meta["arch"]).r == 128
    # a percentage is stored as the fraction every other export holds (74.5 stayed 74.5)
    rc = main([arch.replace(f"r{R}", "r128"), "--space", "ofa_mbv3_w10", "--out", str(tmp_path / "p"), "--formats", "torch",
               "--accuracy", "74.5"])
    (folder,) = [p for p in (tmp_path / "p").iterdir() if p.is_dir()]
    assert rc == 0 and json.loads((folder / "metadata.json").read_text())["accuracy"]["value"] == pytest.approx(0.745)


def test_bad_inputs(tmp_path, capsys):
    assert main([str(tmp_path / "missing" / "pareto.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    bad = space.sample(1, 0)[0].to_dict()
    bad["kernel"] = bad.pop("ks")
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(SpaceError, match="unknown key|missing key"):
        read_items(tmp_path / "a.json", space)
    assert main([str(tmp_path / "a.json"), "--space", "ofa_mbv3_w12"]) == 2
    assert "ks" in capsys.readouterr().err
    run = _pareto(tmp_path, space, space.sample(1, 1))
    assert main([str(run), "--formats", "torch,pdf"]) == 2
    assert "allowed" in capsys.readouterr().err
    assert main([str(run), "--select", "5"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([str(run), "--checkpoint", str(tmp_path / "nope.pth"), "--no-calib"]) == 2
    assert "nope.pth" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_supernet_checkpoint_recalibrates_bn(tmp_path, capsys):
    """Weights come from the supernet checkpoint (get_active_subnet's); BN statistics are re-computed on
    the --calib-data images; without them the export is refused, and --no-calib flags it."""
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.data import CalibrationSet
    from hwnas.supernet.elastic import ElasticMBConvNet
    from PIL import Image

    space = create_space("ofa_proxyless_w13", width_mult=0.5, resolutions=[R])  # small: a fast test
    supernet = randomize(ElasticMBConvNet(space), 9)
    ckpt = save_checkpoint(tmp_path / "supernet.pth", {"state_dict": supernet.state_dict()})
    images = tmp_path / "imgs" / "train"
    for c in range(2):
        (images / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (40, 44, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"c{c}" / f"{i}.png")
    arch = space.sample(1, 2)[0]
    run = _pareto(tmp_path, space, [arch])
    out = tmp_path / "out"
    assert main([str(run), "--checkpoint", str(ckpt), "--out", str(out), "--formats", "torch"]) == 2
    assert "--calib-data" in capsys.readouterr().err and not out.exists()
    rc = main([str(run), "--checkpoint", str(ckpt), "--calib-data", str(tmp_path / "imgs"), "--calib-images", "8",
               "--out", str(out), "--formats", "torch", "--no-progress"])
    assert rc == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["weights"]["trained"] is True and meta["weights"]["checkpoint"].endswith("supernet.pth")
    assert meta["weights"]["bn_calibrated"] is True and meta["weights"]["bn_calibration"]["n_images"] == 8
    sd = torch.load(folder / "model_state_dict.pth", weights_only=True)
    want = supernet.get_active_subnet(arch)
    raw = {k: v.clone() for k, v in want.state_dict().items()}
    CalibrationSet(images, n_images=8).calibrate(want, R)
    assert sd.keys() == raw.keys()
    for k in sd:
        torch.testing.assert_close(sd[k], want.state_dict()[k])
        if k.endswith("running_mean"):
            assert not torch.allclose(sd[k], raw[k])  # re-calibrated, not the supernet's statistics
        elif not k.endswith(("running_var", "num_batches_tracked")):
            torch.testing.assert_close(sd[k], raw[k])  # the supernet's weights
    # --no-calib: the supernet's statistics, flagged
    out2 = tmp_path / "out2"
    assert main([str(run), "--checkpoint", str(ckpt), "--no-calib", "--out", str(out2), "--formats", "torch"]) == 0
    (folder,) = [p for p in out2.iterdir() if p.is_dir()]
    assert json.loads((folder / "metadata.json").read_text())["weights"]["bn_calibrated"] is False
    assert "NOT re-calibrated" in (folder / "README.md").read_text()
    sd = torch.load(folder / "model_state_dict.pth", weights_only=True)
    for k in sd:
        torch.testing.assert_close(sd[k], raw[k])


def test_model_card_timm_code_runs(exported, monkeypatch):
    """The model card's timm code (register_timm + timm.create_model, no private timm module) builds the
    exported network with its weights, and a new classifier for fine-tuning."""
    import re

    space, arch, out, path = exported
    card = (path / "README.md").read_text()
    assert "- top-1: 77.12% (predicted); latency: 18.5 ms (measured)" in card  # the unit (it used to be "18.5")
    code = re.search(r"```python\n(from hwnas.supernet.timm_export import register_timm\nimport timm\n.*?)```", card, re.S).group(1)
    assert "timm.models._" not in card and "timm.layers" not in card
    monkeypatch.chdir(path)
    ns: dict = {}
    exec(code, ns)
    assert ns["name"] == "hwnas_" + path.name
    ft, model = ns["finetune"], None
    assert ft.get_classifier().out_features == 10
    import timm

    model = timm.create_model(ns["name"], pretrained=True, pretrained_cfg_overlay=dict(file=str(path / "timm_model.pth")))
    x = torch.randn(2, 3, R, R, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _Supernet(space, 5).get_active_subnet(arch)(x), atol=1e-5, rtol=1e-5)
        # fine-tuning model: every weight but the classifier is the exported one
        feats = ft.eval().forward_head(ft.forward_features(x), pre_logits=True)
        torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True))


def test_register_timm_refuses_a_name_timm_already_has(exported, tmp_path):
    """An edited timm_config.json naming one of timm's own models (resnet18) would replace it in the process."""
    import shutil

    import timm

    from hwnas.supernet.timm_export import register_timm

    _, _, _, path = exported
    for name, message in (("resnet18", "not an hwnas model name"), ("hwnas_x/../y", "not an hwnas model name")):
        folder = tmp_path / name.replace("/", "_")
        shutil.copytree(path, folder)
        cfg = json.loads((folder / "timm_config.json").read_text())
        (folder / "timm_config.json").write_text(json.dumps({**cfg, "timm_name": name}))
        with pytest.raises(TimmExportError, match=message):
            register_timm(folder)
    assert timm.create_model("resnet18").__class__.__name__ == "ResNet"
    assert register_timm(path) == register_timm(path)  # its own name again: replaced, no error


def test_arch_files_in_every_form_give_the_same_archs(tmp_path):
    """hwnas.spaces.io.read_archs (the one arch-list reader): a JSON list, a pareto.json, JSON lines mixing
    dicts, rows and compact strings, a CSV 'arch' column; a bad entry is named with its file and index."""
    from hwnas.spaces.io import read_arch_file, read_archs

    space = create_space("ofa_mbv3_w12")
    archs = space.sample(3, 5)
    forms = {
        "list.json": json.dumps([a.to_dict() for a in archs]),
        "pareto.json": json.dumps({"space": space_spec(space), "budgets": [], "front": [{"arch": a.to_dict()} for a in archs]}),
        "lines.jsonl": "\n".join([archs[0].to_json(), archs[1].to_str(), json.dumps({"arch": archs[2].to_dict()})]),
        "archs.csv": "arch,latency\n" + "\n".join(f'"{a.to_json().replace(chr(34), chr(34) * 2)}",1.0' for a in archs),
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        assert read_archs(tmp_path / name, space) == archs, name
    header, rows = read_arch_file(tmp_path / "pareto.json")
    assert header["space"] == space_spec(space) and len(rows) == 3
    (tmp_path / "bad.jsonl").write_text(archs[0].to_str() + "\nr999:k3e3\n")
    with pytest.raises(SpaceError, match=r"bad\.jsonl entry 1"):
        read_archs(tmp_path / "bad.jsonl", space)


def test_bn_recalibration_keeps_the_checkpoints_fingerprint(tmp_path, monkeypatch):
    """With --calib-data the weights were rebuilt without the checkpoint's fingerprint: a checkpoint retrained at the
    same path was reported as 'already exported' (the old weights served)."""
    import hwnas.supernet.export as ex

    space = create_space("ofa_mbv3_w12", resolutions=[R])
    seen = []

    def fake_export_one(space, it, out_dir, weights, *args, **kwargs):
        seen.append(weights)
        raise KeyboardInterrupt  # stop here: only the weights handed on are looked at

    monkeypatch.setattr(ex, "_calibration", lambda data, n, recorded=None: "calibration")
    monkeypatch.setattr(ex, "_export_one", fake_export_one)
    weights = WeightsSource(_Supernet(space, 5), "ck.pth", checkpoint_fingerprint="sha256:abc")
    with pytest.raises(KeyboardInterrupt):
        ex.export_many(space, [ExportItem(space.sample(1, 0)[0])], tmp_path / "out", weights=weights, calib_data="imgs")
    assert seen[0].checkpoint_fingerprint == "sha256:abc" and seen[0].calibration == "calibration"
