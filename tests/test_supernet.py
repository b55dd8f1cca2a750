"""Tests of the supernet package: compat shim, static nets, elastic supernets, extraction, loading."""

from __future__ import annotations

import pytest
import torch

from hwnas.supernet._compat import ensure_torchvision, import_timm


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_compat_timm_builds_a_model():
    tv = ensure_torchvision()
    assert ensure_torchvision() is tv  # idempotent
    timm = import_timm()
    m = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7)
    # the schemas exist exactly once and the fallback nms kernel suppresses the overlapping box
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


# ----------------------------------------------------------------------------- static networks
import pytest  # noqa: E402

from hwnas.spaces import create_space  # noqa: E402
from hwnas.supernet.static import build_static  # noqa: E402


@pytest.mark.parametrize("name", ["ofa_mbv3_w10", "ofa_mbv3_w12", "ofa_proxyless_w13", "proxyless_mobile"])
def test_build_static_structure_matches_layers(name):
    space = create_space(name)
    arch = space.sample(1, 3)[0]
    net = build_static(space, arch, n_classes=10).eval()
    specs = [L for L in space.layers(arch) if L.kind == "mbconv"]
    assert len(net.blocks) == len(specs) == sum(arch.d) + 1
    sd = net.state_dict()
    for i, L in enumerate(specs):
        p = f"blocks.{i}.conv."
        assert sd[p + "depth_conv.conv.weight"].shape == (L.mid, 1, L.kernel, L.kernel)
        assert sd[p + "point_linear.conv.weight"].shape == (L.out_shape[2], L.mid, 1, 1)
        assert (p + "inverted_bottleneck.conv.weight" in sd) == (L.expand != 1)
        assert (p + "depth_conv.se.fc.reduce.weight" in sd) == L.se
        assert (net.blocks[i].shortcut is not None) == L.idskip
    eps = 1e-5 if name.startswith("ofa_mbv3") else 1e-3
    assert net.first_conv.bn.eps == eps
    with torch.no_grad():
        y = net(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # MobileNetV3 mixes features after pooling without BN; ProxylessNAS before pooling with BN
    assert ("feature_mix_layer.bn.weight" in sd) == (not name.startswith("ofa_mbv3"))
    assert ("final_expand_layer.conv.weight" in sd) == name.startswith("ofa_mbv3")


# ----------------------------------------------------------------------------- elastic supernets
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hwnas.spaces import SpaceError  # noqa: E402
from hwnas.supernet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from hwnas.supernet.elastic import OFA_CHECKPOINTS, ElasticMBConvNet, supernet_for_checkpoint  # noqa: E402
from hwnas.supernet.layers import ElasticDepthwiseConv2d  # noqa: E402
from hwnas.supernet.ofa_keys import official_spec  # noqa: E402

_NETS: dict = {}


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, incl. BN statistics and kernel matrices (identity would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("_matrix"):
                t.copy_(torch.eye(t.shape[0]) + 0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith("bn.weight") or name.endswith("bn.bn.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g) + (0.0 if t.dim() > 1 else 0.05))
    return net


def _supernet(name: str) -> ElasticMBConvNet:
    if name not in _NETS:
        _NETS[name] = _randomize(ElasticMBConvNet(create_space(name, n_classes=10)), seed=1).eval()
    return _NETS[name]


@pytest.mark.parametrize("ckpt", sorted(OFA_CHECKPOINTS))
def test_state_dict_equals_official_ofa_layout(ckpt):
    spec = official_spec(ckpt)
    net = supernet_for_checkpoint(ckpt)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert set(got) == set(spec), (sorted(set(got) - set(spec))[:5], sorted(set(spec) - set(got))[:5])
    assert got == dict(spec)


def test_kernel_transform_matches_ofa_definition():
    conv = ElasticDepthwiseConv2d(4, [3, 5, 7])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.randn(4, 1, 7, 7, generator=g))
        getattr(conv, "7to5_matrix").copy_(torch.randn(25, 25, generator=g))
        getattr(conv, "5to3_matrix").copy_(torch.randn(9, 9, generator=g))
    w = conv.conv.weight.detach()
    m75, m53 = getattr(conv, "7to5_matrix").detach(), getattr(conv, "5to3_matrix").detach()
    # by hand: centre 5x5 of the 7x7 times M(7->5)^T, then centre 3x3 of that times M(5->3)^T
    w5 = (w[:, 0, 1:6, 1:6].reshape(4, 25) @ m75.T).reshape(4, 5, 5)
    w3 = (w5[:, 1:4, 1:4].reshape(4, 9) @ m53.T).reshape(4, 3, 3)
    assert torch.allclose(conv.active_weight(4, 7), w)
    assert torch.allclose(conv.active_weight(4, 5)[:, 0], w5, atol=1e-5)
    assert torch.allclose(conv.active_weight(2, 3)[:, 0], w3[:2], atol=1e-5)
    x = torch.randn(1, 4, 9, 9, generator=g)
    y = conv(x, kernel=3)
    assert torch.allclose(y, F.conv2d(x, w3[:, None], padding=1, groups=4), atol=1e-4)


@pytest.mark.parametrize("name", ["ofa_mbv3_w12", "ofa_proxyless_w13"])
def test_extracted_subnet_equals_supernet(name):
    space = create_space(name, n_classes=10)
    net = _supernet(name)
    rng = np.random.default_rng(5)
    archs = space.sample(2, rng) + [net.max_arch(), net.min_arch()]
    for a in archs:
        x = torch.randn(2, 3, 40, 40)
        net.set_active(a)
        with torch.no_grad():
            y_super = net(x)
            sub = net.get_active_subnet()
            y_sub = sub.eval()(x)
        assert sub.arch == a
        torch.testing.assert_close(y_sub, y_super, atol=1e-5, rtol=1e-5)
        # the extracted subnet has exactly the layout (names + shapes) of build_static's network
        ref = build_static(space, a, n_classes=10) if a in (archs[0], archs[1]) else None
        if ref is not None:
            assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in sub.state_dict().items()}
    # different subnets give different functions, and the active subnet is restored after extraction
    net.set_active(archs[0])
    net.get_active_subnet(archs[1])
    assert net.active_arch == archs[0]


def test_reorganize_middle_weights_keeps_largest_network():
    net = _randomize(ElasticMBConvNet(create_space("ofa_mbv3_w10", n_classes=10)), seed=3).eval()
    net.set_max()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.re_organize_middle_weights(expand_ratio_stage=0)
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    ib = net.blocks[3].conv
    imp = ib.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert (imp[:-1] >= imp[1:] - 1e-6).all()  # sorted by importance


def test_set_active_validates_through_space():
    net = _supernet("ofa_mbv3_w12")
    with pytest.raises(SpaceError, match="r=100"):
        net.set_active({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 100})
    with pytest.raises(SpaceError, match="ks"):
        net.set_active({"ks": [9] * 20, "e": [3] * 20, "d": [2] * 5, "r": 160})
    a = net.set_active("r160:k3e3.k5e4/k7e6.k3e3/k3e3.k3e3/k5e6.k5e6/k7e4.k3e3")
    assert net.runtime_depth == [2, 2, 2, 2, 2] and net.blocks[5].conv.active_kernel == 7 and a.r == 160


def test_checkpoint_roundtrip_legacy_names_and_refusals(tmp_path, monkeypatch):
    src = _supernet("ofa_proxyless_w13")
    # OFA's file format with legacy block names, served as an official name from a mirror
    legacy = {k.replace("blocks.1.conv.", "blocks.1.mobile_inverted_conv."): v for k, v in src.state_dict().items()}
    mirror = tmp_path / "mirror"
    f = mirror / "ofa" / "ofa_nets" / "ofa_proxyless_d234_e346_k357_w1.3"
    save_checkpoint(f, {"state_dict": legacy})
    monkeypatch.setenv("HWNAS_ASSETS_MIRROR", str(mirror))
    dst = ElasticMBConvNet(create_space("ofa_proxyless_w13", n_classes=10)).eval()
    assert load_checkpoint(dst, "ofa_proxyless_d234_e346_k357_w1.3") == f
    dst.set_active(src.active_arch)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    # raw state dict from a path works too
    raw = tmp_path / "raw.pth"
    save_checkpoint(raw, src.state_dict())
    load_checkpoint(dst, raw)
    # truncated file
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(dst, bad)
    # missing tensor is named
    part = dict(src.state_dict())
    del part["blocks.3.conv.point_linear.conv.conv.weight"]
    save_checkpoint(tmp_path / "part.pth", part)
    with pytest.raises(CheckpointError, match=r"missing tensors: blocks\.3\.conv\.point_linear\.conv\.conv\.weight"):
        load_checkpoint(dst, tmp_path / "part.pth")
    # wrong network: a MobileNetV3 file into the ProxylessNAS supernet
    save_checkpoint(tmp_path / "mbv3.pth", {"state_dict": _supernet("ofa_mbv3_w12").state_dict()})
    with pytest.raises(CheckpointError, match="wrong shapes") as ei:
        load_checkpoint(dst, tmp_path / "mbv3.pth")
    assert "unexpected tensors" in str(ei.value) and "first_conv.conv.weight" in str(ei.value)


# ----------------------------------------------------------------------------- data, BN calibration, accuracy
from hwnas.supernet.data import (  # noqa: E402
    ImageFolderSource,
    calibrate_and_evaluate,
    eval_transform,
    evaluate,
    materialize,
    normalize,
    set_running_statistics,
)

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40), "yellow": (230, 220, 40)}


