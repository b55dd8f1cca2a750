"""MLPAccuracyPredictor: quality on real measured ImageNet accuracy, determinism, save/load, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hwnas.predictors.acc_mlp import MLPAccuracyPredictor
from hwnas.predictors.ofa_accuracy import PredictorLoadError
from hwnas.predictors.assets import fetch
from hwnas.spaces import SpaceError, create_space


@pytest.fixture(scope="module")
def imagenet_w10(data_dir):
    df = pd.read_csv(fetch("accuracy/ofa_mbv3_w1.0_imagenet.csv", mirror=data_dir))
    space = create_space("ofa_mbv3_w10")
    archs = [space.validate(a) for a in df["arch"]]
    return space, archs, df["top1"].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def trained(imagenet_w10):
    space, archs, y = imagenet_w10
    idx = np.random.default_rng(0).permutation(len(y))
    tr, te = idx[:150], idx[150:]
    pred = MLPAccuracyPredictor(space, seed=0).fit([archs[i] for i in tr], y[tr])
    return pred, [archs[i] for i in te], y[te]


def test_mlp_srcc_on_held_out_measured_accuracy(trained):
    pred, archs_te, y_te = trained
    assert pred.encoding == "ofa" and pred.in_features == 128
    p = pred.predict(archs_te)
    # measured (benchmarks/accuracy_predictors.py): SRCC 0.972-0.981 with 100 train archs, ~0.98 with 150
    assert spearmanr(p, y_te)[0] > 0.95
    # predictions are in the units of the targets (top-1 %)
    assert abs(np.mean(p) - np.mean(y_te)) < 0.5
    assert np.sqrt(np.mean((p - y_te) ** 2)) < 0.8


def test_save_load_round_trip(trained, tmp_path):
    pred, archs_te, _ = trained
    path = pred.save(tmp_path / "sub" / "acc.pt")
    assert [p.name for p in path.parent.iterdir()] == ["acc.pt"]  # no temp file left
    back = MLPAccuracyPredictor.load(path)
    assert back.space.name == "ofa_mbv3_w10" and back.n_train == 150
    np.testing.assert_array_equal(back.predict(archs_te[:200]), pred.predict(archs_te[:200]))
    with pytest.raises(SpaceError, match="trained on"):
        MLPAccuracyPredictor.load(path, space=create_space("ofa_proxyless_w13"))
    with pytest.raises(SpaceError, match=r"trained on space ofa_mbv3_w10 and cannot price space ofa_mbv3_w12 \(another network"):
        MLPAccuracyPredictor.load(path, space=create_space("ofa_mbv3_w12"))  # the same encoding: it used to load
    assert MLPAccuracyPredictor.load(path, space=create_space("ofa_mbv3_w10", resolutions=[160, 224])).space.resolutions == [160, 224]
    from hwnas.spaces.errors import UserError

    with pytest.raises(UserError, match=r"is a folder; give the predictor's file path, e\.g\. .*acc_mlp\.pt"):
        pred.save(tmp_path)  # a folder (it was a raw IsADirectoryError about a temporary file)


def test_deterministic_with_seed(imagenet_w10):
    space, archs, y = imagenet_w10
    kw = dict(epochs=3, min_steps=10, hidden=64)
    a = MLPAccuracyPredictor(space, seed=3, **kw).fit(archs[:60], y[:60]).predict(archs[60:120])
    b = MLPAccuracyPredictor(space, seed=3, **kw).fit(archs[:60], y[:60]).predict(archs[60:120])
    c = MLPAccuracyPredictor(space, seed=4, **kw).fit(archs[:60], y[:60]).predict(archs[60:120])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_onehot_encoding_for_other_spaces():
    space = create_space("ofa_proxyless_w13", resolutions=[160, 192, 224])
    archs = space.sample(260, 0)
    y = np.log([space.macs(a) for a in archs])  # a learnable target
    pred = MLPAccuracyPredictor(space, seed=0, hidden=128, min_steps=200).fit(archs[:200], y[:200])
    assert pred.encoding == "onehot" and pred.in_features == space.features(archs[:1]).shape[1]
    assert spearmanr(pred.predict(archs[200:]), y[200:])[0] > 0.9
    batch = space.batch(space.encode(archs[200:]))  # ArchBatch fast path gives the same values
    np.testing.assert_allclose(pred.predict(batch), pred.predict(archs[200:]))


def test_bad_inputs(tmp_path, imagenet_w10):
    space, archs, y = imagenet_w10
    pred = MLPAccuracyPredictor(space, epochs=1, min_steps=1, hidden=8)
    with pytest.raises(RuntimeError, match="not trained"):
        pred.predict(archs[:2])
    with pytest.raises(ValueError, match="one value per arch"):
        pred.fit(archs[:5], y[:4])
    bad = archs[0].to_dict()
    bad["kernels"] = bad.pop("ks")
    with pytest.raises(SpaceError, match="kernels|ks"):
        pred.fit([bad] + archs[1:4], y[:4])
    with pytest.raises(PredictorLoadError, match="does not exist"):
        MLPAccuracyPredictor.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PredictorLoadError, match="not a readable"):
        MLPAccuracyPredictor.load(tmp_path / "junk.pt")
    with pytest.raises(SpaceError, match="onehot"):
        MLPAccuracyPredictor(create_space("ofa_proxyless_w13"), encoding="ofa")
    with pytest.raises(ValueError, match="encoding"):
        MLPAccuracyPredictor(space, encoding="bag")


def test_fit_on_supernet_evaluation_cache(tmp_path):
    """Evaluations stored by SupernetAccuracy's SQLite cache train the MLP."""
    import sqlite3

    from hwnas.predictors.acc_mlp import evaluations_from_cache

    space = create_space("ofa_mbv3_w12")
    archs = space.sample(40, 1)
    top1 = [0.5 + 1e-9 * space.macs(a) for a in archs]
    db = sqlite3.connect(str(tmp_path / "cache.sqlite"))
    db.execute("CREATE TABLE supernet_accuracy (fingerprint TEXT, arch TEXT, top1 REAL, top5 REAL, loss REAL, n INTEGER, "
               "PRIMARY KEY (fingerprint, arch))")
    db.executemany("INSERT INTO supernet_accuracy VALUES (?, ?, ?, ?, ?, ?)",
                   [("fp1", a.to_json(), t, t + 0.1, 1.0, 100) for a, t in zip(archs, top1)])
    db.commit()
    db.close()
    got_archs, values = evaluations_from_cache(tmp_path / "cache.sqlite", space)
    assert got_archs == archs and np.allclose(values, top1)
    pred = MLPAccuracyPredictor(space, hidden=32, min_steps=50).fit(got_archs, values)
    assert pred.predict(archs[:3]).shape == (3,)
    with pytest.raises(ValueError, match="no evaluations"):
        evaluations_from_cache(tmp_path / "cache.sqlite", space, fingerprint="other")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluations_from_cache(tmp_path / "none.sqlite", space)


