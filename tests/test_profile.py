"""Block-friendliness profiling and space reduction (hwnas.search.profile / reduce / profile_cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hwnas.spaces import create_space
from hwnas.search.profile import QUANTILES, profile_genomes, profile_space
from hwnas.search.reduce import (
    ReductionRules,
    load_space_config,
    reduce_space,
    space_yaml,
    write_space_config,
)

N = 48


def _arrays(space, archs):
    if hasattr(archs, "arrays"):
        return archs.arrays
    return space.decode_arrays(space.encode(list(archs)))


class SynLatency:
    """k7 is 3x as expensive as k3 (k5: 1.3x); cost grows with the expand ratio; unit 0 layers are
    the most expensive (high resolution)."""

    def __init__(self, space=None, k7=3.0):
        self.space = space
        self.k7 = k7

    def predict(self, archs):
        sp = self.space
        ks, e, d, r = _arrays(sp, archs)
        active = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        kf = np.where(ks == 7, self.k7, np.where(ks == 5, 1.3, 1.0))
        unit_w = np.array([4.0, 1.0, 1.0, 1.0, 1.0])[sp.slot_unit]
        cost = kf * (e / 3.0) * unit_w
        return 1.0 + (cost * active).sum(1) * (r / 224.0) ** 2


class SynAccuracy:
    """Accuracy grows with expand ratio and with k5 (not k7: no gain from the expensive kernel); unit 0
    layers add nothing."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        sp = self.space
        ks, e, d, r = _arrays(sp, archs)
        active = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        gain = 0.002 * (e - 3) / 3.0 + 0.0015 * (ks == 5)
        gain = np.where(sp.slot_unit[None, :] == 0, 0.0, gain + 0.002)
        return 0.7 + (gain * active).sum(1) + 0.0001 * (r - 160) / 64.0


@pytest.fixture(scope="module")
def space():
    return create_space("ofa_mbv3_w12", resolutions=[160, 224])


@pytest.fixture(scope="module")
def prof(space):
    return profile_space(space, latency={"syn": SynLatency(space)}, accuracy={"acc": SynAccuracy(space)},
                         n_samples=N, seed=3)


def test_k7_is_least_friendly_for_latency_and_dropped(prof, space):
    df = prof.stats()
    blk = df[(df.metric == "syn") & (df.level == "block")]
    assert len(blk) == 20 * 9
    for (u, j), g in blk.groupby(["unit", "layer"]):
        worst3 = set(g.sort_values("friendliness").choice.iloc[:3])
        # k7e6 and k7e4 are always among the three slowest; no k3 block is
        assert {"k7e6", "k7e4"} <= worst3 and not any(c.startswith("k3") for c in worst3)
        f = dict(zip(g.choice, g.friendliness))
        for e in (3, 4, 6):
            assert f[f"k7e{e}"] < f[f"k5e{e}"] < f[f"k3e{e}"]
    acc = df[(df.metric == "acc") & (df.level == "block") & (df.unit > 0)]
    mean_acc = acc.groupby("choice").delta.mean()
    assert mean_acc["k5e6"] > mean_acc["k7e6"] and abs(mean_acc["k7e6"] - mean_acc["k3e6"]) < 1e-9
    for rule in ("front", "hull", "dominance"):
        red = reduce_space(prof, "syn", rules={"rule": rule, "cap_depth": False})
        assert {"k7e3", "k7e4", "k7e6"} <= set(red.dropped_global), (rule, red.describe())
        for bc in red.space.block_choices:
            assert all(k != 7 for k, _ in bc)
            assert (3, 6) in bc or (5, 6) in bc  # the accurate end survives
        assert red.space.depth_choices == space.depth_choices


