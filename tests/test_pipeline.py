"""hwnas-pipeline: stages, skip on rerun without re-fitting, one target per run folder, measurement
counting, adaptation decision, reduced space, re-measured front, report, the OFA preset and plans."""

from __future__ import annotations

import json
import re
import math
import sys

import numpy as np
import pytest

from hwnas.predictors.capacity import CapacityAccuracy
from hwnas.search.pipeline import PipelineError, run_pipeline
from hwnas.search.pipeline.evaluate import read_csv
from hwnas.search.problem import pareto_mask
from hwnas.spaces import RestrictedSpace, SpaceError, create_space

from _pipeline_helpers import SMALL, compose_pipeline, fill_plan, small_pipeline_cfg, small_pipeline_run  # noqa: F401

STAGES = ["01_proxy", "02_samples", "03_adapt", "04_reduce", "05_search", "06_remeasure", "07_export"]


def _ledger(run_dir):
    from hwnas.predictors.measure.store import MeasurementStore

    return {r.arch: r.value for r in MeasurementStore(run_dir / "measurements.sqlite").records()}


def test_remeasure_picks_spread_and_the_members_around_each_budget():
    from hwnas.search.pipeline.evaluate import remeasure_picks

    pred = np.array([7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])  # index i has latency pred[i]
    val = lambda idx: [pred[i] for i in idx]  # noqa: E731
    assert val(remeasure_picks(pred, 3, [], 2)) == [1.0, 5.0, 10.0]  # the spread: first, middle, last
    assert val(remeasure_picks(pred, 3, [6.5], 2)) == [1.0, 5.0, 6.0, 7.0, 8.0, 10.0]  # + 2 under, 2 over 6.5
    assert val(remeasure_picks(pred, 3, [6.0, 0.5, 99.0], 1)) == [1.0, 5.0, 6.0, 7.0, 10.0]  # a budget on a member counts it under
    assert val(remeasure_picks(pred, None, [6.5], 0)) == sorted(pred.tolist())
    assert len(remeasure_picks(pred[:0], 3, [6.5], 2)) == 0


def test_measure_front_moves_the_budgets_by_the_measured_ratio():
    """The front's predictions err low by 25 %: the members predicted around 6.5 measure 7.5-10, so a
    second round measures those around 6.5 / 1.25 = 5.2 (predicted 4, 5 under it; 6, 7 over it)."""
    from hwnas.search.pipeline.evaluate import measure_front

    pred = np.array([7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])
    asked = []

    def measure(idx):
        asked.append(sorted(pred[i] for i in idx))
        return [1.25 * pred[i] for i in idx]

    idx, meas, ratio = measure_front(pred, 3, [6.5], 2, measure)
    assert asked == [[1.0, 5.0, 6.0, 7.0, 8.0, 10.0], [4.0]]  # the second round asks only what is new
    assert ratio == pytest.approx(1.25)
    assert [pred[i] for i in idx] == [1.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0] and meas == pytest.approx(1.25 * pred[idx])
    assert (meas[pred[idx] <= 5.2] <= 6.5).all() and (meas <= 6.5).sum() == 3  # 4 and 5 are measured under the budget
    asked.clear()
    idx, _, ratio = measure_front(pred, 3, [6.5], 2, measure, calibrate=False)
    assert asked == [[1.0, 5.0, 6.0, 7.0, 8.0, 10.0]] and ratio == 1.0 and len(idx) == 6
    asked.clear()  # predictions right on average: the moved budget has the same neighbours, nothing more is measured
    idx, _, ratio = measure_front(pred, 3, [6.5], 2, lambda ii: [pred[i] for i in ii])
    assert ratio == 1.0 and len(idx) == 6


