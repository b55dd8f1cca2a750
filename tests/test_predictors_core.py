"""OFA accuracy predictor and lookup-table latency: loading, values against the reference data,
fast paths against slow paths, and the errors a user meets."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from hwnas.predictors import AssetError, fetch
from hwnas.predictors.base import predict_array
from hwnas.predictors.lut import (
    LatencyTableError,
    LookupTableLatency,
    detect_format,
    lut_key,
    lut_keys,
    read_lut,
    write_ofa_yaml,
)
from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor, PredictorLoadError
from hwnas.spaces import OFAMobileNetV3Arch, ProxylessArch, SpaceError, create_space

NOTE10_RES = [160, 176, 192, 208, 224]
HAND = OFAMobileNetV3Arch(
    ks=[3, 5, 7, 3, 5, 5, 3, 7, 7, 3, 3, 5, 3, 7, 5, 3, 5, 3, 7, 7],
    e=[3, 4, 6, 3, 6, 4, 3, 3, 4, 6, 3, 6, 3, 3, 4, 6, 6, 4, 3, 3],
    d=[2, 3, 4, 2, 3],
    r=176,
)
LARGEST = dict(ks=[7] * 20, e=[6] * 20, d=[4] * 5, r=224)
SMALLEST = dict(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=160)


@pytest.fixture(scope="module")
def note10_space():
    return create_space("ofa_mbv3_w12", resolutions=NOTE10_RES)


@pytest.fixture(scope="module")
def acc(data_dir):
    return OFAAccuracyPredictor(mirror=data_dir)


@pytest.fixture(scope="module")
def note10(note10_space, data_dir):
    return LookupTableLatency(note10_space, "ofa/note10/{r}_lookup_table.yaml", mirror=data_dir)


@pytest.fixture(scope="module")
def proxyless(data_dir):
    return LookupTableLatency(create_space("proxyless_mobile"), "proxylessnas/mobile_trim.yaml", mirror=data_dir)


# ============================================================================ OFA accuracy predictor
def test_ofa_predictor_plausible_values(acc):
    y = acc.predict([HAND])
    assert y.shape == (1,) and y.dtype == np.float64
    assert 0.6 < y[0] < 0.85
    assert y[0] == pytest.approx(0.78658, abs=1e-4)  # pinned: encoding or weights changed if this moves
    big, small = acc.predict([LARGEST, SMALLEST])
    assert big > small + 0.03
    assert 0.80 < big < 0.85 and 0.70 < small < 0.80
    assert acc.metric == "top1"


def test_ofa_predictor_fast_path_equals_list_path(acc, note10_space):
    G = note10_space.sample_genomes(300, rng=11)
    batch = note10_space.batch(G)
    fast = acc.predict(batch)
    slow = acc.predict(list(batch))
    via_dicts = acc.predict([a.to_dict() for a in batch])
    via_json = acc.predict([a.to_json() for a in batch])
    assert np.array_equal(fast, slow) and np.array_equal(slow, via_dicts) and np.array_equal(slow, via_json)
    assert predict_array(acc, batch).shape == (300,)
    assert acc.predict([]).shape == (0,)


def test_ofa_predictor_ranks_measured_w10_accuracy(acc, data_dir):
    """The official (w1.2) predictor against measured ImageNet top-1 of 1,482 w1.0 subnets."""
    import pandas as pd
    from scipy.stats import spearmanr

    df = pd.read_csv(data_dir / "accuracy" / "ofa_mbv3_w1.0_imagenet.csv")
    y = acc.predict([json.loads(a) for a in df["arch"]])
    srcc = spearmanr(y, df["top1"]).statistic
    print(f"OFA predictor vs measured w1.0 top-1: SRCC={srcc:.4f} (n={len(df)}), mean offset {100 * y.mean() - df.top1.mean():+.2f} pts")
    assert srcc > 0.9  # measured 0.983; the brief's floor is 0.5


def test_ofa_predictor_rejects_other_spaces(acc):
    with pytest.raises(SpaceError, match="OFA-MobileNetV3"):
        acc.predict(create_space("ofa_proxyless_w13").sample(2, 0))
    with pytest.raises(SpaceError, match="not an OFA-MobileNetV3 space"):
        OFAAccuracyPredictor(space=create_space("proxyless_mobile"))
    with pytest.raises(SpaceError, match="resolution range 112..239"):
        acc.predict([dict(LARGEST, r=100)])
    with pytest.raises(SpaceError, match=r"d\[0\]=1"):  # with a space, inputs are validated by it
        OFAAccuracyPredictor(space=create_space("ofa_mbv3_w12")).predict([dict(LARGEST, d=[1, 4, 4, 4, 4])])


def test_ofa_predictor_in_numpy_equals_the_torch_forward_pass(acc, data_dir, tmp_path):
    """The official file read without torch (restricted reader) equals torch.load; the numpy MLP equals
    torch's forward pass of those weights (to float32 rounding)."""
    from hwnas.predictors.tensorfile import read_tensors

    path = data_dir / "ofa" / "acc_predictor.pth"
    ref = torch.load(path, map_location="cpu", weights_only=True)
    ours = read_tensors(path)
    assert list(ours) == list(ref) and all(np.array_equal(ours[k], ref[k].numpy()) for k in ref)
    torch.save(ref, tmp_path / "zip.pth")  # the newer zip layout reads the same
    assert all(np.array_equal(read_tensors(tmp_path / "zip.pth")[k], ref[k].numpy()) for k in ref)
    mlp = torch.nn.Sequential(torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                              torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1))
    mlp.load_state_dict(ref)
    space = create_space("ofa_mbv3_w12")
    batch = space.batch(space.sample_genomes(2000, 5))
    with torch.no_grad():
        want = mlp(torch.from_numpy(acc.features(batch)))[:, 0].double().numpy()
    np.testing.assert_allclose(acc.predict(batch), want, rtol=0, atol=2e-7)


