"""NAS-Bench-201 and FBNet spaces, and the latency dataset loader."""

import re

import numpy as np
import pytest

from hwnas.predictors.data import DatasetError, LatencyDataset, load_dataset
from hwnas.spaces import SpaceError, create_space
from hwnas.spaces.fbnet import FBNET_BLOCKS, FBNetArch
from hwnas.spaces.nasbench201 import NASBench201Arch

S = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def test_nb201_parse_roundtrip_and_genome():
    sp = create_space("nasbench201")
    a = sp.parse(S)
    assert a.ops == ("nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
    assert a.to_str() == S and sp.parse(a.to_json()) == a and sp.parse(a.to_dict()) == a
    g = sp.encode([a])
    assert g.tolist() == [[3, 0, 1, 4, 2, 3]]
    assert sp.decode(g)[0] == a
    assert sp.from_index(sp.index(a)) == a and sp.size == 15625
    X = sp.features([a])
    assert X.shape == (1, 30) and X.sum() == 6 and X[0, 3] == 1
    with pytest.raises(AttributeError):
        a.ops = ()  # immutable


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "ops[0]='conv'"),
        ("|none~0|+|none~0|none~1|", "has 2 node groups"),
        ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "from node 0"),
    ],
)
def test_nb201_bad_strings(bad, msg):
    with pytest.raises(SpaceError, match=re.escape(msg)):
        create_space("nasbench201").parse(bad)


def test_fbnet_parse_roundtrip_and_ops():
    sp = create_space("fbnet")
    s = "7 8 1 8 4 8 8 8 7 4 1 4 7 3 2 7 3 2 4 2 4 5"
    a = sp.parse(s)
    assert a.to_str() == s and a.ops[0] == "k5_e6" and a.ops[1] == "skip"
    assert sp.parse(" ".join(a.ops)) == a and sp.parse(a.to_json()) == a
    assert sp.parse({"op_idx": [int(x) for x in s.split()]}) == a
    assert sp.decode(sp.encode([a]))[0] == a
    rng = np.random.default_rng(0)
    for b in sp.sample(20, rng):
        assert sp.mutate(b, rng) != b and isinstance(b, FBNetArch)
    with pytest.raises(SpaceError, match="22"):
        sp.parse("1 2 3")
    with pytest.raises(SpaceError, match="ops\\[2\\]=9"):
        FBNetArch(ops=(0, 1, 9) + (0,) * 19)
    assert len(FBNET_BLOCKS) == 9 and sp.features([a]).shape == (1, 198)


def test_loaders_shapes(data_dir):
    nb = load_dataset("nasbench201")
    assert len(nb) == 15625 and len(nb.devices) == 27 and "pixel3" in nb.devices
    assert isinstance(nb.archs[0], NASBench201Arch) and len(set(nb.archs)) == 15625
    assert nb.meta["index"][:3].tolist() == [0, 1, 2]
    fb = load_dataset("fbnet")
    assert len(fb) == 5000 and len(fb.devices) == 23 and fb.matrix().shape == (5000, 23)
    ofa = load_dataset("ofa_mbv3")
    assert ofa.space.name == "ofa_mbv3_w12" and len(ofa) == 5000 and len(ofa.devices) == 9
    assert {a.r for a in ofa.archs} <= set(range(128, 225, 4))


def test_dataset_csv_roundtrip(tmp_path, data_dir):
    fb = load_dataset("fbnet").subset(np.arange(50)).select_devices(["pixel3", "fpga"])
    fb.table["pixel3"] = fb.table["pixel3"].copy()
    fb.table["pixel3"][3] = np.nan
    p = fb.to_csv(tmp_path / "x.csv")
    back = LatencyDataset.from_csv(p)
    assert back.space.name == "fbnet" and back.archs == fb.archs
    np.testing.assert_array_equal(back.matrix(), fb.matrix())
    assert back.lookup([fb.archs[5]], "fpga")[0] == fb["fpga"][5]
    with pytest.raises(DatasetError, match="device='nope'"):
        back["nope"]
    (tmp_path / "bad.csv").write_text("arch,dev\n1 2 3,4\n")
    with pytest.raises(DatasetError, match="line 2"):
        LatencyDataset.from_csv(tmp_path / "bad.csv", "fbnet")
    arch = back.to_csv(tmp_path / "ok.csv").read_text().splitlines()[1].split(",")[0]
    for cell in ("-3", "0", "inf"):  # a latency is a finite positive number; an empty cell or "nan" is not measured
        (tmp_path / "neg.csv").write_text(f"arch,dev\n{arch},1.5\n{arch},{cell}\n")
        with pytest.raises(DatasetError, match=f"line 3: column 'dev' value '{cell}' is not a latency"):
            LatencyDataset.from_csv(tmp_path / "neg.csv", "fbnet")
    (tmp_path / "nan.csv").write_text(f"arch,dev\n{arch},nan\n")
    assert np.isnan(LatencyDataset.from_csv(tmp_path / "nan.csv", "fbnet")["dev"][0])
    (tmp_path / "idx.csv").write_text(f"index,arch,dev\n7,{arch},1\nx,{arch},2\n")
    with pytest.raises(DatasetError, match="line 3: column 'index' value 'x' is not a whole number"):
        LatencyDataset.from_csv(tmp_path / "idx.csv", "fbnet")