def test_measure_front_searches_again_at_the_moved_budgets():
    """With ``search_again``, the second round picks from the front searched at budget / ratio (indices
    after the first front's), and only when the ratio is off by more than the tolerance."""
    from hwnas.search.pipeline.evaluate import SEARCH_AGAIN_TOL, measure_front

    pred = np.array([7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])
    second = np.array([5.1, 4.9, 5.3, 3.5, 6.5])  # a front searched at 5.2: its best archs are around 5.2
    calls, asked = [], []

    def again(budgets):
        calls.append(budgets)
        return second

    def measure(idx):
        asked.append(sorted(idx.tolist()))
        allp = np.concatenate([pred, second])
        return [1.25 * allp[i] for i in idx]

    idx, meas, ratio = measure_front(pred, 3, [6.5], 2, measure, search_again=again)
    assert calls == [[pytest.approx(5.2)]] and ratio == pytest.approx(1.25)
    assert asked[1] == [10, 11, 12, 14]  # by predicted latency 3.5, 4.9, 5.1 | 5.2 | 5.3, 6.5: two on each side
    assert len(idx) == 6 + 4
    calls.clear()
    idx, _, ratio = measure_front(pred, 3, [6.5], 2, lambda ii: [(1 + SEARCH_AGAIN_TOL / 2) * pred[i] for i in ii], search_again=again)
    assert calls == [] and len(idx) == 6  # within the tolerance: no second search


@pytest.mark.parametrize("own_store, calls", [(False, [2, 2, 1]), (True, [5])])
def test_ledger_hands_a_measurer_with_its_own_store_every_arch_at_once(tmp_path, own_store, calls):
    """A target that commits each arch to its own store gets the whole list (so that it can export the next
    chunk while the device times this one); any other target one protocol chunk at a time, each chunk
    committed to the run's ledger before the next is asked for."""
    from types import SimpleNamespace

    from hwnas.predictors.measure.store import MeasurementStore
    from hwnas.search.pipeline.evaluate import TargetLedger

    space = create_space("nasbench201")
    asked = []

    class Target:
        config = SimpleNamespace(chunk=2)
        store = MeasurementStore(tmp_path / "own.sqlite") if own_store else None

        def predict(self, archs):
            asked.append(len(archs))
            return np.arange(1.0, len(archs) + 1)

    archs = space.sample(5, np.random.default_rng(0))
    ledger = TargetLedger(tmp_path, space, Target(), {"device": "fake"})
    got = ledger.measure(archs, tmp_path, "archs")
    assert asked == calls and len(got) == 5 and (got > 0).all()
    assert ledger.count == 5 and ledger.new == 5
    assert (ledger.measure(archs, tmp_path, "archs") == got).all() and asked == calls  # stored: nothing asked again


def test_remeasure_takes_the_members_around_each_budget(tmp_path, data_dir):
    """A spread of 2 measures the fastest and the slowest member; near_budget=1 adds the member on
    each side of every budget, so the best arch under each budget is one of its measured neighbours."""
    from hwnas.search.pipeline import run_pipeline
    from hwnas.search.pipeline.evaluate import remeasure_picks

    cfg = compose_pipeline(SMALL + ["remeasure.max_archs=2", "remeasure.near_budget=1", "remeasure.calibrate=false", "report=false",
                                    f"assets.mirror={data_dir}"])
    s = run_pipeline(cfg, tmp_path / "run")
    searched = sorted(json.loads((tmp_path / "run" / "05_search" / "pareto.json").read_text())["front"], key=lambda r: r["latency"])
    front = read_csv(tmp_path / "run" / "06_remeasure" / "front.csv")
    picks = remeasure_picks([r["latency"] for r in searched], 2, s["budgets"], 1)
    assert [r["arch"] for r in front] == [searched[i]["arch_str"] for i in picks]
    assert len(front) > 2  # the budgets added members the spread left out
    lat = [r["latency"] for r in searched]
    for b in s["budgets"]:
        under = [i for i in range(len(lat)) if lat[i] <= b]
        if under:
            assert searched[under[-1]]["arch_str"] in {r["arch"] for r in front}