def test_ofa_predictor_refuses_truncated_file(tmp_path, data_dir):
    good = (data_dir / "ofa" / "acc_predictor.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(PredictorLoadError, match="truncated.pth is not a readable PyTorch state dict"):
        OFAAccuracyPredictor(path=bad)


def test_ofa_predictor_names_mismatching_tensors(tmp_path, data_dir):
    sd = torch.load(data_dir / "ofa" / "acc_predictor.pth", map_location="cpu", weights_only=True)
    wrong = dict(sd)
    wrong["2.weight"] = torch.zeros(400, 300)
    del wrong["6.bias"]
    wrong["extra.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save(wrong, path)
    with pytest.raises(PredictorLoadError) as info:
        OFAAccuracyPredictor(path=path)
    msg = str(info.value)
    assert "missing tensors ['6.bias']" in msg
    assert "unexpected tensors ['extra.weight']" in msg
    assert "2.weight: (400, 300) (expected (400, 400))" in msg


def test_ofa_predictor_reads_newer_ofa_layout(tmp_path, data_dir, acc):
    """OFA's later AccuracyPredictor stores the same MLP as layers.i.0.* + base_acc (no last bias)."""
    sd = torch.load(data_dir / "ofa" / "acc_predictor.pth", map_location="cpu", weights_only=True)
    new = {
        "layers.0.0.weight": sd["0.weight"], "layers.0.0.bias": sd["0.bias"],
        "layers.1.0.weight": sd["2.weight"], "layers.1.0.bias": sd["2.bias"],
        "layers.2.0.weight": sd["4.weight"], "layers.2.0.bias": sd["4.bias"],
        "layers.3.weight": sd["6.weight"], "base_acc": sd["6.bias"],
    }
    path = tmp_path / "new_layout.pth"
    torch.save(new, path)
    other = OFAAccuracyPredictor(path=path)
    archs = create_space("ofa_mbv3_w12").sample(50, rng=4)
    np.testing.assert_allclose(other.predict(archs), acc.predict(archs), rtol=0, atol=1e-6)


def test_asset_error_offline_without_mirror(tmp_path, monkeypatch):
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    monkeypatch.setenv("HWNAS_ASSETS_MIRROR", str(empty))
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    name = "accuracy/not_there_predictor.pth"  # no public URL: never touches the network
    with pytest.raises(AssetError) as info:
        fetch(name)
    assert name in str(info.value) and "put the file at" in str(info.value)
    with pytest.raises(AssetError, match="not_there_predictor.pth"):
        OFAAccuracyPredictor(path=name)
    with pytest.raises(AssetError, match="latency/none_224.yaml"):
        LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[224]), "latency/none_{r}.yaml")