def test_unit_scope_and_min_blocks(prof):
    red = reduce_space(prof, "syn", rules={"scope": "unit", "min_blocks": 4, "cap_depth": False})
    for u, bc in enumerate(red.space.block_choices):
        assert len(bc) >= 4
        assert (7, 6) not in bc
    # unit 0 layers buy no accuracy: only the cheapest choices are worth keeping there
    assert (3, 3) in red.space.block_choices[0]


def test_depth_cap_where_layers_cost_without_gain(prof):
    red = reduce_space(prof, "syn", rules={"drop_blocks": False})
    assert red.max_depths[0] == 2  # unit 0: 4x cost, zero accuracy
    assert red.max_depths[1:] == [4, 4, 4, 4]
    steps = red.decisions[red.decisions.rule == "depth"]
    assert steps[steps.scope == "u0"].dropped.all()
    assert not steps[steps.scope != "u0"].dropped.any()


def test_fixed_layer_active_in_every_sample_and_common_random_numbers(space):
    G, cells = profile_genomes(space, 40, seed=1)
    ks, e, d, r = space.decode_arrays(G)
    ns = space.n_slots
    by_pos: dict = {}
    n_block = 0
    for level, u, j, c, sl in cells:
        if level != "block":
            continue
        n_block += 1
        k_c, e_c = space.all_block_choices[c]
        slot = int(space.unit_starts[u] + j)
        assert (d[sl, u] >= j + 1).all(), (u, j)
        assert (ks[sl, slot] == k_c).all() and (e[sl, slot] == e_c).all()
        by_pos.setdefault((u, j), []).append(G[sl])
    assert n_block == 20 * 9
    for (u, j), gs in by_pos.items():
        slot = int(space.unit_starts[u] + j)
        others = [np.delete(g, slot, axis=1) for g in gs]
        for o in others[1:]:
            np.testing.assert_array_equal(o, others[0])  # same background for every choice
    # depth conditioning stays uniform over the allowed depths (here d>=3 -> {3,4})
    sl = next(c[4] for c in cells if c[0] == "block" and c[1] == 2 and c[2] == 2)
    G2, cells2 = profile_genomes(space, 4000, seed=2)
    sl2 = next(c[4] for c in cells2 if c[0] == "block" and c[1] == 2 and c[2] == 2)
    dd = space.decode_arrays(G2[sl2])[2][:, 2]
    assert set(np.unique(dd)) == {3, 4} and abs((dd == 3).mean() - 0.5) < 0.04
    assert G[:40, ns:].shape[1] == space.n_var - ns


def test_stats_match_raw_samples_and_csv(prof, space, tmp_path):
    df = prof.stats()
    row = df[(df.metric == "syn") & (df.level == "block") & (df.unit == 2) & (df.layer == 1) & (df.choice == "k5e4")].iloc[0]
    G, cells = profile_genomes(space, N, seed=3)
    c = space.all_block_choices.index((5, 4))
    sl = next(x[4] for x in cells if x[:4] == ("block", 2, 1, c))
    vals = SynLatency(space).predict(space.batch(G[sl]))
    assert row["mean"] == pytest.approx(vals.mean())
    assert row["std"] == pytest.approx(vals.std(ddof=1))
    assert row["q90"] == pytest.approx(np.quantile(vals, 0.9))
    base = df[(df.metric == "syn") & (df.level == "baseline")].iloc[0]
    assert base["mean"] == pytest.approx(SynLatency(space).predict(space.batch(G[:N])).mean())
    # deltas at a position sum to zero (paired vs the position mean)
    g = df[(df.metric == "acc") & (df.level == "block") & (df.unit == 3) & (df.layer == 0)]
    assert abs(g.delta.sum()) < 1e-9
    path = prof.to_csv(tmp_path / "p.csv")
    back = pd.read_csv(path)
    assert list(back.columns[:7]) == ["metric", "kind", "level", "unit", "layer", "slot", "choice"]
    assert {f"q{int(q * 100):02d}" for q in QUANTILES} <= set(back.columns)
    assert len(back) == len(df) == 2 * (1 + 180 + 15 + 2)
    assert set(back.level) == {"baseline", "block", "depth", "resolution"}
    # resolution cells: G0 with the resolution fixed (paired), r224 slower than r160 by the r^2 law
    res = df[(df.metric == "syn") & (df.level == "resolution")].set_index("choice")
    sl = next(x[4] for x in cells if x[0] == "resolution" and x[2] == 1)
    assert res.loc["r224", "mean"] == pytest.approx(SynLatency(space).predict(space.batch(G[sl])).mean())
    assert res.loc["r224", "delta"] > 0 > res.loc["r160", "delta"]