def test_stages_outputs_and_counts(small_pipeline_run):
    d, s = small_pipeline_run
    assert s["stages_ran"] == STAGES and s["stages_skipped"] == []
    for st in STAGES:
        assert json.loads((d / st / "stage.json").read_text())["key"]
    for f in ("report.md", "fronts.png", "srcc.png", "reduced_space.png", "summary.json", "run.json", "07_export/archs.json"):
        assert (d / f).exists(), f
    # every target measurement is in the ledger: K samples + the re-measured front (minus overlaps)
    ledger = _ledger(d)
    samples = {r["key"] for r in read_csv(d / "02_samples" / "samples.csv")}
    front = read_csv(d / "06_remeasure" / "front.csv")
    assert len(samples) == s["k"] == 10
    assert set(ledger) == samples | {r["key"] for r in front}
    # search_again is off by default: no second search, whatever the measured ratio
    st6 = json.loads((d / "06_remeasure" / "stage.json").read_text())
    assert st6["searched_again_at"] is None and not (d / "06_remeasure" / "again").exists()
    assert s["target_measurements"] == len(ledger) == s["new_measurements_this_run"]
    # the simulated measurements are the dataset's true values
    from hwnas.predictors.data import load_dataset

    ds = load_dataset("nasbench201")
    for r in front:
        assert float(r["measured_latency"]) == ds.lookup([r["arch"]], "titan_rtx_1")[0] == ledger[r["key"]]
    # kept = exactly the Pareto-optimal members on the measured latency
    acc = np.array([float(r["accuracy"]) for r in front])
    lat = np.array([float(r["measured_latency"]) for r in front])
    np.testing.assert_array_equal(pareto_mask(acc, lat), [bool(int(r["pareto_on_target"])) for r in front])
    assert s["final_size"] == int(pareto_mask(acc, lat).sum())
    # the members measured: the spread over latency and the 2 on each side of every budget
    from hwnas.search.pipeline.evaluate import remeasure_picks

    searched = sorted(json.loads((d / "05_search" / "pareto.json").read_text())["front"], key=lambda r: r["latency"])
    picks = remeasure_picks([r["latency"] for r in searched], 30, s["budgets"], 2)
    assert [r["arch"] for r in front] == [searched[i]["arch_str"] for i in picks]
    assert 0.6 < s["evaluation"]["hv_ratio"] <= 1.0 + 1e-9
    # budgets: quantiles of the adapted latency, increasing, and the best arch under each is under it
    b = s["budgets"]
    assert b == sorted(b) and len(b) == 4 and "quantiles" in s["budgets_from"] and "budgets" not in s["adapt"]
    for budget, best in s["best_at_budgets"].items():
        assert best is None or best["measured"] <= float(budget)
    report = (d / "report.md").read_text()
    assert "hypervolume" in report and f"{s['target_measurements']}" in report and "capacity proxy" in report
    assert re.search(r"\(ref \(\d\.\d{1,4}, [\d.]+ ms\)\)", report), report  # not a raw float list
    # the final front's table: a NAS-Bench-201 cell's '|' escaped (it split the row into extra cells); the proxy named
    rows = [ln for ln in report.splitlines() if ln.startswith("| `")]
    assert rows and all(len(re.split(r"(?<!\\)\|", ln)) == 6 for ln in rows), rows[:2]
    assert "pixel3 -> titan_rtx_1" in report or "pixel3" in report.splitlines()[0], report.splitlines()[0]
    # the reduced space is data: a registered name and plain options
    space = json.loads((d / "04_reduce" / "space.json").read_text())
    assert space["space"] == "restricted" and space["options"]["base"] == "nasbench201"


def test_adaptation_decision(small_pipeline_run):
    _, s = small_pipeline_run
    a = s["adapt"]
    # pixel3 -> titan_rtx_1 is a hard pair (SRCC ~0.58): the pipeline adapts, and with K=10 adapting helps
    assert a["srcc_lower_bound"] < a["threshold"] and a["method"] == "bayes"
    assert a["srcc_lower_bound"] < a["srcc_proxy_on_samples"]
    assert a["eval_srcc_proxy_full"] < 0.7 and a["eval_srcc_adapted_full"] > a["eval_srcc_proxy_full"] + 0.1


def test_rerun_skips_every_stage_and_refits_nothing(small_pipeline_cfg, small_pipeline_run, monkeypatch):
    import hwnas.predictors.adapt as adapt_mod
    import hwnas.search.pipeline.categorical as cat_mod
    from hwnas.search import nsga

    def refit(*a, **k):
        raise AssertionError("a finished stage's result was computed again")

    for mod, name in ((adapt_mod, "adapt"), (cat_mod, "reduce_categorical"), (nsga, "run_search"), (adapt_mod, "select_samples")):
        monkeypatch.setattr(mod, name, refit)
    d, s = small_pipeline_run
    again = run_pipeline(small_pipeline_cfg, d)
    assert again["stages_ran"] == [] and again["stages_skipped"] == STAGES
    assert again["new_measurements_this_run"] == 0 and again["target_measurements"] == s["target_measurements"]
    assert again["evaluation"]["hv_ratio"] == s["evaluation"]["hv_ratio"]