# ============================================================================ lookup-table latency
def test_lut_key_strings():
    sp = create_space("ofa_mbv3_w12")
    L = sp.layers(dict(LARGEST, d=[2] * 5))
    keys = [k for k, _ in lut_keys(L, "ofa")]
    assert keys[0] == "Conv-input:224x224x3-output:112x112x24"
    assert keys[1] == "expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"
    assert keys[2] == "expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:7-stride:2-idskip:0-se:0-hs:0"
    assert keys[-4:] == [
        "Conv_1-input:7x7x192-output:7x7x1152",
        "AvgPool2D-input:7x7x1152-output:1x1x1152",
        "Conv_2-input:1x1x1152-output:1x1x1536",
        "Logits-input:1x1x1536-output:1000",
    ]
    assert lut_key(L[-2], "ofa") == keys[-2]  # conv index inferred from the layer name
    pm = create_space("proxyless_mobile")
    P = pm.layers(ProxylessArch(ks=[5] * 21, e=[6] * 21, d=[1] * 6, r=224))
    pk = [k for k, _ in lut_keys(P, "proxyless")]
    assert pk[1] == "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0"
    assert pk[2] == "expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:5-stride:2-idskip:0"
    assert pk[-3:] == ["Conv_1-input:7x7x320-output:7x7x1280", None, "Logits-input:7x7x1280-output:1000"]
    with pytest.raises(LatencyTableError, match="format='tf'"):
        lut_key(P[0], "tf")


def test_note10_lut_hand_summed(note10, data_dir):
    arch = {
        "ks": [3, 5, 3, 3, 7, 3, 3, 3, 5, 3, 3, 3, 3, 7, 3, 3, 5, 3, 3, 3],
        "e": [4, 6, 3, 3, 3, 3, 3, 3, 4, 6, 3, 3, 3, 4, 3, 3, 6, 3, 3, 3],
        "d": [2, 2, 2, 2, 2],
        "r": 224,
    }
    keys = [
        "Conv-input:224x224x3-output:112x112x24",
        "expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0",
        "expanded_conv-input:112x112x24-output:56x56x32-expand:96-kernel:3-stride:2-idskip:0-se:0-hs:0",
        "expanded_conv-input:56x56x32-output:56x56x32-expand:192-kernel:5-stride:1-idskip:1-se:0-hs:0",
        "expanded_conv-input:56x56x32-output:28x28x48-expand:96-kernel:7-stride:2-idskip:0-se:1-hs:0",
        "expanded_conv-input:28x28x48-output:28x28x48-expand:144-kernel:3-stride:1-idskip:1-se:1-hs:0",
        "expanded_conv-input:28x28x48-output:14x14x96-expand:192-kernel:5-stride:2-idskip:0-se:0-hs:1",
        "expanded_conv-input:14x14x96-output:14x14x96-expand:576-kernel:3-stride:1-idskip:1-se:0-hs:1",
        "expanded_conv-input:14x14x96-output:14x14x136-expand:288-kernel:3-stride:1-idskip:0-se:1-hs:1",
        "expanded_conv-input:14x14x136-output:14x14x136-expand:544-kernel:7-stride:1-idskip:1-se:1-hs:1",
        "expanded_conv-input:14x14x136-output:7x7x192-expand:816-kernel:5-stride:2-idskip:0-se:1-hs:1",
        "expanded_conv-input:7x7x192-output:7x7x192-expand:576-kernel:3-stride:1-idskip:1-se:1-hs:1",
        "Conv_1-input:7x7x192-output:7x7x1152",
        "AvgPool2D-input:7x7x1152-output:1x1x1152",
        "Conv_2-input:1x1x1152-output:1x1x1536",
        "Logits-input:1x1x1536-output:1000",
    ]
    with open(data_dir / "ofa" / "note10" / "224_lookup_table.yaml") as f:
        table = yaml.safe_load(f)
    hand = 0.0
    for k in keys:
        hand += table[k]["mean"]
    assert [k for k, _ in note10.layer_costs(arch)] == keys
    assert note10.latency(arch) == hand
    assert note10.predict([arch])[0] == hand
    assert 25.0 < hand < 35.0