def test_reduced_yaml_loads_back_through_hydra_and_as_data(prof, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    red = reduce_space(prof, "syn", rules={"cap_depth": True}, name="reduced_syn")
    path = write_space_config(red, tmp_path / "conf")
    assert path == tmp_path / "conf" / "space" / "reduced_syn.yaml"
    cfg = OmegaConf.load(path)
    sp = instantiate(cfg)
    assert sp.block_choices == red.space.block_choices
    assert sp.depth_choices == red.space.depth_choices
    for bc in sp.block_choices:
        assert not ({(7, 3), (7, 4), (7, 6)} & set(bc))
    sp2 = load_space_config(path)
    assert sp2.to_config() == red.space.to_config()
    # the reduced space samples only allowed choices
    for a in sp.sample(50, 0):
        assert all(k != 7 for k, _ in sum(a.blocks(), []))
    assert not list(tmp_path.glob("conf/space/*.tmp"))


def test_determinism_with_seed(space):
    kw = dict(latency={"syn": SynLatency(space)}, accuracy={"acc": SynAccuracy(space)}, n_samples=16)
    a, b, c = profile_space(space, seed=7, **kw), profile_space(space, seed=7, **kw), profile_space(space, seed=8, **kw)
    pd.testing.assert_frame_equal(a.stats(), b.stats())
    assert not np.allclose(a.stats()["mean"], c.stats()["mean"])
    assert space_yaml(reduce_space(a, "syn")) == space_yaml(reduce_space(b, "syn"))


def test_clear_errors(prof, space):
    with pytest.raises(ValueError, match="scope"):
        ReductionRules(scope="layer")
    with pytest.raises(ValueError, match="front_tol"):
        ReductionRules(front_tol=-0.1)
    with pytest.raises(ValueError, match="min_resolutions"):
        ReductionRules(min_resolutions=0)
    with pytest.raises(ValueError, match="unknown key"):
        ReductionRules.from_dict({"treshold": 1})
    with pytest.raises(KeyError, match="not profiled"):
        reduce_space(prof, "pixel")
    with pytest.raises(ValueError, match="latency metric"):
        reduce_space(prof, "acc")
    with pytest.raises(ValueError, match="n_samples"):
        profile_space(space, latency={"syn": SynLatency(space)}, n_samples=1)
    with pytest.raises(TypeError, match="predict"):
        profile_space(space, latency={"syn": object()})
    with pytest.raises(ValueError, match="nothing to profile"):
        profile_space(space)
    # a space without blocks to profile: a user error (one line in hwnas-profile; it was a 51-line TypeError traceback)
    from hwnas.spaces import create_space
    from hwnas.spaces.errors import UserError

    nb = create_space("nasbench201")
    with pytest.raises(UserError, match=r"space=nasbench201: hwnas-profile profiles the blocks .*e.g. space=ofa_mbv3_w12"):
        profile_space(nb, latency={"syn": SynLatency(space)})


def test_cli_run_profile_writes_everything_and_search_loads_it(tmp_path, monkeypatch):
    """The reduced spaces go into the run dir and the user config folder ($HWNAS_CONFIG_DIR), never into
    the installed package; hwnas-search then finds space=reduced_<device> with no extra option."""
    import hashlib

    import matplotlib.pyplot as plt
    from hydra import compose, initialize_config_module

    import hwnas.conf
    from hwnas.search.profile_cli import run_profile

    user = tmp_path / "user_conf"
    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(user))
    package = Path(hwnas.conf.__file__).parent
    before = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in package.rglob("*.yaml")}
    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        cfg = compose(config_name="profile/default", overrides=[
            "space.resolutions=[160,224]",
            "latency=custom", "+latency._target_=test_profile.SynLatency", "device=syn",
            "accuracy=custom", "accuracy._target_=test_profile.SynAccuracy",
            "+devices.cheapk7._target_=test_profile.SynLatency", "+devices.cheapk7.k7=0.5",
            "profile.n_samples=16", "profile.progress=false", "reduce.rules.scope=unit",
        ])
    hatched = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (hatched.append(
        sum(p.get_hatch() == "xxx" for ax in fig.axes for p in ax.patches)), real_close(fig)))
    summary = run_profile(cfg, output_dir=tmp_path / "out", log=lambda s: None)
    out = tmp_path / "out"
    for f in ("profile.csv", "summary.json", "heatmap_syn.png", "decisions_syn.csv", "reduced_syn.yaml",
              "heatmap_cheapk7.png", "reduced_cheapk7.yaml"):
        assert (out / f).is_file(), f
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in package.rglob("*.yaml")} == before
    sp = load_space_config(user / "space" / "reduced_syn.yaml")
    assert all((7, 6) not in bc for bc in sp.block_choices)
    assert summary["devices"]["syn"]["max_depths"][0] == 2
    assert summary["n_evaluations"] == 16 * (1 + 180 + 15 + 2)
    # the heatmap hatches, in both panels (latency, accuracy), every dropped (position, choice) cell and
    # every dropped depth; ofa_mbv3_w12 has 4 layers per unit
    syn = summary["devices"]["syn"]
    want = 2 * (sum(4 * len(d) for d in syn["dropped"]) + sum(4 - m for m in syn["max_depths"]))
    assert hatched[0] == want > 0
    # the written space carries the kept resolutions (r224 costs ~2x for +0.01 pts here: it goes)
    assert summary["devices"]["syn"]["resolutions"] == list(sp.resolutions) == [160]
    assert summary["devices"]["syn"]["dropped_resolutions"] == [224]
    # on the second device k7 is cheaper than k3 at equal accuracy: there k3e3 goes and k7e3 stays
    sp2 = load_space_config(user / "space" / "reduced_cheapk7.yaml")
    assert all((7, 3) in bc and (3, 3) not in bc for bc in sp2.block_choices)

    # hwnas-search takes the written space like any other: space=reduced_syn (no hydra.searchpath given)
    from hwnas.search.cli import build

    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        scfg = compose(config_name="config", overrides=[
            "space=reduced_syn",
            "latency=custom", "latency._target_=test_profile.SynLatency",
            "accuracy=custom", "accuracy._target_=test_profile.SynAccuracy",
        ])
    space, acc, lat = build(scfg)
    assert space.block_choices == sp.block_choices and space.depth_choices == sp.depth_choices
    assert space.name == "reduced_syn"