def test_changed_search_reruns_only_downstream(tmp_path, data_dir, small_pipeline_run):
    import shutil

    d, s = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "search.seed=7", "adapt.threshold=-1.0"])
    lines: list = []
    out = run_pipeline(cfg, run, log=lines.append)
    # the stages that ran again say that their earlier results in the folder are replaced (it was silent)
    assert [ln.split("]")[0][1:] for ln in lines if "changed since it last ran" in ln] == STAGES[2:]
    # threshold -1 (any lower bound clears it): the proxy is reused (scaled); samples are not measured again
    assert out["stages_skipped"] == ["01_proxy", "02_samples"]
    assert out["stages_ran"] == STAGES[2:]
    assert out["adapt"]["decision"] == "reuse proxy (scaled)"
    assert out["new_measurements_this_run"] <= out["front_size"]
    assert out["target_measurements"] == len(_ledger(run))


def test_adapt_method_proxy_is_fitted_when_the_check_does_not_reuse_the_proxy(tmp_path, data_dir, small_pipeline_run):
    """adapt.method=proxy (the proxy scaled on the samples, a documented method) crashed with KeyError 'a' when the
    monotonicity check chose to adapt: only a reused proxy had its scale stored."""
    import shutil

    d, _ = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    from hwnas.predictors import assets

    before = assets._DEFAULT_MIRROR
    out = run_pipeline(compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "adapt.method=proxy"]), run)
    assert assets._DEFAULT_MIRROR == before  # the call's assets.mirror is the call's (it stayed set after it)
    assert out["adapt"]["decision"] == "adapt (proxy)" and "a" not in out["adapt"]
    assert out["stages_skipped"] == ["01_proxy", "02_samples"] and "03_adapt" in out["stages_ran"]
    # and a rerun loads it from the run folder
    assert run_pipeline(compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "adapt.method=proxy"]), run)["stages_ran"] == []


@pytest.mark.parametrize("override, field", [("target.device=2080ti_1", '"device": "titan_rtx_1"'),
                                             ("target.outside=fit", '"outside": "error"')])
def test_a_run_folder_of_another_target_is_refused(tmp_path, data_dir, small_pipeline_run, override, field):
    import shutil

    d, _ = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    before = _ledger(run)
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", override])
    with pytest.raises(PipelineError, match="belongs to target=") as e:
        run_pipeline(cfg, run)
    assert field in str(e.value) and override.split("=")[1] in str(e.value)  # both values named
    assert _ledger(run) == before  # nothing measured, nothing relabelled


def test_run_folder_files_are_data(tmp_path, data_dir, small_pipeline_run):
    """A crafted reduced space in a run folder is refused, naming the file, and nothing in it runs."""
    import shutil

    d, _ = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    marker = tmp_path / "pwned"
    (run / "04_reduce" / "space.json").write_text(json.dumps(
        {"_target_": "os.system", "command": f"touch {marker}"}))
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}"])
    with pytest.raises(SpaceError, match="space.json.*nothing was run"):
        run_pipeline(cfg, run)
    assert not marker.exists()


