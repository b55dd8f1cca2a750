"""Linear and MLP latency predictors, and the monotonicity matrix / CLI."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hwnas.predictors.data import load_dataset
from hwnas.predictors.linear import LinearLatencyPredictor, latency_features
from hwnas.predictors.mlp import MLPLatencyPredictor
from hwnas.predictors.monotonicity import main as mono_main
from hwnas.predictors.monotonicity import srcc_matrix


def _split(ds, n_train):
    a = ds.archs
    return a[:n_train], a[n_train:]


@pytest.mark.parametrize("name, device, n_train, bound", [("fbnet", "pixel3", 2000, 0.99), ("nasbench201", "pixel3", 3000, 0.90),
                                                          ("ofa_mbv3", "2080ti_64", 3000, 0.94)])
def test_linear_predictor_srcc(data_dir, name, device, n_train, bound):
    ds = load_dataset(name)
    tr, te = _split(ds, n_train)
    y = ds[device]
    p = LinearLatencyPredictor(ds.space).fit(tr, y[:n_train])
    pred = p.predict(te)
    assert pred.shape == (len(te),)
    assert spearmanr(pred, y[n_train:])[0] > bound
    # batched fast path (ArchBatch) gives the same numbers as a plain list
    if name == "ofa_mbv3":
        g = ds.space.encode(te[:50])
        np.testing.assert_allclose(p.predict(ds.space.batch(g)), pred[:50])
        assert len(p.feature_names) == latency_features(ds.space, te[:1]).shape[1]


def test_linear_predictor_errors(data_dir):
    ds = load_dataset("fbnet")
    with pytest.raises(RuntimeError, match="before fit"):
        LinearLatencyPredictor("fbnet").predict(ds.archs[:2])
    with pytest.raises(ValueError, match="one latency per arch"):
        LinearLatencyPredictor("fbnet").fit(ds.archs[:3], [1.0, 2.0])


def test_mlp_predictor(data_dir):
    import torch

    torch.set_num_threads(1)
    ds = load_dataset("fbnet")
    y = ds["raspi4"]
    p = MLPLatencyPredictor(ds.space, hidden=(64,), epochs=40, lr=1e-2).fit(ds.archs[:800], y[:800])
    pred = p.predict(ds.archs[1000:2000])
    assert (pred > 0).all() and spearmanr(pred, y[1000:2000])[0] > 0.9


def test_srcc_matrix_symmetric(data_dir):
    ds = load_dataset("fbnet").subset(np.arange(500))
    S = srcc_matrix(ds.table)
    v = S.values
    assert v.shape == (23, 23)
    np.testing.assert_allclose(v, v.T)
    np.testing.assert_allclose(np.diag(v), 1.0)
    assert abs(S.loc["pixel3", "fpga"] - spearmanr(ds["pixel3"], ds["fpga"])[0]) < 1e-9


def test_monotonicity_cli(tmp_path, data_dir):
    ds = load_dataset("nasbench201").subset(np.arange(300)).select_devices(["pixel3", "raspi4", "titan_rtx_1"])
    src = ds.to_csv(tmp_path / "mini.csv")
    assert mono_main(["--dataset", str(src), "--out", str(tmp_path / "out")]) == 0
    S = pd.read_csv(tmp_path / "out" / "mini_srcc.csv", index_col=0)
    assert list(S.columns) == ["pixel3", "raspi4", "titan_rtx_1"]
    assert (tmp_path / "out" / "mini_srcc.png").stat().st_size > 1000
    assert mono_main(["--dataset", str(src), "--devices", "nope", "--out", str(tmp_path)]) == 2


def test_linear_latency_never_predicts_below_a_hundredth_of_its_fastest_sample():
    """A linear fit extrapolates below zero for NAS-Bench-201 cells of ``none`` ops; a latency must be a
    positive number (the search refuses anything else), so predictions stop at a hundredth of the fastest
    sample."""
    import numpy as np

    from hwnas.predictors.linear import LinearLatencyPredictor
    from hwnas.spaces import create_space

    space = create_space("nasbench201")
    archs = space.sample(40, 0)
    X = LinearLatencyPredictor(space).features(archs)
    y = 1.0 + X @ np.linspace(0.5, 2.0, X.shape[1])
    p = LinearLatencyPredictor(space).fit(archs, y)
    assert p.floor == 0.01 * y.min()
    empty = space.validate("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    raw = p.features([empty]) @ p.weights + p.bias
    assert p.predict([empty])[0] == max(raw[0], p.floor) > 0
    np.testing.assert_allclose(p.predict(archs), np.maximum(p.features(archs) @ p.weights + p.bias, p.floor))


def test_tables_of_another_network_say_so(data_dir):
    """space=ofa_mbv3_w10 with the Note10 tables (w1.2's) listed hundreds of entries and advised restricting the
    space's choices, which cannot help: its stem and head are not in the tables."""
    from hwnas.predictors.assets import set_default_mirror
    from hwnas.predictors.lut import LatencyTableError, LookupTableLatency
    from hwnas.spaces import create_space

    set_default_mirror(str(data_dir))
    with pytest.raises(LatencyTableError, match=r"its fixed layers \(stem, head\) are not in them .* Choose the space they "
                                                r"were made for \(e\.g\. space=ofa_mbv3_w12\)"):
        LookupTableLatency(create_space("ofa_mbv3_w10", resolutions=[160, 176, 192, 208, 224]))