def test_proxyless_lut_hand_summed(proxyless, data_dir):
    arch = ProxylessArch(ks=[3] * 21, e=[3] * 21, d=[1] * 6, r=224)
    keys = [
        "Conv-input:224x224x3-output:112x112x32",
        "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0",
        "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:3-stride:2-idskip:0",
        "expanded_conv-input:28x28x40-output:14x14x80-expand:3-kernel:3-stride:2-idskip:0",
        "expanded_conv-input:14x14x80-output:14x14x96-expand:3-kernel:3-stride:1-idskip:0",
        "expanded_conv-input:14x14x96-output:7x7x192-expand:3-kernel:3-stride:2-idskip:0",
        "expanded_conv-input:7x7x192-output:7x7x320-expand:3-kernel:3-stride:1-idskip:0",
        "Conv_1-input:7x7x320-output:7x7x1280",
        "Logits-input:7x7x1280-output:1000",
    ]
    with open(data_dir / "proxylessnas" / "mobile_trim.yaml") as f:
        table = yaml.safe_load(f)
    assert proxyless.format == "proxyless"
    assert [k for k, _ in proxyless.layer_costs(arch)] == keys
    assert proxyless.predict([arch])[0] == pytest.approx(math.fsum(table[k]["mean"] for k in keys), rel=1e-12)


def test_proxyless_table_prices_the_whole_space(proxyless, data_dir):
    sp = proxyless.space
    table = read_lut(data_dir / "proxylessnas" / "mobile_trim.yaml")
    mb_keys = {k for k in table if k.startswith("expanded_conv")}
    assert len(mb_keys) == 69
    # every key the space can produce: 3 x 2 blocks in every slot position + the fixed k3 first block
    used = set()
    for k, e in sp.all_block_choices:
        used |= {key for key, _ in proxyless.layer_costs(ProxylessArch(ks=[k] * 21, e=[e] * 21, d=[4, 4, 4, 4, 4, 1], r=224))}
    used_mb = {k for k in used if k.startswith("expanded_conv")}
    assert used_mb <= mb_keys and len(used_mb) == 67
    # the two keys the space never uses: a first block with kernel 5 / 7 (ProxylessNAS fixes it to 3x3)
    assert sorted(mb_keys - used_mb) == [
        "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:5-stride:1-idskip:0",
        "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:7-stride:1-idskip:0",
    ]
    y = proxyless.predict(sp.batch(sp.sample_genomes(500, rng=0)))
    assert np.isfinite(y).all() and 30 < y.min() and y.max() < 200


