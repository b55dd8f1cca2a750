"""Local latency measurement: protocol logic, SQLite store, hwnas-measure CLI, per-layer LUT build, plans.

Real timings use tiny networks (resolution 64 or a small conv net) and few repeats; the protocol's
control logic is tested with injected fake group runners.
"""

import json
import math
import re
import sqlite3

import numpy as np
import pytest

from hwnas.predictors.measure import (
    MeasureConfig,
    MeasuredLatency,
    MeasureError,
    Measurement,
    ModelSpec,
    measure_module,
    measure_specs,
    relative_spread,
    run_protocol,
    summarise,
    tiny_cnn,
)
from hwnas.predictors.measure.store import MeasurementStore, StoreCorruptedError, StoreError
from hwnas.spaces import create_space
from hwnas.spaces.io import arch_key

from _pipeline_helpers import fill_plan


@pytest.fixture(scope="module")
def tiny_space():
    return create_space("ofa_mbv3_w12", resolutions=[64])


# ============================================================================ protocol logic
def test_summarise_is_median_of_process_medians():
    m = summarise([[1.0, 2.0, 3.0], [2.0, 3.0, 100.0], [3.0, 4.0, 5.0, 6.0, 7.0]], max_spread=0.5)
    assert m.per_process == [2.0, 3.0, 5.0]
    assert m.ms == 3.0
    assert m.n == 11
    assert m.spread == pytest.approx((5.0 - 2.0) / 3.0)
    assert not m.stable
    assert relative_spread([10.0]) == 0.0


class FakeRunner:
    """Per model key, a list of per-process medians to hand out in order (each process returns
    ``repeats`` copies of its value); records every call."""

    def __init__(self, plan):
        self.plan = {k: list(v) for k, v in plan.items()}
        self.calls = []

    def __call__(self, models, cfg, group):
        self.calls.append(sorted(m["key"] for m in models))
        return [[self.plan[m["key"]].pop(0)] * cfg.repeats for m in models]


def test_outlier_is_remeasured_only_where_needed():
    cfg = MeasureConfig(backend="torch", processes=3, repeats=4, max_spread=0.1, max_extra=3)
    runner = FakeRunner({
        "steady": [10.0, 10.2, 9.9],
        # one process hit by load (30): spread 0.49 > 0.1 -> one more process, then 3 agree
        "noisy": [20.0, 30.0, 20.4, 20.2, 99.0],
    })
    out = run_protocol([{"key": "steady"}, {"key": "noisy"}], cfg, runner)
    assert runner.calls == [["noisy", "steady"]] * 3 + [["noisy"]]
    assert out[0].ms == pytest.approx(10.0) and out[0].stable and len(out[0].per_process) == 3 and out[0].n == 12
    # the outlier is out-voted: median of the 3 agreeing processes (20, 20.2, 20.4)
    assert out[1].ms == pytest.approx(20.2) and out[1].stable
    assert out[1].per_process == [20.0, 30.0, 20.4, 20.2] and out[1].n == 16
    assert out[1].spread == pytest.approx(0.4 / 20.2)


def test_remeasure_is_capped_by_max_extra():
    cfg = MeasureConfig(backend="torch", processes=2, repeats=3, max_spread=0.1, max_extra=2)
    r = FakeRunner({"a": [10.0, 14.0, 18.0, 22.0, 26.0]})  # processes never agree
    m = run_protocol([{"key": "a"}], cfg, r)[0]
    assert len(r.calls) == 4  # 2 + max_extra
    assert m.per_process == [10.0, 14.0, 18.0, 22.0]
    assert m.ms == pytest.approx(16.0) and m.spread == pytest.approx(0.25)
    assert not m.stable and m.n == 12
    # agreeing processes: no extra group at all
    r2 = FakeRunner({"a": [10.0, 10.5]})
    m2 = run_protocol([{"key": "a"}], cfg, r2)[0]
    assert len(r2.calls) == 2 and m2.stable and m2.ms == pytest.approx(10.25)


