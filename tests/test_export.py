"""Export: timm model == static subnet, ONNX / TorchScript == torch, metadata, CLI end to end, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hwnas.spaces import SpaceError, create_space
from hwnas.supernet.export import ExportError, ExportItem, WeightsSource, export_arch, load_timm, read_archs
from hwnas.supernet.export_cli import main
from hwnas.supernet.static import build_static
from hwnas.supernet.timm_export import TimmExportError, copy_weights, create_timm_model, timm_config, to_timm

R = 64


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
                       weights=WeightsSource(_Supernet(space, 5), "fake.pth"))
    return space, arch, out, path


def test_export_files_and_atomicity(exported):
    space, arch, out, path = exported
    names = {p.name for p in path.iterdir()}
    assert {"arch.json", "metadata.json", "README.md", "model_state_dict.pth", "model_torchscript.pt", "model.onnx",
            "timm_model.pth", "timm_config.json"} <= names
    assert [p.name for p in out.iterdir()] == [path.name]  # no temp folders left
    assert space.validate(json.loads((path / "arch.json").read_text())["arch"]) == arch
    with pytest.raises(ExportError, match="already exists"):
        export_arch(space, arch, out, name=path.name)


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
    assert meta["weights"]["trained"] is True
    assert meta["checks"]["onnx_max_abs_diff"] <= 1e-4 and meta["checks"]["timm_max_abs_diff"] <= 1e-5
    props = {p.key: p.value for p in onnx.load(str(path / "model.onnx")).metadata_props}
    assert json.loads(props["hwnas.arch"]) == arch.to_dict()
    assert props["hwnas.resolution"] == str(R)
    assert json.loads(props["hwnas.accuracy"])["value"] == 0.7712
    readme = (path / "README.md").read_text()
    assert "MobileNetV3(" in readme and arch.to_str() in readme and "77.12%" in readme


def _pareto(tmp_path, space, archs):
    rows = [{"arch": a.to_dict(), "arch_str": a.to_str(), "accuracy": 0.7 + 0.01 * i, "latency": 10.0 + i}
            for i, a in enumerate(archs)]
    data = {"space": space.to_config(), "budgets": [12.0], "objectives": {"accuracy": "maximise", "latency": "minimise"},
            "best": {"12": rows[0]}, "front": rows}
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps(data))
    return run


def test_cli_exports_pareto_front(tmp_path, capsys):
    space = create_space("ofa_proxyless_w13", resolutions=[R])
    archs = space.sample(2, 4)
    run = _pareto(tmp_path, space, archs)
    rc = main([str(run), "--formats", "torch,onnx"])
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
    space2, items = read_archs(run)
    assert space2.resolutions == [R] and [it.arch for it in items] == archs


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


def test_bad_inputs(tmp_path, capsys):
    assert main([str(tmp_path / "missing" / "pareto.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    space = create_space("ofa_mbv3_w12", resolutions=[R])
    bad = space.sample(1, 0)[0].to_dict()
    bad["kernel"] = bad.pop("ks")
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(SpaceError, match="unknown key|missing key"):
        read_archs(tmp_path / "a.json", space)
    assert main([str(tmp_path / "a.json"), "--space", "ofa_mbv3_w12"]) == 2
    assert "ks" in capsys.readouterr().err
    run = _pareto(tmp_path, space, space.sample(1, 1))
    assert main([str(run), "--formats", "torch,pdf"]) == 2
    assert "allowed" in capsys.readouterr().err
    assert main([str(run), "--select", "5"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([str(run), "--checkpoint", str(tmp_path / "nope.pth")]) == 2


@pytest.mark.slow
def test_cli_with_supernet_checkpoint(tmp_path):
    """Weights come from the supernet checkpoint: the exported state dict is get_active_subnet's."""
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet

    space = create_space("ofa_mbv3_w12", resolutions=[R])
    supernet = randomize(ElasticMBConvNet(space), 9)
    ckpt = save_checkpoint(tmp_path / "supernet.pth", {"state_dict": supernet.state_dict()})
    arch = space.sample(1, 2)[0]
    out = tmp_path / "out"
    assert main([arch.to_json(), "--space", "ofa_mbv3_w12", "--checkpoint", str(ckpt), "--out", str(out),
                 "--formats", "torch"]) == 2  # r=64 is not in the default space
    rc = main([str(_pareto(tmp_path, space, [arch])), "--checkpoint", str(ckpt), "--out", str(out), "--formats", "torch"])
    assert rc == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["weights"]["trained"] is True and meta["weights"]["checkpoint"].endswith("supernet.pth")
    sd = torch.load(folder / "model_state_dict.pth", weights_only=True)
    want = supernet.get_active_subnet(arch).state_dict()
    assert sd.keys() == want.keys()
    for k in sd:
        torch.testing.assert_close(sd[k], want[k])


def test_model_card_timm_code_runs(exported, monkeypatch):
    """The pure-timm loading code in README.md rebuilds the model with the exported weights."""
    import re

    from hwnas.supernet._compat import ensure_torchvision

    space, arch, out, path = exported
    ensure_torchvision()
    code = re.search(r"```python\n(import json, torch\nfrom functools.*?)```", (path / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(path)
    ns: dict = {}
    exec(code, ns)
    x = torch.randn(2, 3, R, R, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ns["model"](x), _Supernet(space, 5).get_active_subnet(arch)(x), atol=1e-5, rtol=1e-5)