def test_a_reduced_space_loads_its_tables_without_numpy_warnings(data_dir):
    """A capped depth leaves slots no arch uses: 'All-NaN slice' reached the user on every search of
    reduced_note10, and the mixed-unit check was skipped for such spaces."""
    import warnings

    sp = create_space("ofa_mbv3_w12", resolutions=[160, 224], depth_choices=[[2, 3]] + [[2, 3, 4]] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lut = LookupTableLatency(sp, "ofa/note10/{r}_lookup_table.yaml", mirror=data_dir)
    assert (lut.predict(sp.sample(3, 0)) > 0).all()


def test_tables_name_their_device(note10, proxyless):
    """What a search run records of its latency (pareto.json ``values``): the official tables' device."""
    assert (note10.device_name, proxyless.device_name) == ("note10", "mobile")
    from hwnas.supernet.accuracy import SupernetAccuracy

    assert SupernetAccuracy.kind == "measured" and note10.kind == "predicted"


def test_note10_tables_price_the_whole_space(note10):
    assert note10.format == "ofa" and note10.resolutions() == NOTE10_RES
    small, big = note10.predict([SMALLEST, LARGEST])
    assert small < big and 5 < small < 15 and 80 < big < 110


@pytest.mark.parametrize("which", ["note10", "proxyless"])
def test_fast_path_equals_per_layer_sum(which, request):
    lut = request.getfixturevalue(which)
    sp = lut.space
    G = sp.sample_genomes(200, rng=21)
    batch = sp.batch(G)
    slow = np.array([lut.latency(a) for a in batch])
    assert np.array_equal(lut.predict(batch), slow)  # genome fast path, bit for bit
    assert np.array_equal(lut.predict(list(batch)), slow)  # list path
    assert np.array_equal(lut.predict_arrays(*sp.decode_arrays(G)), slow)
    layer_sum = np.array([sum(ms for _, ms in lut.layer_costs(a)) for a in batch])
    assert np.array_equal(layer_sum, slow)


def test_fast_path_on_batch_of_reduced_space(note10):
    red = create_space(
        "ofa_mbv3_w12", resolutions=[160, 224], depth_choices=[2, 3], block_choices=[["k3e3", "k7e6"]] * 4 + [["k5e4"]]
    )
    batch = red.batch(red.sample_genomes(200, rng=2))
    assert np.array_equal(note10.predict(batch), [note10.latency(a) for a in batch])
    with pytest.raises(SpaceError, match="layers differ"):  # w1.0 archs are not priced by w1.2 tables
        note10.predict(create_space("ofa_mbv3_w10", resolutions=[224]).batch(np.zeros((1, 26), int)))


def test_table_checked_against_the_space_at_load(tmp_path, data_dir):
    """Missing entries and non-positive means are one error when the table is loaded, not mid-search."""
    table = read_lut(data_dir / "ofa" / "note10" / "224_lookup_table.yaml")
    gone = "expanded_conv-input:14x14x136-output:14x14x136-expand:816-kernel:7-stride:1-idskip:1-se:1-hs:1"
    del table[gone]
    path = write_ofa_yaml(table, tmp_path / "224_partial.yaml")
    sp = create_space("ofa_mbv3_w12", resolutions=[224])
    with pytest.raises(LatencyTableError) as info:
        LookupTableLatency(sp, str(path))
    msg = str(info.value)
    assert "224_partial.yaml lacks 1 entries" in msg and gone in msg and "(unit3.layer" in msg and "\n" not in msg
    # a space restricted to what the table prices is accepted
    assert np.isfinite(LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[224], block_choices=[
        "k3e3", "k3e4", "k3e6", "k5e3", "k5e4", "k5e6", "k7e3", "k7e4"]), str(path)).predict(sp.sample(3, 0)[:0]).all())
    neg = read_lut(data_dir / "ofa" / "note10" / "224_lookup_table.yaml")
    key = next(k for k in neg if k.startswith("Conv-"))
    neg[key] = dict(neg[key], mean=-408.6)
    (tmp_path / "neg").mkdir()
    (tmp_path / "neg" / "224_lookup_table.yaml").write_text(
        "".join(f"{k}:\n  count: 1\n  mean: {v['mean']!r}\n  std: 0.0\n" for k, v in neg.items()))
    with pytest.raises(LatencyTableError, match=r"finite and > 0: .*224_lookup_table.yaml: Conv-.* has mean=-408.6"):
        LookupTableLatency(sp, str(tmp_path / "neg"))  # a folder of <r>_lookup_table.yaml files


def test_a_folder_of_tables_is_the_pattern(tmp_path, data_dir, note10_space):
    for r in NOTE10_RES:
        write_ofa_yaml(read_lut(data_dir / "ofa" / "note10" / f"{r}_lookup_table.yaml"), tmp_path / "luts" / f"{r}_lookup_table.yaml")
    folder = LookupTableLatency(note10_space, str(tmp_path / "luts"))
    ref = LookupTableLatency(note10_space, mirror=data_dir)
    batch = note10_space.batch(note10_space.sample_genomes(50, rng=1))
    assert np.array_equal(folder.predict(batch), ref.predict(batch))


def test_missing_resolution_lists_available(data_dir):
    with pytest.raises(LatencyTableError) as info:
        LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[128, 160, 224]), mirror=data_dir)
    msg = str(info.value)
    assert "[128]" in msg and "available resolutions: [160, 176, 192, 208, 224]" in msg
    with pytest.raises(LatencyTableError, match=r"prices input resolutions \[224\] only"):
        LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[192, 224]), "ofa/note10/224_lookup_table.yaml", mirror=data_dir)
    with pytest.raises(LatencyTableError, match="r=192 has no lookup table"):
        LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[224]), mirror=data_dir).predict_arrays(
            np.full((1, 20), 3), np.full((1, 20), 3), np.full((1, 5), 2), np.array([192])
        )