def test_invalid_worker_times_are_rejected():
    cfg = MeasureConfig(backend="torch", processes=1, repeats=2)
    with pytest.raises(MeasureError, match="invalid call times"):
        run_protocol([{"key": "x"}], cfg, lambda models, c, g: [[1.0, float("nan")]])
    with pytest.raises(MeasureError, match="returned 2 timings for 1"):
        run_protocol([{"key": "x"}], cfg, lambda models, c, g: [[1.0], [1.0]])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="backend='tflite'"):
        MeasureConfig(backend="tflite")
    with pytest.raises(ValueError, match="processes=0"):
        MeasureConfig(processes=0)
    with pytest.raises(ValueError, match="clock='cpu'.*threads=1"):
        MeasureConfig(threads=2, clock="cpu")
    with pytest.raises(ValueError, match="pin="):
        MeasureConfig(pin="zero")
    assert MeasureConfig(backend="ort").backend == "onnxruntime"
    assert MeasureConfig(threads=1).clock == "cpu" and MeasureConfig(threads=2).clock == "wall"
    assert MeasureConfig(pin="0").pin == (0,)


# ============================================================================ real timings
def test_onnxruntime_protocol_times_a_tiny_net():
    small = ModelSpec("hwnas.predictors.measure.models:tiny_cnn", {"width": 8, "depth": 1, "resolution": 32}, key="small")
    big = ModelSpec("hwnas.predictors.measure.models:tiny_cnn", {"width": 48, "depth": 4, "resolution": 64}, key="big")
    cfg = MeasureConfig(processes=2, repeats=8, warmup=2, max_extra=0)
    got = []
    out = measure_specs([small, big], cfg, on_result=lambda i, m: got.append(i))
    assert sorted(got) == [0, 1]
    for m in out:
        assert math.isfinite(m.ms) and m.ms > 0
        assert len(m.per_process) == 2 and m.n == 16
        assert m.ms == pytest.approx(float(np.median(m.per_process)))
    # 48 channels x 4 layers at 64x64 is ~100x the MACs of 8 channels x 1 layer at 32x32
    assert out[1].ms > 3 * out[0].ms


def test_measure_module_and_wall_clock():
    module, shape = tiny_cnn(width=8, depth=1, resolution=32)
    m = measure_module(module, shape, MeasureConfig(processes=1, repeats=5, warmup=1, clock="wall", pin="auto"))
    assert m.ms > 0 and math.isfinite(m.ms) and len(m.per_process) == 1
    with pytest.raises(MeasureError, match="ModelSpec"):
        measure_module(module, shape, MeasureConfig(backend="torch"))


def test_onnx_bytes_are_the_file_and_keep_their_labels(tmp_path):
    """The measured model travels as bytes (onnx_bytes); the file export writes the same bytes, labelled,
    and both compute torch's output."""
    import onnx
    import onnxruntime as ort
    import torch

    from hwnas.predictors.measure.models import export_spec, spec_onnx
    from hwnas.supernet.onnx import read_metadata

    spec = ModelSpec("hwnas.predictors.measure.models:tiny_cnn", {"width": 8, "depth": 2, "resolution": 32}, key="t")
    data, shape = spec_onnx(spec)
    path, shape2 = export_spec(spec, tmp_path / "m.onnx")
    assert shape == shape2 == [1, 3, 32, 32]
    assert (tmp_path / "m.onnx").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left beside it
    meta = read_metadata(path)
    assert json.loads(meta["hwnas.input_shape"]) == [1, 3, 32, 32] and json.loads(meta["hwnas.dynamic_axes"]) == {}
    model = onnx.load_from_string(data)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    module, _ = tiny_cnn(width=8, depth=2, resolution=32)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5, rtol=1e-4)


def test_torch_eager_backend():
    spec = ModelSpec("hwnas.predictors.measure.models:tiny_cnn", {"width": 8, "depth": 1, "resolution": 32}, key="t")
    m = measure_specs([spec], MeasureConfig(backend="torch", processes=1, repeats=5, warmup=1))[0]
    assert m.ms > 0 and math.isfinite(m.ms) and m.n == 5


def test_bad_factory_is_reported():
    with pytest.raises(MeasureError, match="cannot be imported"):
        measure_specs([ModelSpec("no_such_pkg.mod:f", {})], MeasureConfig(processes=1, repeats=1))