@pytest.mark.slow
def test_saved_predictor_goes_back_into_a_search(tmp_path, data_dir):
    """``.save()`` -> ``hwnas-search accuracy=mlp accuracy.path=<file>``: the search's accuracies are the
    saved predictor's; the ``_target_`` form builds the same predictor."""
    import json
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from _pipeline_helpers import cli_env
    from hwnas.predictors.build import build_predictor

    space = create_space("ofa_mbv3_w12")
    archs = space.sample(64, 0)
    pred = MLPAccuracyPredictor(space, hidden=32, epochs=1, min_steps=40, seed=0).fit(
        archs, [0.6 + 2e-11 * space.macs(a) for a in archs])
    pred.save(tmp_path / "acc_mlp.pt")
    cfg = OmegaConf.create({"accuracy": {"_target_": "hwnas.predictors.acc_mlp.MLPAccuracyPredictor.load",
                                         "path": str(tmp_path / "acc_mlp.pt")}})
    np.testing.assert_array_equal(build_predictor(cfg, "accuracy", space).predict(archs[:5]), pred.predict(archs[:5]))

    p = subprocess.run(
        [sys.executable, "-m", "hwnas.search", "accuracy=mlp", "accuracy.path=acc_mlp.pt", "latency=note10_lut",
         f"assets.mirror={data_dir}", "search.pop_size=16", "search.n_gen=2", "search.refine.passes=0",
         "search.plot=false", "hydra.run.dir=run"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())["front"]
    got = np.array([r["accuracy"] for r in front])
    np.testing.assert_allclose(got, pred.predict([space.validate(r["arch"]) for r in front]), rtol=1e-6)