def test_profiling_a_preset_into_itself_is_refused_and_a_replaced_preset_is_said(tmp_path, data_dir):
    """hwnas-profile space=reduced_note10 wrote reduced_note10 again: each rerun reduced it further and lost the record
    of the first reduction. A preset replaced by another reduction was replaced without a word."""
    import subprocess
    import sys

    from _pipeline_helpers import cli_env

    env = cli_env({"HWNAS_CONFIG_DIR": str(tmp_path / "conf")})
    base = [sys.executable, "-m", "hwnas.search.profile_cli", "profile.n_samples=16", "plots=false", f"assets.mirror={data_dir}"]
    p = subprocess.run(base + [f"output_dir={tmp_path / 'a'}"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    preset = tmp_path / "conf" / "space" / "reduced_note10.yaml"
    first = preset.read_text()
    p = subprocess.run(base + ["space=reduced_note10", f"output_dir={tmp_path / 'b'}"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "is the preset this profile would write" in p.stderr and "reduce.name=reduced_note10_2" in p.stderr
    assert preset.read_text() == first
    # the log and .hydra go to output_dir (a dated folder with only them was left for every run given one), and a
    # refused run leaves no folder of its own
    assert (tmp_path / "a" / "hwnas-profile.log").is_file() and not (tmp_path / "outputs").exists()
    p = subprocess.run(base + ["reduce.rules.front_tol=0.2", f"output_dir={tmp_path / 'c'}"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and preset.read_text() != first
    assert "held another reduction" in p.stdout + p.stderr


class SlotLatency:
    """GPU-like: block costs differ by position. k3e3 costs 0.5 at even slots and 1.5 at odd ones (1.0 on
    average, like k3e6), every other choice costs 1.0 + 0.1 x rank; resolution costs nothing."""

    def __init__(self, space=None):
        self.space = space

    def predict(self, archs):
        sp = self.space
        ks, e, d, r = _arrays(sp, archs)
        active = sp.slot_pos[None, :] < d[:, sp.slot_unit]
        even = (np.arange(sp.n_slots) % 2 == 0)[None, :]
        rank = {(3, 3): 0, (3, 4): 2, (3, 6): 0, (5, 3): 3, (5, 4): 4, (5, 6): 5, (7, 3): 6, (7, 4): 7, (7, 6): 8}
        cost = np.ones(ks.shape)
        for (k, ee), rk in rank.items():
            cost = np.where((ks == k) & (e == ee), 1.0 + 0.1 * rk, cost)
        cost = np.where((ks == 3) & (e == 3), np.where(even, 0.5, 1.5), cost)
        return 1.0 + (cost * active).sum(1) + 0.0 * r


def test_front_rule_keeps_position_specific_fastest_choice_and_drops_free_resolutions():
    """The position-averaged rules drop k3e3 (as slow as k3e6 on average, less accurate), although it is
    the fastest choice at half the positions; the front rule keeps it: the fastest networks need it.
    Resolutions that cost nothing and buy less accuracy than r224 go (GPU at batch 1)."""
    sp = create_space("ofa_mbv3_w12", resolutions=[160, 192, 224])
    prof = profile_space(sp, latency={"gpu": SlotLatency(sp)}, accuracy={"acc": SynAccuracy(sp)}, n_samples=16, seed=0)
    for rule in ("hull", "dominance"):
        red = reduce_space(prof, "gpu", rules={"rule": rule, "cap_depth": False})
        assert "k3e3" in red.dropped_global, (rule, red.describe())
    red = reduce_space(prof, "gpu", rules={"cap_depth": False})
    assert red.rules.rule == "front"
    assert all((3, 3) in bc for bc in red.space.block_choices), red.describe()
    assert red.resolutions == [224] and red.dropped_resolutions == [160, 192]
    assert red.space.resolutions == [224]
    assert 0 <= red.front_loss <= red.rules.front_tol
    # the fastest network of the full space (k3e3 at even slots, k3e6 at odd ones, depth 2) is in the
    # reduced space: same predicted latency
    lat = SlotLatency(sp)
    ks = [3] * 20
    es = [3 if i % 2 == 0 else 6 for i in range(20)]
    fastest = sp.validate({"ks": ks, "e": es, "d": [2] * 5, "r": 224})
    assert red.space.validate(fastest.to_dict()) is not None
    full_min = lat.predict([fastest])[0]
    assert full_min <= lat.predict(sp.sample(500, 0)).min() + 1e-9
    # the decision table has one row per candidate with its front loss
    blk = red.decisions[red.decisions.rule == "block"]
    assert set(blk.choice) == set(prof.pair_names)
    assert (blk[blk.dropped].gap <= red.rules.front_tol + 1e-12).all()
    assert blk.set_index("choice").loc["k3e3", "gap"] > red.rules.front_tol
    res = red.decisions[red.decisions.rule == "resolution"].set_index("choice")
    assert bool(res.loc["r160", "dropped"]) and not bool(res.loc["r224", "dropped"])
    # no tolerance: nothing on the front may go; resolutions can be switched off
    red0 = reduce_space(prof, "gpu", rules={"front_tol": 0.0, "drop_resolutions": False, "cap_depth": False})
    assert red0.space.resolutions == [160, 192, 224] and red0.front_loss <= 1e-12


def test_note10_tables_reproduce_mills_reduction(data_dir):
    """With the official Note10 tables and OFA predictor the default (front) rule drops e3k7 and e4k7
    and caps unit 0 at 3 layers, like Mills et al.'s published Note10 space; here k5e3 goes too, and
    every resolution stays (each is on the front)."""
    from hwnas.predictors.lut import LookupTableLatency
    from hwnas.predictors.ofa_accuracy import OFAAccuracyPredictor

    sp = create_space("ofa_mbv3_w12", resolutions=[160, 176, 192, 208, 224])
    prof = profile_space(sp, latency={"note10": LookupTableLatency(sp)}, accuracy={"ofa": OFAAccuracyPredictor()},
                         n_samples=64, seed=0)
    red = reduce_space(prof, "note10")
    assert {"k7e3", "k7e4"} <= set(red.dropped_global)
    assert set(red.dropped_global) == {"k5e3", "k7e3", "k7e4"}
    assert red.max_depths == [3, 4, 4, 4, 4]
    assert red.space.resolutions == [160, 176, 192, 208, 224]
    # the fastest (k3e3) and the most accurate choices (k5e6, k7e6) are kept
    assert {(3, 3), (5, 6), (7, 6)} <= set(red.space.block_choices[0])
    # the position-averaged hull rule also drops k7e6 (the most accurate choice at some positions)
    assert set(reduce_space(prof, "note10", rules={"rule": "hull"}).dropped_global) == {"k5e3", "k7e3", "k7e4", "k7e6"}
    # the plain frontier rule with a tight tolerance keeps k7e6 (most accurate choice)
    red2 = reduce_space(prof, "note10", rules={"accuracy_tol": 0.0, "rule": "hull", "latency_tol": 0.0})
    assert "k7e6" not in red2.dropped_global and {"k7e3", "k7e4"} <= set(red2.dropped_global)


def test_srcc_heatmap_labels_never_round_up_to_one():
    """0.995-0.999 used to print as ".00" (the "1.00" of rounding, minus its first character)."""
    from hwnas.predictors.monotonicity import cell_label

    assert [cell_label(v) for v in (0.5, 0.994, 0.996, 0.9996, 1.0, -0.123, 0.0)] == [
        ".50", ".99", ".996", ">.999", "1", "-.12", ".00"]


def test_agreed_reduction_drops_only_what_both_drop(space):
    """The pipeline's reduction under an adapted latency and its proxy: a choice, depth or resolution
    goes only when both reductions drop it; the space keeps the union, in the original order."""
    from hwnas.search.reduce import agreed_reduction

    prof2 = profile_space(space, latency={"adapted": SynLatency(space), "proxy": SynLatency(space, k7=1.0)},
                          accuracy={"acc": SynAccuracy(space)}, n_samples=N, seed=3)
    rules = {"scope": "unit", "cap_depth": True}
    a, p = reduce_space(prof2, "adapted", "acc", rules=rules), reduce_space(prof2, "proxy", "acc", rules=rules)
    both = agreed_reduction(space, a, p)
    assert any(set(x) != set(y) for x, y in zip(a.dropped, p.dropped))  # the two disagree somewhere
    for u in range(len(space.block_choices)):
        assert set(both.dropped[u]) == set(a.dropped[u]) & set(p.dropped[u])
        kept = set(a.block_choices[u]) | set(p.block_choices[u])
        assert both.space.block_choices[u] == [b for b in space.block_choices[u] if b in kept]
        assert set(both.space.depth_choices[u]) == set(a.depth_choices[u]) | set(p.depth_choices[u])
    assert set(both.space.resolutions) == set(a.resolutions) | set(p.resolutions)
    assert both.dropped_resolutions == [r for r in space.resolutions if r not in both.space.resolutions]
    # agreeing with itself changes nothing
    same = agreed_reduction(space, a, a)
    assert same.space.block_choices == a.space.block_choices and same.space.depth_choices == a.space.depth_choices


def test_custom_accuracy_and_custom_latency_profile_without_naming_a_device(tmp_path, monkeypatch):
    """hwnas-profile accuracy=custom latency=custom (the natural plug-in call) named both metrics 'custom' and
    stopped with a ValueError traceback; the accuracy is now called 'accuracy' and the device 'custom'."""
    from hydra import compose, initialize_config_module

    from hwnas.search.profile_cli import run_profile

    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path / "user_conf"))
    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        cfg = compose(config_name="profile/default", overrides=[
            "space.resolutions=[160,224]", "latency=custom", "+latency._target_=test_profile.SynLatency",
            "accuracy=custom", "accuracy._target_=test_profile.SynAccuracy", "profile.n_samples=8",
            "profile.progress=false"])
    summary = run_profile(cfg, output_dir=tmp_path / "out", device="custom", accuracy_name="custom", log=lambda s: None)
    assert list(summary["devices"]) == ["custom"]
    import csv

    with open(tmp_path / "out" / "profile.csv", newline="") as f:
        metrics = {r["metric"] for r in csv.DictReader(f)}
    assert metrics == {"custom", "accuracy"} and (tmp_path / "user_conf" / "space" / "reduced_custom.yaml").is_file()


def test_profile_of_an_adapted_latency_is_named_after_its_target_device(tmp_path, data_dir):
    """hwnas-profile latency=adapted named every device 'adapted': a second device's reduction replaced the first's
    reduced_adapted.yaml. The device is now latency.target_device."""
    import subprocess
    import sys

    from _pipeline_helpers import cli_env

    for dev in ("titan_xp_1", "2080ti_1"):
        p = subprocess.run([sys.executable, "-m", "hwnas.search.profile_cli", "latency=adapted", f"latency.target_device={dev}",
                            "profile.n_samples=8", "profile.progress=false", f"assets.mirror={data_dir}",
                            f"hydra.run.dir={tmp_path / dev}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=cli_env({"HWNAS_CONFIG_DIR": str(tmp_path / "conf")}))
        assert p.returncode == 0, p.stderr[-2000:]
        # the printed search command carries the device's latency settings (it searched with Note10's)
        assert f"(use: hwnas-search space=reduced_{dev} latency=adapted latency.target_device={dev} assets.mirror=" \
            in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]
    assert sorted(f.name for f in (tmp_path / "conf" / "space").glob("*.yaml")) == ["reduced_2080ti_1.yaml", "reduced_titan_xp_1.yaml"]


def test_the_use_line_names_a_config_folder_of_its_own(tmp_path, monkeypatch):
    """With reduce.conf_dir=<dir> the printed `hwnas-search space=<name>` could not find the preset."""
    from types import SimpleNamespace

    from hwnas.search.profile_cli import use_line

    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path / "user"))
    red = SimpleNamespace(dropped_resolutions=[])
    assert use_line("x", red, True, [], tmp_path / "user") == "hwnas-search space=x"
    assert use_line("x", red, True, [], tmp_path / "other") == f"HWNAS_CONFIG_DIR={(tmp_path / 'other').resolve()} hwnas-search space=x"
