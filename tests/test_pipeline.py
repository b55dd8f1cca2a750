"""hwnas-pipeline: stages, skip on rerun, measurement counting, adaptation decision, reduced space,
re-measured front, report."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest

from hwnas.search.pipeline import CapacityAccuracy, PipelineError, RestrictedSpace, run_pipeline
from hwnas.search.problem import pareto_mask
from hwnas.spaces import create_space

from _pipeline_helpers import SMALL, compose_pipeline, small_pipeline_cfg, small_pipeline_run  # noqa: F401

STAGES = ["01_proxy", "02_samples", "03_adapt", "04_reduce", "05_search", "06_remeasure", "07_export"]


def _rows(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_stages_outputs_and_counts(small_pipeline_run):
    d, s = small_pipeline_run
    assert s["stages_ran"] == STAGES and s["stages_skipped"] == []
    for st in STAGES:
        assert json.loads((d / st / "stage.json").read_text())["key"]
    for f in ("report.md", "fronts.png", "srcc.png", "reduced_space.png", "summary.json", "07_export/archs.json"):
        assert (d / f).exists(), f
    # every target measurement is in the ledger: K samples + the re-measured front (minus overlaps)
    ledger = {r["arch"] for r in _rows(d / "measurements.csv")}
    samples = {r["arch"] for r in _rows(d / "02_samples" / "samples.csv")}
    front = _rows(d / "06_remeasure" / "front.csv")
    assert len(samples) == s["k"] == 10
    assert ledger == samples | {r["arch"] for r in front}
    assert s["target_measurements"] == len(ledger) == s["new_measurements_this_run"]
    # the simulated measurements are the dataset's true values
    from hwnas.predictors.data import load_dataset

    ds = load_dataset("nasbench201")
    for r in front:
        assert float(r["measured_latency"]) == ds.lookup([r["arch"]], "titan_rtx_1")[0]
    # kept = exactly the Pareto-optimal members on the measured latency
    acc = np.array([float(r["accuracy"]) for r in front])
    lat = np.array([float(r["measured_latency"]) for r in front])
    np.testing.assert_array_equal(pareto_mask(acc, lat), [bool(int(r["pareto_on_target"])) for r in front])
    assert s["final_size"] == int(pareto_mask(acc, lat).sum())
    ev = s["evaluation"]
    assert 0.6 < ev["hv_ratio"] <= 1.0 + 1e-9
    report = (d / "report.md").read_text()
    assert "hypervolume" in report and f"{s['target_measurements']}" in report


def test_adaptation_decision(small_pipeline_run):
    _, s = small_pipeline_run
    a = s["adapt"]
    # pixel3 -> titan_rtx_1 is a hard pair (SRCC ~0.58): the pipeline adapts, and with K=10 adapting helps
    assert a["srcc_lower_bound"] < a["threshold"] and a["method"] == "bayes"
    assert a["srcc_lower_bound"] < a["srcc_proxy_on_samples"]
    assert a["eval_srcc_proxy_full"] < 0.7 and a["eval_srcc_adapted_full"] > a["eval_srcc_proxy_full"] + 0.1


def test_rerun_skips_every_stage_and_measures_nothing(small_pipeline_cfg, small_pipeline_run):
    d, s = small_pipeline_run
    again = run_pipeline(small_pipeline_cfg, d)
    assert again["stages_ran"] == [] and again["stages_skipped"] == STAGES
    assert again["new_measurements_this_run"] == 0
    assert again["evaluation"]["hv_ratio"] == s["evaluation"]["hv_ratio"]


def test_changed_search_reruns_only_downstream(tmp_path, data_dir, small_pipeline_run):
    import shutil

    d, s = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "search.seed=7", "adapt.threshold=-1.0"])
    out = run_pipeline(cfg, run)
    # threshold -1 (any lower bound clears it): the proxy is reused (scaled); samples are not measured again
    assert out["stages_skipped"] == ["01_proxy", "02_samples"]
    assert out["stages_ran"] == STAGES[2:]
    assert out["adapt"]["decision"] == "reuse proxy (scaled)"
    assert out["new_measurements_this_run"] <= out["front_size"]
    assert out["target_measurements"] == len(_rows(run / "measurements.csv"))


def test_restricted_space_and_capacity_proxy():
    nb = create_space("nasbench201")
    allowed = [["none", "nor_conv_3x3"]] + [["skip_connect", "nor_conv_1x1", "nor_conv_3x3"]] * 5
    r = RestrictedSpace(nb, allowed)
    assert r.genome_sizes.tolist() == [2, 3, 3, 3, 3, 3]
    G = r.sample_genomes(20, 0)
    archs = r.decode(G)
    np.testing.assert_array_equal(r.encode(archs), G)
    assert all(a.ops[0] in ("none", "nor_conv_3x3") for a in archs)
    with pytest.raises(PipelineError, match="not in the reduced space"):
        r.encode([nb.decode(np.zeros((1, 6), int))[0]])  # 'none' everywhere
    cap = CapacityAccuracy(nb)
    all3 = nb.validate("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    cut = nb.validate("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")  # output cut off
    v = cap.predict([all3, cut])
    assert v[0] == pytest.approx(math.log1p(54) + 0.1) and v[1] == 0.0
    fb = create_space("fbnet")
    small, big = fb.validate(" ".join(["skip"] * 22)), fb.validate(" ".join(["k5_e6"] * 22))
    assert CapacityAccuracy(fb).predict([small, big]).tolist()[0] == 0.0


def test_config_errors(tmp_path, data_dir):
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "target_device=my_phone"])
    with pytest.raises(PipelineError, match="my_phone"):
        run_pipeline(cfg, tmp_path / "x")
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "measure.mode=guess"])
    with pytest.raises(PipelineError, match="measure.mode"):
        run_pipeline(cfg, tmp_path / "y")


def test_cli_entry_point(tmp_path, data_dir, monkeypatch, capsys, small_pipeline_run):
    from hwnas.search import pipeline

    monkeypatch.setattr(sys, "argv", ["hwnas-pipeline", *SMALL, f"assets.mirror={data_dir}", f"hydra.run.dir={tmp_path / 'cli'}"])
    pipeline.main()
    _, s = small_pipeline_run
    out = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert out["evaluation"]["hv_ratio"] == s["evaluation"]["hv_ratio"]  # same config, same result
    assert "HV ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_mbconv_pipeline_exports_networks(tmp_path, data_dir):
    """OFA-MBv3: proxy 2080ti_1 (dataset) -> a MACs-priced target measured on demand; the kept archs
    are exported with weights (state dict + ONNX), and the ONNX output matches torch."""
    import onnxruntime as ort
    import torch

    from hwnas.search.pipeline import run_pipeline

    cfg = compose_pipeline(
        [
            "space_name=ofa_mbv3_w12", "dataset=ofa_mbv3", "proxy_device=2080ti_1", "target_device=macs_dev",
            "measure.mode=predictor", "measure.device={_target_:_pipeline_helpers.MacsLatency}",
            "measure.pool=300", "measure.k=10", "reduce.enabled=false",
            "accuracy._target_=hwnas.predictors.ofa_accuracy.OFAAccuracyPredictor",
            "search.n_gen=4", "search.pop_size=12", "search.refine.passes=0", "search.verbose=false",
            "search.plot=false", "report=false", "export.formats=[torch,onnx]", "export.max_archs=1",
            f"assets.mirror={data_dir}",
        ]
    )
    run_pipeline(cfg, tmp_path / "run")
    exp = tmp_path / "run" / "07_export"
    archs = json.loads((exp / "archs.json").read_text())["archs"]
    assert archs, "no arch kept on the target"
    index = json.loads((exp / "models" / "index.json").read_text())["exports"]
    assert len(index) == 1
    best = max(archs, key=lambda r: r["accuracy"])
    assert index[0]["arch_str"] == best["arch_str"]
    folder = exp / "models" / index[0]["name"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["latency"]["value"] == pytest.approx(best["latency_measured"])
    sd = torch.load(folder / "model_state_dict.pth", weights_only=True)
    assert any(k.startswith("blocks.") for k in sd)
    r = best["arch"]["r"]
    x = np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.isfinite(sess.run(None, {sess.get_inputs()[0].name: x})[0]).all()