def test_write_ofa_yaml_round_trip(tmp_path, data_dir, note10_space):
    entries = {}
    for r in NOTE10_RES:
        table = read_lut(data_dir / "ofa" / "note10" / f"{r}_lookup_table.yaml")
        path = write_ofa_yaml(table, tmp_path / f"{r}_lookup_table.yaml")
        back = read_lut(path)
        assert back.keys() == table.keys()
        assert all(back[k]["mean"] == table[k]["mean"] and back[k]["std"] == table[k]["std"] for k in table)
        entries[r] = table
    assert detect_format(back) == "ofa"
    ours = LookupTableLatency(note10_space, str(tmp_path / "{r}_lookup_table.yaml"))
    from_dicts = LookupTableLatency(note10_space, entries)
    ref = LookupTableLatency(note10_space, mirror=data_dir)
    batch = note10_space.batch(note10_space.sample_genomes(100, rng=3))
    assert np.array_equal(ours.predict(batch), ref.predict(batch))
    assert np.array_equal(from_dicts.predict(batch), ref.predict(batch))
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    with pytest.raises(LatencyTableError, match="has no 'mean'"):
        write_ofa_yaml({"Conv-input:224x224x3-output:112x112x24": {"count": 3}}, tmp_path / "bad.yaml")
    with pytest.raises(LatencyTableError, match="not a lookup-table key"):
        write_ofa_yaml({"bad key: x": {"mean": 1.0}}, tmp_path / "bad.yaml")


def test_format_detection_and_bad_tables(tmp_path, data_dir):
    assert detect_format(read_lut(data_dir / "proxylessnas" / "mobile_trim.yaml")) == "proxyless"
    assert detect_format(read_lut(data_dir / "ofa" / "note10" / "160_lookup_table.yaml")) == "ofa"
    bad = tmp_path / "bad.yaml"
    bad.write_text("Conv-input:224x224x3-output:112x112x24:\n  count: 3\n")
    with pytest.raises(LatencyTableError, match="has no 'mean' field"):
        read_lut(bad)
    bad.write_text("[1, 2")
    with pytest.raises(LatencyTableError, match="not valid yaml"):
        read_lut(bad)
    with pytest.raises(LatencyTableError, match="format='tflite'"):
        LookupTableLatency(create_space("proxyless_mobile"), "proxylessnas/mobile_trim.yaml", format="tflite")


def test_cost_tables_decompose_latency(note10):
    """latency = fixed_costs[r] + sum of block_costs over the active slots (up to rounding)."""
    sp = note10.space
    C, F = note10.block_costs, note10.fixed_costs
    assert C.shape == (5, 20, 3, 3) and F.shape == (5,) and np.isfinite(C).all()
    for a in sp.sample(20, rng=9):
        ri = sp.resolutions.index(a.r)
        tot = F[ri] + sum(C[ri, s, sp.kernel_choices.index(a.ks[s]), sp.expand_choices.index(a.e[s])] for s in a.active_slots())
        assert tot == pytest.approx(note10.latency(a), rel=1e-12)
    # later layers of a unit share one input shape, hence one key: equal costs; the first layer differs
    for u in range(5):
        s0 = 4 * u
        assert np.array_equal(C[:, s0 + 1], C[:, s0 + 2]) and np.array_equal(C[:, s0 + 1], C[:, s0 + 3])
        assert not np.array_equal(C[:, s0], C[:, s0 + 1])


def test_local_pattern_and_absolute_paths(tmp_path, data_dir):
    sp = create_space("ofa_mbv3_w12", resolutions=[160, 224])
    for r in (160, 224):
        write_ofa_yaml(read_lut(data_dir / "ofa" / "note10" / f"{r}_lookup_table.yaml"), tmp_path / f"t{r}.yaml")
    lut = LookupTableLatency(sp, str(tmp_path / "t{r}.yaml"))
    assert lut.resolutions() == [160, 224]
    with pytest.raises(LatencyTableError, match=r"available resolutions: \[160, 224\]"):
        LookupTableLatency(create_space("ofa_mbv3_w12", resolutions=[160, 192, 224]), str(tmp_path / "t{r}.yaml"))
