"""hwnas-pipeline faults of a second review: a plan of a stage that ran again with other archs (no
endless request), a broken plan.json, a stage killed halfway through its outputs, an in-memory target
store, a plan folder written atomically, the samples key of target.plan, exports kept over a rerun, and
bad settings refused with one line before any stage runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hwnas.predictors.measure.plan import PlanError, PlanLatency, is_plan, read_plan, write_plan
from hwnas.search.pipeline import run_pipeline
from hwnas.search.pipeline.evaluate import TargetLedger, WaitingForMeasurements, identity_of, read_csv
from hwnas.spaces import create_space
from hwnas.spaces.io import arch_key

from _pipeline_helpers import SMALL, MacsLatency, compose_pipeline, fill_plan, small_pipeline_cfg, small_pipeline_run  # noqa: F401


@pytest.fixture(scope="module")
def ofa():
    return create_space("ofa_mbv3_w12", resolutions=[160])


@pytest.fixture
def no_models(monkeypatch):
    """Plans without model files (what is tested is which rows a plan has, not the ONNX export)."""
    import hwnas.predictors.measure.plan as plan_mod

    real = plan_mod.write_plan
    monkeypatch.setattr(plan_mod, "write_plan", lambda *a, **k: real(*a, **{**k, "formats": ()}))


def _distinct(space, n, seed):
    out = list(dict.fromkeys(space.sample(4 * n, np.random.default_rng(seed))))
    return out[:n]


def _keys(space, plan_csv):
    return [arch_key(space, space.validate(r["arch"])) for r in read_csv(plan_csv)]


# ============================================================================ 1 a stale plan, a broken plan.json
def test_plan_for_other_archs_is_set_aside_its_filled_rows_kept_and_no_endless_request(tmp_path, ofa, no_models):
    """The front's plan is written; the stage runs again with other archs (search.budgets changed). The
    filled rows go into the ledger, the old plan is kept as plan.old-1, a new plan asks only for what is
    still missing; filled, the archs are answered: no request repeats for ever."""
    device = MacsLatency(ofa)
    target = PlanLatency(ofa, device="npu")
    ledger = TargetLedger(tmp_path, ofa, target, identity_of(target, None))
    stage = tmp_path / "06_remeasure"
    first = _distinct(ofa, 6, 0)
    a1, others = first[:4], first[4:]
    with pytest.raises(WaitingForMeasurements, match="measure the 4 front archs"):
        ledger.measure(a1, stage, "front archs")
    plan_csv = stage / "plan" / "plan.csv"
    assert _keys(ofa, plan_csv) == [arch_key(ofa, a) for a in a1]
    # the user measured 3 of the 4 rows ...
    fill_plan(plan_csv, lambda r: "" if r["id"] == "a003" else repr(float(device.predict([ofa.validate(r["arch"])])[0])))
    filled_text = plan_csv.read_text()
    # ... and the stage runs again for other archs: two of the old ones and two new ones
    a2 = [a1[0], a1[1], *others]
    with pytest.raises(WaitingForMeasurements) as e:
        ledger.measure(a2, stage, "front archs")
    msg = str(e.value)
    assert "measure the 2 front archs" in msg and str(stage / "plan.old-1") in msg and "\n" not in msg
    assert (stage / "plan.old-1" / "plan.csv").read_text() == filled_text  # the user's numbers, kept as they were
    assert _keys(ofa, plan_csv) == [arch_key(ofa, a) for a in others]  # the new plan: only what is missing
    # the 3 filled rows are in the ledger (a1[2] too: a real measurement of this target), the empty one is not
    assert ledger.count == 3 and ledger.new == 3
    fill_plan(plan_csv, lambda r: repr(float(device.predict([ofa.validate(r["arch"])])[0])))
    got = ledger.measure(a2, stage, "front archs")
    np.testing.assert_allclose(got, device.predict(a2))
    # another process (a rerun) finds everything in the ledger: no plan read, nothing asked
    target2 = PlanLatency(ofa, device="npu")
    again = TargetLedger(tmp_path, ofa, target2, identity_of(target2, None)).measure(a2, stage, "front archs")
    np.testing.assert_allclose(again, got)
    assert not (stage / "plan.old-2").exists()


def test_unfilled_plan_for_other_archs_is_replaced_by_one_for_these(tmp_path, ofa, no_models):
    target = PlanLatency(ofa, device="npu")
    ledger = TargetLedger(tmp_path, ofa, target, identity_of(target, None))
    stage = tmp_path / "s"
    archs = _distinct(ofa, 5, 1)
    with pytest.raises(WaitingForMeasurements, match="measure the 3 "):
        ledger.measure(archs[:3], stage, "archs")
    with pytest.raises(WaitingForMeasurements, match="measure the 2 ") as e:
        ledger.measure(archs[3:], stage, "archs")
    assert "plan.old-1" in str(e.value) and ledger.count == 0
    assert _keys(ofa, stage / "plan" / "plan.csv") == [arch_key(ofa, a) for a in archs[3:]]
    # a plan that asks for every arch wanted (and more) is kept as it is
    before = (stage / "plan" / "plan.csv").read_text()
    with pytest.raises(WaitingForMeasurements, match="measure the 1 "):
        ledger.measure(archs[3:4], stage, "archs")
    assert (stage / "plan" / "plan.csv").read_text() == before and not (stage / "plan.old-2").exists()


def test_broken_plan_json_is_one_plan_error_naming_it(tmp_path, ofa, no_models):
    """INSTRUCTIONS.md tells users to edit plan.json (check_units); a broken edit is one line naming the
    file, never a filled plan silently ignored or a raw JSONDecodeError."""
    device = MacsLatency(ofa)
    target = PlanLatency(ofa, device="npu")
    ledger = TargetLedger(tmp_path, ofa, target, identity_of(target, None))
    archs = _distinct(ofa, 3, 2)
    with pytest.raises(WaitingForMeasurements):
        ledger.measure(archs, tmp_path / "s", "archs")
    d = tmp_path / "s" / "plan"
    fill_plan(d / "plan.csv", lambda r: repr(float(device.predict([ofa.validate(r["arch"])])[0])))
    meta = d / "plan.json"
    meta.write_text(meta.read_text().replace('"check_units": true', '"check_units": False'))  # Python, not JSON
    assert is_plan(d / "plan.csv")  # still a plan: read, and the error names the file
    for call in (lambda: read_plan(d / "plan.csv"), lambda: ledger.measure(archs, tmp_path / "s", "archs"),
                 lambda: TargetLedger(tmp_path, ofa, PlanLatency(ofa, device="npu"), identity_of(target, None)).measure(
                     archs, tmp_path / "s", "archs")):
        with pytest.raises(PlanError) as e:
            call()
        assert str(meta) in str(e.value) and "not valid JSON" in str(e.value) and "check_units" in str(e.value)
        assert not isinstance(e.value, WaitingForMeasurements)
    assert ledger.count == 0 and not (tmp_path / "s" / "plan.old-1").exists()
    meta.write_text(meta.read_text().replace('"check_units": False', '"check_units": false'))
    np.testing.assert_allclose(ledger.measure(archs, tmp_path / "s", "archs"), device.predict(archs))


# ============================================================================ 2 a stage killed halfway
def test_stage_killed_after_part_of_its_outputs_runs_again(tmp_path, data_dir, small_pipeline_run, monkeypatch):
    """Settings A finished; settings B rerun stages 6-7 and are killed after archs.json is written; back
    to A, stage 7 must run again (its old stage.json has A's key, archs.json is B's)."""
    import shutil

    from hwnas.search.pipeline import stages

    d, s = small_pipeline_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    archs_a = (run / "07_export" / "archs.json").read_text()
    real_run = stages.ExportStage.run

    def killed(self, ctx):
        (ctx.run_dir / self.name / "archs.json").write_text('{"archs": "of settings B"}\n')
        raise KeyboardInterrupt

    monkeypatch.setattr(stages.ExportStage, "run", killed)
    cfg_b = compose_pipeline(SMALL + [f"assets.mirror={data_dir}", "remeasure.max_archs=4"])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg_b, run)
    assert not (run / "07_export" / "stage.json").exists()  # removed before the stage ran again
    monkeypatch.setattr(stages.ExportStage, "run", real_run)
    out = run_pipeline(compose_pipeline(SMALL + [f"assets.mirror={data_dir}"]), run)
    assert "07_export" in out["stages_ran"] and "06_remeasure" in out["stages_ran"]
    assert (run / "07_export" / "archs.json").read_text() == archs_a
    assert out["best_at_budgets"] == s["best_at_budgets"] and out["new_measurements_this_run"] == 0


# ============================================================================ 3 an in-memory target store
@pytest.mark.parametrize("store, calls", [(":memory:", [2, 2, 1]), ("file", [5])])
def test_ledger_batches_only_for_a_target_store_file(tmp_path, store, calls):
    """A measurer with an in-memory store (target.store=null) keeps nothing over a kill: the ledger commits
    it chunk by chunk; only a store file is handed every arch at once."""
    from hwnas.predictors.measure.store import MeasurementStore

    space = create_space("nasbench201")
    asked = []

    class Target:
        config = SimpleNamespace(chunk=2)

        def predict(self, archs):
            asked.append(len(archs))
            return np.arange(1.0, len(archs) + 1)

    t = Target()
    t.store = MeasurementStore(tmp_path / "own.sqlite" if store == "file" else ":memory:")
    TargetLedger(tmp_path, space, t, {"device": "fake"}).measure(space.sample(5, np.random.default_rng(0)), tmp_path, "archs")
    assert asked == calls


# ============================================================================ 4 a plan folder written atomically
def test_plan_folder_is_replaced_whole_or_not_at_all(tmp_path, ofa, monkeypatch):
    import hwnas.supernet.static as static

    out = tmp_path / "plan"
    big = _distinct(ofa, 4, 3)
    write_plan(ofa, big, out, device="npu", formats=())
    (out / "models" / "a003.onnx").write_bytes(b"model of the earlier, larger plan")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, n = static.build_static, []

    def interrupted(space, arch):  # killed during the model export of the second arch
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt
        return real(space, arch)

    monkeypatch.setattr(static, "build_static", interrupted)
    small = _distinct(ofa, 2, 4)
    with pytest.raises(KeyboardInterrupt):
        write_plan(ofa, small, out, device="npu", formats=())
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old plan, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]  # no half-built folder left
    monkeypatch.setattr(static, "build_static", real)
    write_plan(ofa, small, out, device="npu", formats=())
    assert _keys(ofa, out / "plan.csv") == [arch_key(ofa, a) for a in small]
    assert list((out / "models").iterdir()) == []  # nothing of the earlier plan survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]


def test_plan_folder_filled_or_foreign_is_refused(tmp_path, ofa):
    out = tmp_path / "plan"
    archs = _distinct(ofa, 2, 5)
    write_plan(ofa, archs, out, device="npu", formats=())
    fill_plan(out / "plan.csv", ["5.0", ""])
    text = (out / "plan.csv").read_text()
    with pytest.raises(PlanError, match="already holds measured latencies"):
        write_plan(ofa, archs[:1], out, device="npu", formats=())
    assert (out / "plan.csv").read_text() == text
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(PlanError, match=r"holds files that are not a plan's \(notes.txt\)"):
        write_plan(ofa, archs, mine, device="npu", formats=())
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# ============================================================================ 5 the samples key of target.plan
def test_samples_key_follows_the_given_plan(tmp_path, ofa):
    from hwnas.search.pipeline.stages import SamplesStage

    archs = _distinct(ofa, 3, 6)
    write_plan(ofa, archs, tmp_path / "p", device="npu", formats=())
    fill_plan(tmp_path / "p" / "plan.csv", ["10.0", "11.0", "12.0"])

    def key(target):
        ctx = SimpleNamespace(identity=identity_of(target, None), setting=lambda p: 0, target=target)
        return SamplesStage().extra_key(ctx)

    k1 = key(PlanLatency(ofa, tmp_path / "p" / "plan.csv", device="npu"))
    assert key(PlanLatency(ofa, tmp_path / "p" / "plan.csv", device="npu")) == k1
    fill_plan(tmp_path / "p" / "plan.csv", ["10.0", "11.0", "13.0"])  # one number measured again
    assert key(PlanLatency(ofa, tmp_path / "p" / "plan.csv", device="npu")) != k1
    no_plan = PlanLatency(ofa, device="npu")
    assert key(no_plan) == [{"plan_device": "npu"}, 0]  # other targets: the key of existing run folders is unchanged


# ============================================================================ 6 exports kept over a rerun
def test_export_keeps_finished_networks_of_the_same_settings(tmp_path, ofa, monkeypatch):
    import hwnas.supernet.export as export_mod
    from hwnas.search.pipeline.stages import KEY_FILE, ExportStage

    calls = []

    def fake_export_many(space, items, out_dir, overwrite=False, **kw):
        calls.append(overwrite)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, it in enumerate(items):
            (out / f"n{i}").mkdir(exist_ok=True)
            paths.append(out / f"n{i}")
        return paths

    monkeypatch.setattr(export_mod, "export_many", fake_export_many)
    monkeypatch.setattr(export_mod, "load_weights_source", lambda space, ck: None)
    archs = _distinct(ofa, 2, 7)
    final = [{"arch": a, "accuracy": 0.7 + i / 100, "measured": 10.0 + i, "predicted": 9.0 + i} for i, a in enumerate(archs)]
    ex = {"max_archs": None, "checkpoint": None, "calib_data": None, "calib_images": 10, "no_calib": False}
    out = tmp_path / "07_export" / "models"

    def export(key):
        ctx = SimpleNamespace(keys={"07_export": key}, identity={}, space=ofa, get=lambda name: [11.0], setting=lambda path: {})
        return ExportStage()._models(ctx, final, out, ["onnx"], ex)

    assert export("K1") == ["models/n0", "models/n1"] and calls == [False]
    (out / "n0" / "done").write_text("finished before the kill")
    export("K1")
    assert calls == [False, False] and (out / "n0" / "done").exists()  # same settings: kept (export_many skips it)
    export("K2")
    assert not (out / "n0" / "done").exists() and json.loads((out / KEY_FILE).read_text()) == {"key": "K2"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["models"]  # nothing left beside it


# ============================================================================ 7 bad settings: one line, exit 2
@pytest.mark.parametrize("override, field", [
    ("samples.selection=kmean", "samples.selection"),
    ("reduce.rules={bogus: 1}", "reduce.rules"),
    ("reduce.rules={scope: everywhere}", "reduce.rules"),
    ("+adapt.kwargs.x=1", "adapt.kwargs"),  # hydra refuses adapt.kwargs={x: 1} itself (struct); it says to write this
    ("adapt.method=bayesian", "adapt.method"),
    ("search.budgets=5", "search.budgets"),
    ("search.budgets=[abc]", "search.budgets"),
    ("budget_quantiles=[1.5]", "budget_quantiles"),
    ("samples.k=ten", "samples.k"),
    ("samples.pool=many", "samples.pool"),
    ("search_margin=big", "search_margin"),
    ("adapt.threshold=high", "adapt.threshold"),
    ("remeasure.max_archs=all", "remeasure.max_archs"),
    ("remeasure.near_budget=-1", "remeasure.near_budget"),
    ("reduce.n_samples=1.5", "reduce.n_samples"),
    ("export.max_archs=three", "export.max_archs"),
    ("search.pop_size=big", "search.pop_size"),
])
def test_pipeline_bad_setting_is_one_line_before_any_stage(tmp_path, data_dir, monkeypatch, capsys, override, field):
    from hwnas.search.pipeline import cli

    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["hwnas-pipeline", "--config-name", "pipeline_nasbench201", *SMALL, f"assets.mirror={data_dir}",
                                      override, f"hydra.run.dir={run}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"hwnas-pipeline: error: {field}") and "Traceback" not in err[0]
    assert not (run / "01_proxy").exists() and not (run / "run.json").exists()  # refused before the first stage


def test_measure_plan_selection_typo_and_profile_rules_are_one_line(tmp_path, monkeypatch, capsys):
    from hwnas.predictors.measure.cli import main as measure_main
    from hwnas.search.profile_cli import main as profile_main

    with pytest.raises(SystemExit) as e:
        measure_main(["--plan", "2", "--space", "ofa_mbv3_w12", "--resolutions", "160", "--pool", "50", "--selection", "typo",
                      "--out", str(tmp_path / "plan")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("hwnas-measure: error: --selection 'typo' is unknown")
    assert "kmeans" in err[0] and not (tmp_path / "plan").exists()
    # hwnas-profile: wrong rules are refused before the profiling (minutes), not after it
    monkeypatch.setattr(sys, "argv", ["hwnas-profile"])
    out = tmp_path / "prof"
    with pytest.raises(SystemExit) as e:
        profile_main(["+reduce.rules.bogus=1", f"output_dir={out}", f"reduce.conf_dir={tmp_path / 'conf'}",
                      f"hydra.run.dir={tmp_path / 'hydra'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("hwnas-profile: error: reduce.rules") and "bogus" in err[0]
    assert not (out / "profile.csv").exists()