# ============================================================================ store
def test_store_round_trip_and_canonical_keys(tmp_path, tiny_space):
    path = tmp_path / "m.sqlite"
    a, b = tiny_space.sample(2, 0)
    cfg = MeasureConfig()
    ka, kb = arch_key(tiny_space, a), arch_key(tiny_space, b)
    assert ka == arch_key(tiny_space, a.to_str()) == arch_key(tiny_space, a.to_dict())  # one key whatever the form
    plat = {"machine": "x86_64", "processor": "cpu", "cpus": 2, "host": "h"}
    with MeasurementStore(path) as st:
        st.register_device("dev", cfg, plat)
        st.put("dev", tiny_space.name, ka, Measurement(1.5, 0.02, 60, [1.49, 1.5, 1.52], True), cfg, plat)
        st.put("dev", tiny_space.name, kb, 2.5)
        with pytest.raises(StoreError, match="store keys are strings"):
            st.put("dev", tiny_space.name, a, 2.5)
    with MeasurementStore(path) as st:  # reopened from disk
        assert len(st) == 2
        rec = st.get("dev", tiny_space.name, ka)
        assert rec.value == 1.5 and rec.spread == 0.02 and rec.n == 60 and rec.samples == [1.49, 1.5, 1.52]
        assert rec.protocol["backend"] == "onnxruntime" and rec.protocol["processes"] == 3 and rec.platform == plat
        assert st.get("dev", tiny_space.name, kb).value == 2.5
        assert st.get("other", tiny_space.name, ka) is None
        got = st.get_many("dev", tiny_space.name, [kb, ka, kb])
        assert got[ka].value == 1.5 and got[kb].value == 2.5
        ds = st.dataset(tiny_space, ["dev"], archs=[b, a])
        assert list(ds["dev"]) == [2.5, 1.5]
        with pytest.raises(StoreError, match="device='dev'.*another device name"):
            st.register_device("dev", MeasureConfig(threads=2))
        with pytest.raises(StoreError, match="another machine.*its own device name"):
            st.register_device("dev", cfg, dict(plat, cpus=64))
        st.register_device("dev", cfg, dict(plat, host="renamed"))  # the host name may change
        # a run that stopped before its first result gives its registration back (first-wins stays atomic)
        st.register_device("new", MeasureConfig(threads=2), dict(plat, cpus=64))
        with pytest.raises(StoreError, match="device='new'"):
            st.register_device("new", cfg, plat)
        assert not st.forget_if_empty("new", cfg)  # not its protocol: kept
        assert st.forget_if_empty("new", MeasureConfig(threads=2)) and "new" not in st.devices()
        st.register_device("new", cfg, plat)
        st.put("new", tiny_space.name, ka, Measurement(1.0, 0.0, 3, [1.0], True), cfg)
        assert not st.forget_if_empty("new", cfg)  # it has a measurement
        with pytest.raises(StoreError, match="device='new'.*another device name"):
            st.register_device("new", MeasureConfig(threads=2))
        with pytest.raises(StoreError, match="device='new'"):  # a row is never stored under another protocol
            st.put("new", tiny_space.name, kb, Measurement(1.0, 0.0, 3, [1.0], True), MeasureConfig(threads=2))
        with pytest.raises(StoreError, match="positive and finite"):
            st.put("dev", tiny_space.name, ka, float("nan"))


def test_corrupted_store_is_reported_and_left_untouched(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database, just some bytes " * 200)
    before = bad.read_bytes()
    with pytest.raises(StoreCorruptedError, match="bad.sqlite is not a readable measurement store"):
        MeasurementStore(bad)
    assert bad.read_bytes() == before
    # a real store whose pages were damaged
    good = tmp_path / "good.sqlite"
    with MeasurementStore(good) as st:
        for i in range(300):
            st.put("dev", "space", json.dumps({"i": i}), 1.0 + i)
    con = sqlite3.connect(good)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(good.read_bytes())
    for off in range(4096 + 100, len(data), 4096):  # scribble over every page but the header page
        data[off:off + 64] = b"\xff" * 64
    good.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptedError, match="good.sqlite"):
        MeasurementStore(good)
    # another application's SQLite file
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreCorruptedError, match="other tables"):
        MeasurementStore(other)
    # ... with a table of the same name: refused before anything is written (no schema, no WAL journal mode)
    same = tmp_path / "same.sqlite"
    con = sqlite3.connect(same)
    con.execute("CREATE TABLE measurements (id INTEGER PRIMARY KEY, sensor TEXT, temp REAL)")
    con.execute("INSERT INTO measurements VALUES (1, 'a', 2.0)")
    con.commit()
    con.close()
    before = same.read_bytes()
    with pytest.raises(StoreCorruptedError, match="lacks columns"):
        MeasurementStore(same)
    assert same.read_bytes() == before and not (tmp_path / "same.sqlite-wal").exists()