def test_restricted_space_and_capacity_proxy():
    nb = create_space("nasbench201")
    allowed = [["none", "nor_conv_3x3"]] + [["skip_connect", "nor_conv_1x1", "nor_conv_3x3"]] * 5
    r = RestrictedSpace(nb, allowed)
    assert r.genome_sizes.tolist() == [2, 3, 3, 3, 3, 3]
    G = r.sample_genomes(20, 0)
    archs = r.decode(G)
    np.testing.assert_array_equal(r.encode(archs), G)
    assert all(a.ops[0] in ("none", "nor_conv_3x3") for a in archs)
    with pytest.raises(SpaceError, match="not in the reduced space"):
        r.encode([nb.decode(np.zeros((1, 6), int))[0]])  # 'none' everywhere
    cap = CapacityAccuracy(nb)
    all3 = nb.validate("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    cut = nb.validate("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")  # output cut off
    v = cap.predict([all3, cut])
    assert v[0] == pytest.approx(math.log1p(54) + 0.1) and v[1] == 0.0
    fb = create_space("fbnet")
    small, big = fb.validate(" ".join(["skip"] * 22)), fb.validate(" ".join(["k5_e6"] * 22))
    assert CapacityAccuracy(fb).predict([small, big]).tolist()[0] == 0.0


def test_config_errors_name_the_key(tmp_path, data_dir):
    from hwnas.predictors.build import ConfigError

    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "target.device=my_phone"])
    with pytest.raises(ConfigError, match="target .*my_phone"):
        run_pipeline(cfg, tmp_path / "x")
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "samples.k=2"])
    with pytest.raises(PipelineError, match="samples.k=2"):
        run_pipeline(cfg, tmp_path / "y")
    # trained weights without BN re-calibration data: refused before the first stage runs
    cfg = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "export.checkpoint=ofa_mbv3_d234_e346_k357_w1.2",
                                    "export.formats=[torch]"])
    with pytest.raises(PipelineError, match=r"export.calib_data=<ImageFolder>, or export.no_calib=true"):
        run_pipeline(cfg, tmp_path / "z")
    assert not (tmp_path / "z").exists()  # refused before the run folder is made


def test_cli_entry_point_and_one_line_errors(tmp_path, data_dir, monkeypatch, capsys, small_pipeline_run):
    from hwnas.search.pipeline import cli

    base = ["hwnas-pipeline", "--config-name", "pipeline_nasbench201", *SMALL, f"assets.mirror={data_dir}"]
    monkeypatch.setattr(sys, "argv", [*base, f"hydra.run.dir={tmp_path / 'cli'}"])
    cli.main()
    _, s = small_pipeline_run
    out = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert out["evaluation"]["hv_ratio"] == s["evaluation"]["hv_ratio"]  # same config, same result
    assert "HV ratio" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*base, "target.device=my_phone", f"hydra.run.dir={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("hwnas-pipeline: error: target") and "my_phone" in err[0]