def make_image_folder(root, n_per_class: int = 6, size: int = 44, seed: int = 0):
    """A tiny ImageFolder of noisy single-colour PNGs (one class per colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size, size + 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    make_image_folder(root / "train", n_per_class=6, seed=0)
    make_image_folder(root / "val", n_per_class=3, seed=1)
    return root


def test_bn_recalibration_is_the_average_of_batch_statistics(tiny_folder):
    src = ImageFolderSource(tiny_folder / "train")
    assert src.n_classes == 4 and len(src) == 24 and src.classes == sorted(COLOURS)
    tb = materialize(src.view(eval_transform(32)), batch_size=8)
    assert tb.images.dtype == torch.uint8 and tb.images.shape == (24, 3, 32, 32)
    space = create_space("ofa_mbv3_w10", resolutions=[32], n_classes=4)
    net = _randomize(build_static(space, space.sample(1, 0)[0], n_classes=4), seed=2)
    n = set_running_statistics(net, tb)
    assert n == 24 and not net.training
    with torch.no_grad():
        z = [net.first_conv.conv(normalize(x)) for x, _ in tb]
    batch_means = torch.stack([t.mean((0, 2, 3)) for t in z])
    batch_vars = torch.stack([t.transpose(0, 1).reshape(t.shape[1], -1).var(1, unbiased=True) for t in z])
    torch.testing.assert_close(net.first_conv.bn.running_mean, batch_means.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net.first_conv.bn.running_var, batch_vars.mean(0), atol=1e-3, rtol=1e-3)
    assert net.first_conv.bn.momentum == 0.1  # restored


def test_evaluate_counts_top1_top5(tiny_folder):
    space = create_space("ofa_proxyless_w13", resolutions=[32], n_classes=4)
    net = build_static(space, space.sample(1, 1)[0], n_classes=4).eval()
    tb = materialize(ImageFolderSource(tiny_folder / "val").view(eval_transform(32)), batch_size=5)
    res = evaluate(net, tb, progress=True)
    with torch.no_grad():
        pred = net(normalize(tb.images)).argmax(1)
    assert res["n"] == 12
    assert res["top1"] == pytest.approx(float((pred == tb.labels).float().mean()))
    assert res["top5"] == 1.0  # 4 classes


def test_supernet_accuracy_is_cached_by_arch(tiny_folder, tmp_path):
    from hwnas.supernet.accuracy import SupernetAccuracy

    space = create_space("ofa_mbv3_w10", resolutions=[32, 40])
    db = tmp_path / "acc.sqlite"
    kw = dict(checkpoint=None, data=tiny_folder, n_calib=16, n_val=None, batch_size=8, device="cpu", cache=db)
    torch.manual_seed(0)
    acc = SupernetAccuracy(space, **kw)
    archs = space.sample(2, 4)
    same = space.validate(archs[0].to_dict())  # equal arch, different object
    p = acc.predict([archs[0], archs[1], same])
    assert acc.n_evaluated == 2 and p.shape == (3,) and p[0] == p[2]
    assert all(0.0 <= v <= 1.0 for v in p)
    # the value is the calibrated subnet's accuracy on the validation images
    sub = acc.supernet.get_active_subnet(archs[1])
    ref = calibrate_and_evaluate(sub, acc.data.calib(archs[1].r), acc.data.val(archs[1].r))
    assert p[1] == pytest.approx(ref["top1"]) and ref["n"] == 12
    # cache hit: nothing recomputed, also from a new instance reading the SQLite file
    acc.predict(space.batch(space.encode(archs)))
    assert acc.n_evaluated == 2
    acc2 = SupernetAccuracy(space, supernet=acc.supernet, **kw)
    p2 = acc2.predict(archs)
    assert acc2.n_evaluated == 0 and np.allclose(p2, p[:2])
    # picklable (Dask workers): the copy reopens the SQLite cache
    import pickle

    acc3 = pickle.loads(pickle.dumps(acc2))
    assert np.allclose(acc3.predict(archs), p[:2]) and acc3.n_evaluated == 0


def test_supernet_accuracy_refuses_a_dataset_with_another_class_count(tiny_folder):
    """A 1000-class supernet on a 4-class folder used to report @15 0.00% silently."""
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.data import DataError

    space = create_space("ofa_mbv3_w10", resolutions=[32])
    with pytest.raises(DataError, match="has 4 classes but the supernet's classifier has 1000 outputs"):
        SupernetAccuracy(space, checkpoint=None, supernet=ElasticMBConvNet(space), data=tiny_folder, n_calib=4, n_val=4,
                         device="cpu")


def test_evaluate_cli_writes_csv_and_refuses_bad_arch(tiny_folder, tmp_path, capsys):
    import csv

    from hwnas.supernet.evaluate import main as eval_main

    arch = "r128:k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3"
    out = tmp_path / "acc.csv"
    common = ["--space", "ofa_mbv3_w10", "--checkpoint", "none", "--data", str(tiny_folder), "--n-calib", "8",
              "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    assert eval_main(common + ["--arch", arch, "--out", str(out)]) == 0
    assert "top5=n/a (4 classes)" in capsys.readouterr().out  # (always 100% with fewer than 6 classes)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["arch_str"] == arch and rows[0]["n"] == "12"
    assert 0.0 <= float(rows[0]["top1"]) <= 1.0
    with pytest.raises(SystemExit) as ei:
        eval_main(common + ["--arch", "r100:k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "python -m hwnas.supernet.evaluate: error: " in err and "r=100" in err


def test_supernet_accuracy_cache_key_follows_the_checkpoint_contents(tiny_folder, tmp_path):
    """A checkpoint retrained into the same path is another supernet: its cached accuracies are not
    served; the same contents keep the key."""
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.checkpoint import save_checkpoint

    space = create_space("ofa_mbv3_w10", resolutions=[32])
    ck = tmp_path / "supernet.pth"
    kw = dict(checkpoint=str(ck), data=tiny_folder, n_calib=4, n_val=4, batch_size=4, device="cpu")
    torch.manual_seed(0)
    save_checkpoint(ck, {"state_dict": ElasticMBConvNet(space, n_classes=4).state_dict()})
    a = SupernetAccuracy(space, **kw).fingerprint
    assert SupernetAccuracy(space, **kw).fingerprint == a
    torch.manual_seed(1)
    save_checkpoint(ck, {"state_dict": ElasticMBConvNet(space, n_classes=4).state_dict()})
    assert SupernetAccuracy(space, **kw).fingerprint != a


def test_a_missing_local_checkpoint_is_one_error_not_a_download(tmp_path, monkeypatch):
    """``runs/x/supernet.pth`` (relative, missing) used to be taken for an asset name and fetched from the
    asset site (a minute's timeout offline, then a misleading message)."""
    import hwnas.supernet.checkpoint as ck_mod
    from hwnas.supernet.checkpoint import CheckpointError, resolve_checkpoint

    def no_fetch(*a, **k):
        raise AssertionError("fetched")

    monkeypatch.setattr(ck_mod, "fetch", no_fetch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint='runs/x/supernet.pth' does not exist \(looked for "):
        resolve_checkpoint("runs/x/supernet.pth")
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        resolve_checkpoint("runs")


def test_data_folders_laid_out_wrongly_are_refused_naming_the_fix(tiny_folder, tmp_path):
    """The dataset root given as data.train trained a 2-class net on 'train' and 'val'; one class trained with loss 0;
    a root with train/ but no val/ was read as one ImageFolder of one class."""
    import shutil

    from hwnas.supernet.accuracy import split_data_root
    from hwnas.supernet.data import DataError

    with pytest.raises(DataError, match=r"holds train/ and val/, which would be read as two classes; give .*train"):
        ImageFolderSource(tiny_folder)
    one = tmp_path / "one"
    shutil.copytree(tiny_folder / "train" / sorted(COLOURS)[0], one / "only")
    with pytest.raises(DataError, match=r"has 1 class folder\(s\) \(\['only'\]\); a classifier needs at least 2"):
        ImageFolderSource(one)
    half = tmp_path / "half"
    shutil.copytree(tiny_folder / "train", half / "train")
    with pytest.raises(DataError, match=r"has train/ but no val/"):
        split_data_root(half)
    assert split_data_root(tiny_folder) == (tiny_folder / "train", tiny_folder / "val")
    png = next((tiny_folder / "train").rglob("*.png"))
    with pytest.raises(DataError, match=r"is a file, not a folder; give the ImageFolder root with train/ and val/"):
        split_data_root(png)  # (it said "does not exist")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named(tiny_folder, tmp_path, workers):
    """A truncated JPEG was 'error: Truncated File Read' (no file), or with loader workers a 38-line traceback."""
    import shutil

    from hwnas.supernet.data import DataError, make_loader

    root = tmp_path / "imgs"
    shutil.copytree(tiny_folder / "train", root)
    bad = sorted(root.rglob("*.*"))[0]
    bad.write_bytes(bad.read_bytes()[:60])
    src = ImageFolderSource(root)
    loader = make_loader(src.view(eval_transform(32)), batch_size=4, num_workers=workers)
    with pytest.raises(DataError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert msg.startswith(f"image {bad} cannot be read (") and msg.endswith("remove it or replace it with a readable image")
    assert "\n" not in msg


def test_supernet_accuracy_cache_key_follows_the_images(tiny_folder, tmp_path):
    """The cache key held the data folder's path only: class folders renamed (or images replaced) under it were
    served the old accuracies."""
    import os
    import shutil

    from hwnas.supernet.accuracy import SupernetAccuracy

    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    space = create_space("ofa_mbv3_w10", resolutions=[32])
    kw = dict(checkpoint=None, data=data, n_calib=4, n_val=8, batch_size=4, device="cpu")
    a = SupernetAccuracy(space, **kw).fingerprint
    assert SupernetAccuracy(space, **kw).fingerprint == a
    val = data / "val"
    names = sorted(p.name for p in val.iterdir())
    os.rename(val / names[0], val / "tmp")  # two classes swap their images
    os.rename(val / names[1], val / names[0])
    os.rename(val / "tmp", val / names[1])
    assert SupernetAccuracy(space, **kw).fingerprint != a


def test_an_accuracy_cache_in_a_read_only_folder_says_so(tiny_folder, tmp_path, monkeypatch):
    """A new cache file in a read-only folder was reported as 'corrupted or not an hwnas cache (unable to open
    database file)', about a file that did not exist."""
    import errno
    import tempfile

    from hwnas.spaces.errors import UserError
    from hwnas.supernet.accuracy import SupernetAccuracy

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    space = create_space("ofa_mbv3_w10", resolutions=[32])
    with pytest.raises(UserError, match=r"accuracy cache folder .*ro cannot be written: .*the file system is read-only"):
        SupernetAccuracy(space, checkpoint=None, data=tiny_folder, n_calib=4, n_val=4, batch_size=4, device="cpu",
                         cache=str(tmp_path / "ro" / "acc.sqlite"))


def test_supernet_accuracy_cache_key_is_the_file_not_how_its_path_is_written(tiny_folder, tmp_path, monkeypatch):
    """The same checkpoint given by a relative and an absolute path (or with another resolution list of the same
    space) got three fingerprints: every arch evaluated again. A folder as the cache, another program's SQLite
    file, and the cache's record of what each fingerprint stands for."""
    import hashlib
    import sqlite3

    from hwnas.predictors.acc_mlp import evaluations_from_cache
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.data import DataError

    space = create_space("ofa_mbv3_w10", resolutions=[32])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "supernet.pth", {"state_dict": ElasticMBConvNet(space, n_classes=4).state_dict()})
    kw = dict(data=tiny_folder, n_calib=4, n_val=4, batch_size=4, device="cpu")
    monkeypatch.chdir(tmp_path)
    a = SupernetAccuracy(space, checkpoint="supernet.pth", **kw)
    assert SupernetAccuracy(space, checkpoint=str(tmp_path / "supernet.pth"), **kw).fingerprint == a.fingerprint
    wider = create_space("ofa_mbv3_w10", resolutions=[32, 40])
    assert SupernetAccuracy(wider, checkpoint="supernet.pth", **kw).fingerprint == a.fingerprint
    assert SupernetAccuracy(space, checkpoint="supernet.pth", **{**kw, "n_calib": 8}).fingerprint != a.fingerprint
    assert a.weights_source == {"checkpoint": str(tmp_path / "supernet.pth"), "checkpoint_fingerprint": a.weights_source["checkpoint_fingerprint"],
                                "calibration": {"data": str((tiny_folder / "train").resolve()), "n_images": 4, "n_requested": 4,
                                                "seed": 0, "batch_size": 4}}

    (tmp_path / "cachedir").mkdir()
    with pytest.raises(DataError, match=r"accuracy.cache='cachedir' is a folder; give a file path in it, e.g. cachedir/accuracy.sqlite"):
        SupernetAccuracy(space, checkpoint="supernet.pth", cache="cachedir", **kw)
    con = sqlite3.connect(tmp_path / "theirs.sqlite")
    con.execute("CREATE TABLE mydata (x)")
    con.commit()
    con.close()
    before = hashlib.sha256((tmp_path / "theirs.sqlite").read_bytes()).hexdigest()
    with pytest.raises(sqlite3.DatabaseError, match=r"theirs.sqlite is corrupted or not an hwnas cache \(it is an SQLite file with other tables \(\['mydata'\]\)\); it was left untouched"):
        SupernetAccuracy(space, checkpoint="supernet.pth", cache="theirs.sqlite", **kw)
    assert hashlib.sha256((tmp_path / "theirs.sqlite").read_bytes()).hexdigest() == before

    for n in (4, 8):  # two protocols in one cache: the error says what each fingerprint is
        SupernetAccuracy(space, checkpoint="supernet.pth", cache="acc.sqlite", **{**kw, "n_calib": n}).predict(space.sample(1, 0))
    with pytest.raises(ValueError) as e:
        evaluations_from_cache(tmp_path / "acc.sqlite", space)
    assert "holds evaluations of 2 protocols; pass fingerprint= one of: " in str(e.value)
    assert f"(checkpoint {tmp_path / 'supernet.pth'}, val {(tiny_folder / 'val').resolve()}, n_calib 4, n_val 4, seed 0)" in str(e.value)
    assert "n_calib 8" in str(e.value)


def test_supernet_accuracy_keeps_to_the_resolutions_a_checkpoint_was_trained_at(tiny_folder, tmp_path, caplog):
    """accuracy=supernet evaluated a supernet hwnas-train made at [32, 40] at any resolution of the search space
    (python -m hwnas.supernet.evaluate refused them): outside the trained range is refused, between is said."""
    import json
    import logging

    from hwnas.spaces.io import space_spec
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.data import DataError

    trained = create_space("ofa_mbv3_w10", resolutions=[32, 48])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "supernet.pth", {"state_dict": ElasticMBConvNet(trained, n_classes=4).state_dict(),
                                                "hwnas_space": json.dumps(space_spec(trained))})
    kw = dict(checkpoint=str(tmp_path / "supernet.pth"), data=tiny_folder, n_calib=4, n_val=4, batch_size=4, device="cpu")
    with pytest.raises(DataError, match=r"was trained at resolutions \[32, 48\]; space.resolutions \[32, 48, 64\] also holds "
                                        r"\[64\], outside them, where its accuracies mean nothing: give space.resolutions=\[32,48\]"):
        SupernetAccuracy(create_space("ofa_mbv3_w10", resolutions=[32, 48, 64]), **kw)
    with caplog.at_level(logging.WARNING, logger="hwnas.supernet"):
        SupernetAccuracy(create_space("ofa_mbv3_w10", resolutions=[32, 40]), **kw)
    assert "the search evaluates it at [40] too (between them" in caplog.text


def test_export_writes_a_searched_accuracy_only_for_the_weights_it_was_measured_on(tiny_folder, tmp_path):
    """hwnas-export attached accuracy=supernet's "measured" top-1 to weights that do not give it: another
    checkpoint, untrained weights, or BN re-calibrated on another number of images (2000 by default, whatever the
    search used). Now the export calibrates as the search did, and other weights get the value as search_accuracy."""
    import json

    from hwnas.predictors.base import provenance
    from hwnas.supernet.accuracy import SupernetAccuracy
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.export import ExportItem, export_many, load_weights_source

    space = create_space("ofa_mbv3_w10", resolutions=[32])
    for seed, name in ((0, "a.pth"), (1, "b.pth")):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / name, {"state_dict": ElasticMBConvNet(space, n_classes=4).state_dict()})
    acc = SupernetAccuracy(space, checkpoint=str(tmp_path / "a.pth"), data=tiny_folder, n_calib=5, n_val=4, batch_size=4,
                           device="cpu")
    assert provenance(acc)["weights"] == acc.weights_source
    arch = space.sample(1, 2)[0]
    item = ExportItem(arch, accuracy=0.5, accuracy_kind="measured", accuracy_weights=json.loads(json.dumps(acc.weights_source)))
    notes = []
    (d,) = export_many(space, [item], tmp_path / "same", weights=load_weights_source(space, str(tmp_path / "a.pth")),
                       formats=["torch"], calib_data=tiny_folder / "train", note=notes.append)
    meta = json.loads((d / "metadata.json").read_text())
    assert notes == [] and meta["accuracy"]["value"] == 0.5 and meta["weights"]["bn_calibration"]["n_images"] == 5
    net = acc.supernet.get_active_subnet(arch).eval()  # the subnet the search measured, calibrated as it was
    acc.data.calibration.calibrate(net, arch.r)
    saved = torch.load(d / "model_state_dict.pth", weights_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(saved[k], v)
    for name, kw, why in (("other", {"weights": load_weights_source(space, str(tmp_path / "b.pth"))}, "has other contents"),
                          ("untrained", {}, "these weights are untrained"),
                          ("more", {"weights": load_weights_source(space, str(tmp_path / "a.pth")), "calib_images": 8},
                           "n_images 5 there, 8 here")):
        notes.clear()
        (d,) = export_many(space, [item], tmp_path / name, formats=["torch"], calib_data=tiny_folder / "train",
                           note=notes.append, **kw)
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["accuracy"]["value"] is None and meta["extra"]["search_accuracy"] == 0.5
        assert len(notes) == 1 and why in notes[0] and "recorded as search_accuracy" not in notes[0]


def test_evaluate_workers_default_to_the_cpus_at_most_4(monkeypatch):
    """--workers defaulted to 4: on a 2-CPU machine torch warned "4 worker processes ... suggested max is 2"."""
    import os

    from hwnas.supernet.evaluate import _parser, check_args

    def workers(*argv):
        args = _parser().parse_args(["--data", "d", *argv])
        check_args(args)
        return args.workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (workers(), workers("--workers", "3")) == (2, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert workers() == 4


def test_progress_bars_only_on_a_terminal(tiny_folder, monkeypatch, capsys):
    """`python -m hwnas.supernet.evaluate ... 2>&1 | tail` showed tqdm bars ("BN calibration:   0%|") in the pipe."""
    import io
    import sys

    from hwnas.supernet.evaluate import main as eval_main

    argv = ["--space", "ofa_mbv3_w10", "--checkpoint", "none", "--data", str(tiny_folder), "--n-calib", "8",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--arch",
            "r128:k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3/k3e3.k3e3"]
    assert eval_main(argv) == 0
    out, err = capsys.readouterr()
    assert "top1=" in out and "%|" not in err and "BN calibration" not in err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert eval_main(argv) == 0
    assert "BN calibration" in term.getvalue() and "evaluate" in term.getvalue()