def test_measured_latency_caches_and_never_remeasures(tmp_path, tiny_space):
    calls = []

    def runner(models, cfg, group):  # fake timer: latency = resolution-free function of the arch
        calls.append(len(models))
        return [[float(sum(json.loads(json.dumps(m["kwargs"]["arch"]))["ks"]))] * cfg.repeats for m in models]

    archs = tiny_space.sample(4, 1)
    store = tmp_path / "m.sqlite"
    pred = MeasuredLatency(tiny_space, device="fake", store=store, backend="torch", processes=2, repeats=2, runner=runner)
    y = pred.predict(archs + archs[:1])
    assert pred.n_measured == 4 and sum(calls) == 2 * 4  # 2 processes x 4 distinct archs
    assert y[-1] == y[0] and np.allclose(y[:4], [sum(a.ks) for a in archs])
    # a fresh predictor on the same file: everything comes from the store
    calls.clear()
    pred2 = MeasuredLatency("ofa_mbv3_w12", device="fake", store=store, backend="torch", runner=runner)
    pred2.space = tiny_space
    y2 = pred2.predict(archs)
    assert calls == [] and pred2.n_measured == 0 and np.array_equal(y2, y[:4])
    # one new arch -> only it is measured
    new = tiny_space.sample(1, 99)
    pred2.predict(archs + new)
    assert pred2.n_measured == 1