@pytest.mark.slow
def test_ofa_preset_with_note10_proxy_exports_networks(tmp_path, data_dir):
    """The main pipeline: OFA-MBv3 w1.2, Note10 tables (a lookup table: adapted through its linear
    fit, its own detail kept), official OFA accuracy predictor, a MACs-priced stand-in target; the kept archs are
    exported with weights, the ONNX file with a free batch axis (and free height/width)."""
    import onnxruntime as ort

    cfg = compose_pipeline(
        ["target=custom", "target._target_=_pipeline_helpers.MacsLatency", "samples.pool=300",
         "samples.k=10", "adapt.threshold=2", "reduce.enabled=false", "search.n_gen=4", "search.pop_size=12", "search.refine.passes=0",
         "search.verbose=false", "search.plot=false", "report=false", "export.formats=[torch,onnx]", "export.max_archs=1",
         f"assets.mirror={data_dir}"], name="pipeline")
    s = run_pipeline(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "01_proxy" / "stage.json").read_text())["predictor"] == "LookupTableLatency"
    a = json.loads((tmp_path / "run" / "03_adapt" / "adapt.json").read_text())
    # adapted (threshold 2: never reused): the model built on the phone tables ranks the MACs-priced samples
    # at least as well as the tables do
    assert a["method"] == "bayes" and a["srcc_on_samples_after"] >= a["srcc_proxy_on_samples"]
    exp = tmp_path / "run" / "07_export"
    archs = json.loads((exp / "archs.json").read_text())["archs"]
    assert archs and s["final_size"] == len(archs)
    index = json.loads((exp / "models" / "index.json").read_text())["exports"]
    first = next(r for r in s["best_at_budgets"].values() if r is not None)
    assert len(index) == 1 and index[0]["arch_str"] == first["arch"]  # the best arch under the first budget
    folder = exp / "models" / index[0]["name"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["latency"]["value"] == pytest.approx(first["measured"]) and meta["latency"]["kind"] == "measured"
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    assert json.loads(props["hwnas.dynamic_axes"])["input"] == {"0": "batch", "2": "height", "3": "width"}
    r = meta["resolution"]
    for shape in ((1, 3, r, r), (2, 3, r + 32, r + 32)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out = sess.run(None, {"input": x})[0]
        assert out.shape == (shape[0], 1000) and np.isfinite(out).all()


def test_ofa_reduction_agrees_with_the_proxy(tmp_path, data_dir):
    """MBConv spaces: the reduce stage drops a choice only when the proxy's profile drops it too; with
    agree_with_proxy=false the adapted latency alone decides. Both spaces are what the stage says.
    (Which drops survive is tested with disagreeing predictors in test_profile.py.)"""
    from hwnas.search.pipeline import run_pipeline
    from hwnas.spaces.io import space_from_spec

    base = ["target=custom", "target._target_=_pipeline_helpers.MacsLatency", "samples.pool=200", "samples.k=10",
            "adapt.threshold=2", "reduce.n_samples=24", "search.n_gen=2", "search.pop_size=12", "search.refine.passes=0",
            "search.verbose=false", "search.plot=false", "report=false", "export.formats=[]", "remeasure.max_archs=4",
            "remeasure.near_budget=0", "space.resolutions=[160,224]", f"assets.mirror={data_dir}"]
    runs = {}
    for agree in (True, False):
        run = tmp_path / f"agree_{agree}"
        run_pipeline(compose_pipeline(base + [f"reduce.agree_with_proxy={str(agree).lower()}", "reduce.apply=true"], name="pipeline"), run)
        st = json.loads((run / "04_reduce" / "stage.json").read_text())
        f = run / "04_reduce" / "space.json"
        runs[agree] = (st, space_from_spec(json.loads(f.read_text()), f))
    (st_t, sp_t), (st_f, sp_f) = runs[True], runs[False]
    alone = st_f["dropped"]  # the adapted latency alone (the same samples and profile seed in both runs)
    assert st_t["dropped_by_the_adapted_latency_alone"] == [[b for b in a if b not in set(k)] for a, k in zip(alone, st_t["dropped"])]
    for u, (kept, dropped) in enumerate(zip(st_t["dropped"], alone)):
        assert set(kept) <= set(dropped)  # agreeing only ever keeps more
    # the proxy was profiled beside the adapted latency only when asked to agree
    metrics = {a: {r["metric"] for r in read_csv(tmp_path / f"agree_{a}" / "04_reduce" / "profile.csv")} for a in (True, False)}
    assert {"target", "proxy"} <= metrics[True] and "proxy" not in metrics[False]
    from hwnas.search.profile import block_name

    for sp, st in ((sp_t, st_t), (sp_f, st_f)):
        for u, bc in enumerate(sp.block_choices):
            assert not {block_name(k, e) for k, e in bc} & set(st["dropped"][u])
    # by default (reduce.apply=false) the same profile is reported and the search keeps every choice
    run = tmp_path / "not_applied"
    s = run_pipeline(compose_pipeline(base + ["report=true"], name="pipeline"), run)
    st = json.loads((run / "04_reduce" / "stage.json").read_text())
    f = run / "04_reduce" / "space.json"
    searched = space_from_spec(json.loads(f.read_text()), f)
    full = space_from_spec(json.loads((run / "run.json").read_text())["space"], f)
    assert searched.block_choices == full.block_choices and len(searched.block_choices[0]) == 9
    assert st["dropped"] == [] and st["applied"] is False and any(st["unfriendly"]) and st["unfriendly"] == st_t["dropped"]
    assert s["dropped"] == [] and s["unfriendly"] == st_t["dropped"]
    assert "Unfriendly choices on the target" in (run / "report.md").read_text()


def _plan_run(tmp_path, data_dir, *extra):
    """A small OFA pipeline with target=plan (device 'npu'): (cfg, run folder, space, a MACs 'device', fill)
    where ``fill(plan_csv, scale)`` writes that device's latencies x ``scale`` into a plan (returns its rows)."""
    from _pipeline_helpers import MacsLatency

    cfg = compose_pipeline(
        ["target=plan", "target.device=npu", "samples.pool=200", "samples.k=5", "reduce.enabled=false", "search.n_gen=3",
         "search.pop_size=10", "search.refine.passes=0", "search.verbose=false", "search.plot=false", "report=false",
         "remeasure.max_archs=3", "export.formats=[]", f"assets.mirror={data_dir}", *extra], name="pipeline")
    space = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    device = MacsLatency(space)

    def fill(plan_csv, scale=1.0):
        return fill_plan(plan_csv, lambda r: repr(scale * float(device.predict([space.validate(r["arch"])])[0])))

    return cfg, tmp_path / "run", space, device, fill


@pytest.mark.slow
def test_plan_target_stops_for_numbers_and_resumes(tmp_path, data_dir, capsys):
    """target=plan: the pipeline writes the K samples as a plan and stops; filled, the run goes on to
    the front, writes a second plan and stops; filled again, it finishes. Nothing is measured twice."""
    from hwnas.search.pipeline.evaluate import WaitingForMeasurements

    cfg, run, space, device, fill_rows = _plan_run(tmp_path, data_dir, "remeasure.search_again=true")

    def fill(plan_csv, scale=1.0):
        return len(fill_rows(plan_csv, scale))

    with pytest.raises(WaitingForMeasurements, match="02_samples/plan"):
        run_pipeline(cfg, run)
    assert fill(run / "02_samples" / "plan" / "plan.csv") == 5
    with pytest.raises(WaitingForMeasurements, match="06_remeasure/plan"):
        run_pipeline(cfg, run)
    # the front measures 30 % slower than predicted: the calibrated round asks for its own plan
    n_front = fill(run / "06_remeasure" / "plan" / "plan.csv", 1.3)
    with pytest.raises(WaitingForMeasurements, match="06_remeasure/calibrated/plan"):
        run_pipeline(cfg, run)
    n_more = fill(run / "06_remeasure" / "calibrated" / "plan" / "plan.csv", 1.3)
    s = run_pipeline(cfg, run)
    assert s["stages_ran"] == ["06_remeasure", "07_export"] and s["final_size"] >= 1
    assert s["target_measurements"] == len(_ledger(run)) == 5 + n_front + n_more and n_more >= 1
    for r in read_csv(run / "06_remeasure" / "front.csv"):
        assert float(r["measured_latency"]) == pytest.approx(1.3 * device.predict([space.validate(r["key"])])[0])
    # the calibrated round came from a second search at the budgets moved by the measured ratio
    from hwnas.search.results import load_front
    from hwnas.spaces.io import arch_key

    st = json.loads((run / "06_remeasure" / "stage.json").read_text())
    budgets = json.loads((run / "05_search" / "stage.json").read_text())["budgets"]
    assert st["measured_over_predicted"] > 1.1
    assert st["searched_again_at"] == pytest.approx([b / st["measured_over_predicted"] for b in budgets], rel=1e-5)
    again = {arch_key(space, r["arch"]) for r in load_front(run / "06_remeasure" / "again" / "pareto.json", space=space)}
    asked = {arch_key(space, space.validate(r["arch"])) for r in read_csv(run / "06_remeasure" / "calibrated" / "plan" / "plan.csv")}
    assert asked and asked <= again


@pytest.mark.slow
def test_a_later_plan_in_another_unit_and_an_edited_plan_are_refused(tmp_path, data_dir):
    """The front's plan filled in microseconds was stored as ms and the run ended 'successfully' with an empty
    front; a filled plan corrected after its numbers were taken was ignored for good. Each is one PlanError."""
    from hwnas.predictors.measure.plan import PlanError
    from hwnas.search.pipeline.evaluate import WaitingForMeasurements

    cfg, run, space, device, fill = _plan_run(tmp_path, data_dir, "remeasure.calibrate=false")

    with pytest.raises(WaitingForMeasurements):
        run_pipeline(cfg, run)
    fill(run / "02_samples" / "plan" / "plan.csv")
    with pytest.raises(WaitingForMeasurements, match="06_remeasure/plan"):
        run_pipeline(cfg, run)
    front_plan = run / "06_remeasure" / "plan" / "plan.csv"
    text = (front_plan.parent / "INSTRUCTIONS.md").read_text()  # not a command that would start the run over
    assert "Run the same `hwnas-pipeline` command again" in text and "target.plan=" not in text
    fill(front_plan, 1000.0)  # microseconds
    with pytest.raises(PlanError, match=r"plan.csv: its values are 1000x this device's earlier measurements per MAC \(5 in "):
        run_pipeline(cfg, run)
    assert len(_ledger(run)) == 5  # nothing of it stored
    fill(front_plan, 1.0)
    run_pipeline(cfg, run)
    rows = fill(run / "02_samples" / "plan" / "plan.csv", 1.0)
    rows[0]["latency_ms"] = repr(2 * float(rows[0]["latency_ms"]))  # a value corrected afterwards
    fill_plan(run / "02_samples" / "plan" / "plan.csv", [r["latency_ms"] for r in rows])
    with pytest.raises(PlanError, match=r"02_samples/plan/plan.csv: the value of .* is now .* was taken from it before"):
        run_pipeline(cfg, run)


@pytest.mark.parametrize("name, space, proxy, target", [
    ("pipeline", "ofa_mbv3_w12", "LookupTableLatency", "MeasuredLatency"),
    ("pipeline_proxyless", "proxyless_mobile", "LookupTableLatency", "MeasuredLatency"),
    ("pipeline_nasbench201", "nasbench201", "LinearLatencyPredictor", "DatasetLatency"),
    ("pipeline_fbnet", "fbnet", "LinearLatencyPredictor", "DatasetLatency"),
])
def test_presets_build_through_the_config_groups(name, space, proxy, target, data_dir, tmp_path):
    from hwnas.predictors.build import build_predictor, build_space

    cfg = compose_pipeline([f"assets.mirror={data_dir}", f"target.store={tmp_path / 'm.sqlite'}" if "nas" not in name and "fbnet" not in name
                            else "seed=0"], name=name)
    sp = build_space(cfg)
    assert sp.name == space
    assert type(build_predictor(cfg, "latency", sp)).__name__ == proxy
    assert type(build_predictor(cfg, "target", sp)).__name__ == target
    assert cfg.search.budgets is None and cfg.search.pop_size == 100  # target budgets; the search's own settings


def test_derived_budgets_are_taken_over_the_reduced_space(tmp_path, data_dir):
    # FBNet on raspi4: the reduction drops the fastest choices, so quantiles of the full space's latency put
    # the smallest budget below every arch that is searched (the README's preset command failed there).
    # Budgets the pipeline chooses come from the space it searches; budgets the user gives are kept.
    cfg_overrides = ["target.device=raspi4", "reduce.apply=true", "search.n_gen=4", "search.pop_size=12", "search.refine.passes=0",
                     "search.verbose=false", "search.plot=false", "report=false", f"assets.mirror={data_dir}"]
    s = run_pipeline(compose_pipeline(cfg_overrides, name="pipeline_fbnet"), tmp_path / "run")
    assert "searched space" in s["budgets_from"] and len(s["budgets"]) == 4
    assert "budgets" not in json.loads((tmp_path / "run" / "03_adapt" / "adapt.json").read_text())  # decided once, by the search
    assert s["dropped"]  # the reduction did drop choices
    assert all(r is not None for r in s["best_at_budgets"].values())  # an arch of the searched space under every budget
    # the same run with budgets given: kept as given; measuring, adapting and reducing are read back, not redone
    given = [round(b, 3) for b in s["budgets"][1:]]
    s2 = run_pipeline(compose_pipeline(list(cfg_overrides) + [f"search.budgets=[{','.join(map(str, given))}]"], name="pipeline_fbnet"),
                      tmp_path / "run")
    assert s2["budgets"] == given and s2["budgets_from"] == "search.budgets"
    assert s2["stages_skipped"][:4] == ["01_proxy", "02_samples", "03_adapt", "04_reduce"] and "05_search" in s2["stages_ran"]
    # FBNet's dataset holds 5,000 of its archs (target.outside=fit): the others' target latencies are the fit's, and
    # archs.json, the summary and the export labels say so (they were all called measured)
    from hwnas.predictors.data.datasets import DatasetLatency
    from hwnas.supernet.export import read_items

    target = DatasetLatency("fbnet", "fbnet", "raspi4", outside="fit", mirror=str(data_dir))
    rows = json.loads((tmp_path / "run" / "07_export" / "archs.json").read_text())["archs"]
    space, items, _ = read_items(tmp_path / "run", select="all")
    held = target.holds([it.arch for it in items])
    assert [bool(r.get("latency_fitted")) for r in rows] == [not h for h in held] and not held.all()
    assert [it.latency_kind for it in items] == ["measured" if h else "predicted" for h in held]
    assert s2["fitted_in_final"] == int((~held).sum())