# ============================================================================ CLI
def test_cli_end_to_end_three_tiny_archs(tmp_path, tiny_space, capsys):
    from hwnas.predictors.data import LatencyDataset
    from hwnas.predictors.measure.cli import main

    store, out = tmp_path / "m.sqlite", tmp_path / "lat.csv"
    argv = ["--space", "ofa_mbv3_w12", "--resolutions", "64", "-n", "3", "--seed", "3", "--processes", "2",
            "--repeats", "3", "--warmup", "1", "--store", str(store), "--out", str(out), "--device", "here",
            "--no-progress"]
    assert main(argv) == 0
    ds = LatencyDataset.from_csv(out, tiny_space)
    assert ds.devices == ["here"] and len(ds) == 3
    assert ds.archs == tiny_space.sample(3, 3)
    assert np.all(np.isfinite(ds["here"])) and np.all(ds["here"] > 0)
    stamps = {r.arch: r.timestamp for r in MeasurementStore(store).records()}
    capsys.readouterr()
    assert main(argv) == 0  # rerun: nothing measured again
    assert "0 to measure" in capsys.readouterr().err
    assert {r.arch: r.timestamp for r in MeasurementStore(store).records()} == stamps
    # the same device name with another protocol is refused, in one line
    with pytest.raises(SystemExit) as e:
        main(argv[:-1] + ["--threads", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwnas-measure: error: device='here'")
    # the other width writes its archs alike: its run may not extend this space's file (it was mixed in)
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["ofa_mbv3_w10" if a == "ofa_mbv3_w12" else a for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and out.read_bytes() == before
    assert err[0] == (f"hwnas-measure: error: --out {out} holds 3 arch(s) measured for space 'ofa_mbv3_w12' on 'here' (in {store}), "
                      "not 'ofa_mbv3_w10'; give another --out file for ofa_mbv3_w10")
    assert MeasurementStore(store).spaces("here") == ["ofa_mbv3_w12"]


def test_cli_reads_arch_files_with_the_one_reader(tmp_path, tiny_space, capsys):
    """--archs goes through hwnas.spaces.io.read_archs: a pareto.json and JSON lines give the archs in
    order; a bad entry or a binary file is one line naming --archs and the file, before anything is opened."""
    from hwnas.predictors.measure.cli import main
    from hwnas.spaces.io import read_archs

    archs = tiny_space.sample(3, 5)
    p = tmp_path / "pareto.json"
    p.write_text(json.dumps({"space": {}, "front": [{"arch": a.to_dict(), "latency": 1.0} for a in archs]}))
    assert read_archs(p, tiny_space, "--archs") == archs
    jl = tmp_path / "archs.jsonl"
    jl.write_text("\n".join([archs[0].to_json(), archs[1].to_str(), json.dumps({"arch": archs[2].to_dict()})]))
    assert read_archs(jl, tiny_space, "--archs") == archs
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 999}))
    binary = tmp_path / "archs.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    store = tmp_path / "m.sqlite"
    for path, want in ((bad, "--archs .*bad.jsonl entry 0"), (binary, "--archs .*archs.bin is not a text file")):
        with pytest.raises(SystemExit) as e:
            main(["--space", "ofa_mbv3_w12", "--archs", str(path), "--store", str(store), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and re.search(want, err[0]), err
    assert not store.exists()
    # a file that records its space: another --space (another width, the same strings) is refused, naming the fix
    from hwnas.spaces import SpaceError, create_space
    from hwnas.spaces.io import space_spec

    p.write_text(json.dumps({"space": space_spec(tiny_space), "front": [{"arch": a.to_dict()} for a in archs]}))
    with pytest.raises(SpaceError, match=r"holds archs of space ofa_mbv3_w12, not ofa_mbv3_w10; give --space ofa_mbv3_w12"):
        read_archs(p, create_space("ofa_mbv3_w10", resolutions=[64]), "--archs", fix="give --space {space}")
    with pytest.raises(SpaceError, match=r"at width_mult=1.2, not 1.0"):
        read_archs(p, create_space("ofa_mbv3_w12", resolutions=[64], width_mult=1.0), "--archs")
    assert read_archs(p, create_space("ofa_mbv3_w12", resolutions=[64, 96]), "--archs") == archs  # other options: fine
    # spaces it cannot build networks of: one line with the way for them (it was a traceback for --plan)
    for name in ("nasbench201", "fbnet"):
        with pytest.raises(SystemExit) as e:
            main(["--space", name, "--plan", "3", "--out", str(tmp_path / "plan")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and f"latency.proxy={name}" in err[0], err
    assert not (tmp_path / "plan").exists()


# ============================================================================ lookup table
def test_lut_build_writes_a_table_lookuptable_reads(tmp_path):
    from hwnas.predictors.lut import LookupTableLatency, lut_keys, read_lut
    from hwnas.predictors.measure.lut_build import build_lut, distinct_layers

    space = create_space("ofa_mbv3_w12", resolutions=[64], block_choices=["k3e3", "k5e4"], depth_choices=[2])
    layers = distinct_layers(space, [64])[64]
    # first conv + first block + 5 units x (first, other) x 2 blocks + 4 fixed layers
    assert len(layers) == 2 + 5 * 2 * 2 + 4
    store = MeasurementStore(tmp_path / "m.sqlite")
    cfg = MeasureConfig(processes=1, repeats=3, warmup=1, chunk=64)
    paths = build_lut(space, tmp_path / "lut", config=cfg, store=store, device="here")
    assert set(paths) == {64} and paths[64].name == "64_lookup_table.yaml"
    table = read_lut(paths[64])
    assert set(table) == set(layers)
    assert all(v["mean"] > 0 and v["count"] == 3 for v in table.values())
    lut = LookupTableLatency(space, tables=str(tmp_path / "lut" / "{r}_lookup_table.yaml"))
    archs = space.sample(5, 0)
    want = [sum(table[k]["mean"] for k, _ in lut_keys(space.layers(a), "ofa")) for a in archs]
    assert np.allclose(lut.predict(archs), want)
    assert lut.device_name == "here" and LookupTableLatency(space, tables=str(tmp_path / "lut")).device_name == "here"
    # a second build measures nothing (all layers are in the store) and writes the same table
    n = len(store)
    paths2 = build_lut(space, tmp_path / "lut2", config=cfg, store=store, device="here")
    assert len(store) == n and read_lut(paths2[64]) == table


def test_store_and_predictor_pickle_by_path(tmp_path, tiny_space):
    import pickle

    st = MeasurementStore(tmp_path / "m.sqlite")
    k = arch_key(tiny_space, tiny_space.sample(1, 0)[0])
    st.put("dev", tiny_space.name, k, 3.0)
    pred = MeasuredLatency(tiny_space, device="dev2", store=st, backend="torch")
    pred2 = pickle.loads(pickle.dumps(pred))  # e.g. sent to a dask worker: the store reopens the file
    assert pred2.store.get("dev", tiny_space.name, k).value == 3.0
    with pytest.raises(StoreError, match="in-memory"):
        pickle.dumps(MeasurementStore(":memory:"))


# ============================================================================ bring your own numbers
@pytest.fixture
def plan_dir(tmp_path):
    """A plan of 6 archs picked by the adaptation's selection (no model files: reading is what is tested)."""
    from hwnas.predictors.measure.plan import select_plan_archs, write_plan

    space = create_space("ofa_mbv3_w12", resolutions=list(range(128, 225, 4)))  # latency=adapted's resolutions
    archs = select_plan_archs(space, 6, seed=0, pool=300)
    write_plan(space, archs, tmp_path / "plan", device="npu", formats=())
    return tmp_path / "plan", space, archs


def test_plan_picks_the_adaptations_samples_and_reads_back(plan_dir):
    from hwnas.predictors.adapt import select_samples
    from hwnas.predictors.measure.plan import read_plan

    d, space, archs = plan_dir
    rng = np.random.default_rng(0)
    pool = list(dict.fromkeys(space.sample(300, rng)))
    assert archs == [pool[i] for i in select_samples(space, pool, 6, "auto", rng)]  # the same selection
    rows = fill_plan(d / "plan.csv", [f"{2.0 + i}" for i in range(6)])
    assert [space.validate(r["arch"]) for r in rows] == archs
    sp, got, y, meta = read_plan(d / "plan.csv")
    assert got == archs and y.tolist() == [2.0 + i for i in range(6)] and meta["device"] == "npu"
    text = (d / "INSTRUCTIONS.md").read_text()
    assert "latency_ms" in text and "milliseconds" in text and "latency.target_samples=" in text


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[2].update(latency_ms=""), r"line 4 \(id a002\): latency_ms is empty"),
    (lambda rows: rows[1].update(latency_ms="-3"), r"id a001\): latency_ms=-3 must be a positive number"),
    (lambda rows: rows[1].update(latency_ms="fast"), r"latency_ms='fast' is not a number"),
    (lambda rows: rows.append(dict(rows[0])), r"id a000 is repeated"),
    (lambda rows: rows.append(dict(rows[0], id="a999")), r"this row is not in the plan"),
    (lambda rows: rows[3].update(arch=rows[4]["arch"]), r"its arch is not the one the plan gave this id"),
    (lambda rows: rows.pop(5), r"ids \['a005'\] of the plan have no row"),
    (lambda rows: rows[4].update(latency_ms=str(float(rows[4]["latency_ms"]) * 1000)), r"id a004: .* the other rows' time per MAC"),
    (lambda rows: rows[4].update(latency_ms=str(float(rows[4]["latency_ms"]) / 1000)),
     r"id a004: latency_ms=\S+ is 1/1000 of the other rows' time per MAC .*\"check_units\": false in plan.json"),
    (lambda rows: rows[4].update(latency_ms=str(float(rows[4]["latency_ms"]) * 50)), r"is 50x the other rows' time per MAC \(a "
     r"different unit\?\); write every value in milliseconds \(if it is right .*set \"check_units\": false in plan.json\)"),
    (lambda rows: [r.update(latency_ms=str(float(r["latency_ms"]) / 1000)) for r in rows], r"GMAC/s.*seconds\? write milliseconds"),
    (lambda rows: [r.update(latency_ms=str(float(r["latency_ms"]) * 1000)) for r in rows], r"GMAC/s.*microseconds\?"),
    (lambda rows: rows[1].update(latency_ms="1_2.1"), r"latency_ms='1_2.1' is not a number"),
])
def test_bad_fills_get_one_clear_error_each(plan_dir, edit, message):
    import csv

    from hwnas.predictors.measure.plan import PlanError, read_plan

    d, space, archs = plan_dir
    macs = [space.macs(a) for a in archs]
    rows = fill_plan(d / "plan.csv", [f"{m / 1e9 / 30 * 1e3:.3f}" for m in macs])  # a plausible device: 30 GMAC/s
    read_plan(d / "plan.csv")  # the good fill reads
    edit(rows)
    with open(d / "plan.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(PlanError, match=message) as e:
        read_plan(d / "plan.csv")
    assert "\n" not in str(e.value)


def test_a_decimal_slip_is_warned_and_check_units_must_be_a_boolean(plan_dir, caplog):
    """One row 10x off (187 for 18.7) is within the 30x the unit check refuses: it is read, with a warning naming
    the row; "check_units": "false" (quoted) used to count as true."""
    from hwnas.predictors.measure.plan import PlanError, read_plan

    d, space, archs = plan_dir
    vals = [space.macs(a) / 1e9 / 30 * 1e3 for a in archs]
    fill_plan(d / "plan.csv", [f"{v:.3f}" for v in vals])
    with caplog.at_level("WARNING", logger="hwnas.measure"):
        read_plan(d / "plan.csv")
    assert not [r for r in caplog.records if "decimal slip" in r.getMessage()]
    fill_plan(d / "plan.csv", [f"{v * (10 if i == 2 else 1):.3f}" for i, v in enumerate(vals)])
    with caplog.at_level("WARNING", logger="hwnas.measure"):
        assert read_plan(d / "plan.csv")[2][2] == pytest.approx(vals[2] * 10, rel=1e-3)
    slips = [r.getMessage() for r in caplog.records if "decimal slip" in r.getMessage()]
    assert len(slips) == 1 and "id a002" in slips[0] and "10x off" in slips[0]
    meta = json.loads((d / "plan.json").read_text())
    (d / "plan.json").write_text(json.dumps({**meta, "check_units": "false"}))
    with pytest.raises(PlanError, match=r'"check_units" is \'false\'; write true or false without quotes'):
        read_plan(d / "plan.csv")


def test_spreadsheet_habits_get_a_message_naming_them(plan_dir):
    """Semicolons, spaces around a column name and a legacy encoding used to be 'the header must keep the
    columns' or 'not a text CSV file'; the empty ',,,,' rows a spreadsheet leaves are accepted."""
    from hwnas.predictors.measure.plan import PlanError, read_plan

    d, space, archs = plan_dir
    rows = fill_plan(d / "plan.csv", [f"{space.macs(a) / 1e9 / 30 * 1e3:.3f}" for a in archs])
    text = (d / "plan.csv").read_text()
    (d / "plan.csv").write_text(text + ",,,,\n,,,,\n")
    assert len(read_plan(d / "plan.csv")[1]) == len(rows)
    for bad, message in ((text.replace(",", ";"), "separated by semicolons: save it with commas"),
                         (text.replace("id,", "id ,", 1), "a column name has spaces around it: 'id '")):
        (d / "plan.csv").write_text(bad)
        with pytest.raises(PlanError, match=message):
            read_plan(d / "plan.csv")
    (d / "plan.csv").write_bytes(text.replace("arch", "arch", 1).encode("utf-8") + "# é\n".encode("latin-1"))
    with pytest.raises(PlanError, match=r"is not UTF-8 text .* save it as 'CSV UTF-8'"):
        read_plan(d / "plan.csv")


def test_adapted_latency_takes_a_filled_plan(plan_dir, data_dir):
    from hwnas.predictors.adapt import AdaptedLatency

    d, space, archs = plan_dir
    y = [space.macs(a) / 1e9 * 20 for a in archs]
    fill_plan(d / "plan.csv", [repr(v) for v in y])
    lat = AdaptedLatency(space, proxy="ofa_mbv3", proxy_device="2080ti_1", target_samples=str(d / "plan.csv"),
                         target_device="npu", k=None, mirror=str(data_dir))
    assert lat.sample_archs == archs and np.allclose(lat.sample_latencies, y)
    assert np.all(np.isfinite(lat.predict(space.sample(5, 1))))
    # another device name: the plan's own (plan.json) and the fix, not "is not a column of plan.csv"
    from hwnas.predictors.adapt import AdaptationError

    with pytest.raises(AdaptationError, match=r"the plan .* was made for device 'npu' .*latency.target_device=npu"):
        AdaptedLatency(space, proxy="ofa_mbv3", proxy_device="2080ti_1", target_samples=str(d / "plan.csv"),
                       target_device="my-npu", k=None, mirror=str(data_dir))


@pytest.mark.slow
def test_cli_plan_writes_models_that_run(tmp_path, capsys):
    import onnxruntime as ort
    import torch

    from hwnas.predictors.measure.cli import main

    out = tmp_path / "plan"
    assert main(["--plan", "2", "--space", "ofa_mbv3_w12", "--resolutions", "160", "--pool", "50", "--device", "npu",
                 "--out", str(out)]) == 0
    assert "fill the latency_ms column" in capsys.readouterr().err
    import csv

    rows = list(csv.DictReader(open(out / "plan.csv")))
    assert len(rows) == 2 and all(r["latency_ms"] == "" and r["input_shape"] == "1x3x160x160" for r in rows)
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    for r in rows:
        sess = ort.InferenceSession(str(out / r["onnx"]), providers=["CPUExecutionProvider"])
        a = sess.run(None, {"input": x})[0]
        b = torch.jit.load(str(out / r["torchscript"]))(torch.from_numpy(x)).detach().numpy()
        assert a.shape == (1, 1000) and np.allclose(a, b, atol=1e-4)
    fill_plan(out / "plan.csv", ["5.0", "6.0"])  # a filled plan is never overwritten
    with pytest.raises(SystemExit):
        main(["--plan", "2", "--space", "ofa_mbv3_w12", "--resolutions", "160", "--pool", "50", "--out", str(out)])
    assert "already holds measured latencies" in capsys.readouterr().err


def test_a_plan_of_another_space_is_refused_by_the_pipeline_naming_the_fix(plan_dir):
    """hwnas-measure --plan's default resolutions (128..224 step 4) against the pipeline's OFA preset (160..224):
    the error named neither the plan nor the fix ('r=144 is not allowed'); the instructions' pipeline line
    lacked target.device."""
    from hwnas.predictors.measure.plan import PlanError, PlanLatency

    d, space, archs = plan_dir
    fill_plan(d / "plan.csv", lambda r: "2.5")
    assert "target=plan target.plan=" in (d / "INSTRUCTIONS.md").read_text()
    assert "target.device=npu" in (d / "INSTRUCTIONS.md").read_text()
    pipeline_space = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    if all(a.r in pipeline_space.resolutions for a in archs):
        pytest.skip("every planned arch happens to be at a resolution of the pipeline's space")
    with pytest.raises(PlanError) as e:
        PlanLatency(pipeline_space, d / "plan.csv", device="npu")
    msg = str(e.value)
    assert str(d / "plan.csv") in msg and "is not in this run's space" in msg
    assert "--resolutions 160 176 192 208 224" in msg and "target=plan target.device=npu" in msg


def test_the_plans_json_given_as_samples_names_the_csv(plan_dir):
    from hwnas.predictors.data import DatasetError, load_dataset

    d, space, archs = plan_dir
    with pytest.raises(DatasetError, match=r"is the plan's settings file; give the filled table, .*plan\.csv"):
        load_dataset(d / "plan.json", space=space, field="latency.target_samples")


def test_the_scheduler_advice_names_the_port_given():
    from hwnas.predictors.measure.remote import scheduler_command

    assert scheduler_command("tcp://host:8786") == "dask scheduler"
    assert scheduler_command("tcp://127.0.0.1:18799") == "dask scheduler --port 18799"


def test_a_run_that_stores_nothing_gives_the_device_name_back(tmp_path, capsys):
    """A typo in --scheduler used to bind the device name to that run's protocol for good."""
    from hwnas.predictors.measure.cli import main

    store = tmp_path / "m.sqlite"
    with pytest.raises(SystemExit) as e:
        main(["-n", "2", "--device", "x", "--scheduler", "tcp://127.0.0.1:1", "--wait", "1", "--store", str(store), "--no-progress"])
    assert e.value.code == 2 and "cannot connect" in capsys.readouterr().err
    assert "x" not in MeasurementStore(store).devices()


def test_building_models_leaves_the_callers_random_stream_alone(tiny_space):
    """measure_archs, the plan writer and MLPLatencyPredictor.fit seeded torch's global generator: after them the
    caller's stream was the same whatever seed the caller had set."""
    import torch

    from hwnas.predictors.measure.models import arch_model, layer_model, tiny_cnn
    from hwnas.predictors.mlp import MLPLatencyPredictor
    from hwnas.spaces.io import space_spec

    a = tiny_space.sample(3, 0)
    layer = tiny_space.layers(a[0])[1]
    calls = [lambda: tiny_cnn(seed=3), lambda: arch_model(space_spec(tiny_space), a[0].to_dict(), seed=3),
             lambda: layer_model({k: getattr(layer, k) for k in layer.__dataclass_fields__}, seed=3),
             lambda: MLPLatencyPredictor(tiny_space, seed=3).fit(a, [1.0, 2.0, 3.0], epochs=1)]
    for call in calls:
        torch.manual_seed(99)
        want = torch.rand(3)
        torch.manual_seed(99)
        call()
        assert torch.equal(torch.rand(3), want)
    # and what they build is still fixed by their own seed
    w1, w2 = tiny_cnn(seed=3)[0].state_dict(), tiny_cnn(seed=3)[0].state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
