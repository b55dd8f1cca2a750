"""Every shipped config composes, and every `_target_` in it names an importable object."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_object
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("space", "accuracy", "latency")}


def _targets(node):
    if OmegaConf.is_dict(node):
        for k, v in node.items_ex(resolve=False):
            if k == "_target_" and isinstance(v, str) and not OmegaConf.is_missing(node, k):
                yield v
            else:
                yield from _targets(v)
    elif OmegaConf.is_list(node):
        for v in node:
            yield from _targets(v)


@pytest.mark.parametrize("group,choice", [(g, c) for g, cs in GROUPS.items() for c in cs])
def test_config_choice_composes_and_targets_import(group, choice):
    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        cfg = compose("config", overrides=[f"{group}={choice}"])
    targets = list(_targets(cfg[group]))
    if choice != "custom":
        assert targets, f"{group}={choice} has no _target_"
    for t in targets:
        assert callable(get_object(t)), t


def test_measured_latency_config_builds_a_predictor(tmp_path):
    from hydra.utils import instantiate

    from hwnas.spaces import create_space

    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        cfg = compose("config", overrides=["latency=measured", f"latency.store={tmp_path / 'm.sqlite'}"])
    space = create_space("ofa_mbv3_w12")
    pred = instantiate(cfg.latency, space=space)
    assert type(pred).__name__ == "MeasuredLatency"
    assert (tmp_path / "m.sqlite").exists()
    # a remote device is measured as slowly or slower: the same cap on new archs (it had none: 100 x 40 + refinement)
    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        remote = compose("config", overrides=["latency=measured_remote"])
    assert remote.search == cfg.search and remote.search.max_evals == 120


def test_latency_adapted_on_a_space_without_resolutions(tmp_path, data_dir):
    """latency=adapted on nasbench201 (your own device's numbers in a CSV): its OFA resolutions are not set on a space
    that has none (it was refused as 'takes no options')."""
    import subprocess
    import sys

    from hwnas.predictors.data import load_dataset

    from _pipeline_helpers import cli_env

    ds = load_dataset("nasbench201", mirror=data_dir)
    ds.subset(list(range(0, 2000, 100))).select_devices(["titan_rtx_1"]).to_csv(tmp_path / "mine.csv")
    p = subprocess.run([sys.executable, "-m", "hwnas.search", "space=nasbench201", "accuracy=capacity", "latency=adapted",
                        "latency.proxy=nasbench201", "latency.proxy_device=pixel3", f"latency.target_samples={tmp_path / 'mine.csv'}",
                        "latency.target_device=titan_rtx_1", "search.pop_size=16", "search.n_gen=2", "search.refine.passes=1",
                        f"assets.mirror={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    assert json.loads((tmp_path / "run" / "pareto.json").read_text())["values"]["latency"]["device"] == "titan_rtx_1"


PRIMARY = (["config", "profile/default"] + sorted(p.stem for p in CONF.glob("pipeline*.yaml") if p.stem != "pipeline_base")
           + [f"train/{p.stem}" for p in CONF.glob("train/*.yaml") if p.stem != "base"])


@pytest.mark.parametrize("primary", PRIMARY)
def test_every_command_config_finds_reduced_spaces_in_the_user_config_folder(primary, tmp_path, monkeypatch):
    """hwnas-profile writes space/reduced_<device>.yaml into the user config folder; hydra reads
    hydra.searchpath from the primary config only, so each config a command is run with names it."""
    from hydra import initialize_config_dir

    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "reduced_mydev.yaml").write_text(
        (CONF / "space" / "ofa_mbv3_w12.yaml").read_text().replace("name: ofa_mbv3_w12", "name: reduced_mydev"))
    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path))
    folder, name = primary.rsplit("/", 1) if primary.startswith("train/") else ("", primary)
    init = (initialize_config_dir(config_dir=str(CONF / folder), version_base=None) if folder  # hwnas-train's config root
            else initialize_config_module(config_module="hwnas.conf", version_base=None))
    with init:
        cfg = compose(name, overrides=["space=reduced_mydev"], return_hydra_config=True)
    assert cfg.space.name == "reduced_mydev"
    # --help lists it (hydra's own listing of config groups leaves out the user folder)
    text = cfg.hydra.help.template
    assert f"user config folder {tmp_path}):\n  space: reduced_mydev\n" in text
    # and only the config groups this command takes (hydra listed every group of hwnas's tree under each command)
    groups = ("space" if primary.startswith("train/") else "space accuracy latency" if primary == "profile/default"
              else "space accuracy latency search evaluator" if primary == "config" else "space accuracy latency target search evaluator")
    listed = text.split("(group=option)\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(":")[0] for line in listed] == groups.split() and "$CONFIG" in text


def test_adapted_presets_budgets_are_only_for_its_own_target():
    """latency=adapted's budgets are the Titan RTX's; with your own device they used to be applied silently."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="hwnas.conf", version_base="1.3"):
        def budgets(*ov):
            cfg = compose(config_name="config", overrides=["latency=adapted", *ov])
            return OmegaConf.to_container(cfg.search, resolve=True)["budgets"]

        assert budgets() == [4.5, 5, 5.5, 6]
        assert budgets("latency.target_samples=plan/plan.csv", "latency.target_device=my-npu") == []
        assert budgets("latency.target_device=titan_xp_64") == []
        assert budgets("latency.target_device=titan_xp_64", "search.budgets=[22,26]") == [22, 26]


def test_a_reduced_space_keeps_its_resolutions_under_a_latency_preset(tmp_path, data_dir):
    """The latency presets set space.resolutions (what their data prices) after the space preset, and replaced a
    reduced space's own resolutions with all of theirs: the reduction was silently undone."""
    import json
    import subprocess
    import sys

    from _pipeline_helpers import cli_env

    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "hwnas.search", "space=reduced_titan_rtx_1", "latency=adapted",
                        "search.pop_size=16", "search.n_gen=2", "search.refine.passes=1", "search.plot=false",
                        f"assets.mirror={data_dir}", f"hydra.run.dir={run}"], cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads((run / "pareto.json").read_text())
    assert data["space"]["options"]["resolutions"] == [156, 224]
    assert {r["arch"]["r"] for r in data["front"]} <= {156, 224}
    # a preset none of whose resolutions the latency prices: one line (the search ran at the latency's own), and
    # one priced of three: searched there, with a warning naming what was dropped
    conf = tmp_path / "conf" / "space"
    conf.mkdir(parents=True)
    for name, res in (("handres", "[128, 144]"), ("part", "[128, 144, 224]")):
        (conf / f"{name}.yaml").write_text(f"_target_: hwnas.spaces.create_space\nname: ofa_mbv3_w12\nresolutions: {res}\n")
    env = cli_env({"HWNAS_CONFIG_DIR": str(tmp_path / "conf")})
    base = [sys.executable, "-m", "hwnas.search", "search.pop_size=16", "search.n_gen=2", "search.refine.passes=1",
            "search.plot=false", "search.budgets=[]", f"assets.mirror={data_dir}"]
    p = subprocess.run(base + ["space=handres", f"hydra.run.dir={tmp_path / 'h'}"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "for resolutions [128, 144]" in p.stderr, p.stderr[-2000:]
    p = subprocess.run(base + ["space=part", f"hydra.run.dir={tmp_path / 'p'}"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "searched at [224]: the latency preset's data prices no [128, 144]" in p.stdout + p.stderr


def test_a_primary_config_of_your_own_builds_on_search_base(tmp_path, data_dir):
    """A user's primary config with `defaults: [config, ...]` failed ('Overriding hydra.searchpath is only
    supported from the primary config'); a copy of the defaults lost the run folder and assets.mirror."""
    import json
    import subprocess
    import sys

    from _pipeline_helpers import cli_env

    (tmp_path / "myconf").mkdir()
    (tmp_path / "myconf" / "myrun.yaml").write_text(
        "defaults: [search_base, {override space: ofa_mbv3_w10}, {override latency: adapted}, _self_]\n"
        "search: {pop_size: 16, n_gen: 2, refine: {passes: 1}, plot: false}\n")
    p = subprocess.run([sys.executable, "-m", "hwnas.search", "--config-dir", str(tmp_path / "myconf"), "--config-name",
                        "myrun", "latency.target_device=titan_xp_1", f"assets.mirror={data_dir}"], cwd=tmp_path,
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "search").glob("ofa_mbv3_w10-*")
    assert json.loads((run / "pareto.json").read_text())["space"]["space"] == "ofa_mbv3_w10"


def test_a_dataset_latency_of_a_reduced_space_is_fitted_on_the_whole_column(data_dir):
    """latency=dataset_linear on space=reduced_<device>: it was fitted on the 3 of 5,000 rows inside the reduced
    space (one arch came out best at every budget); it is fitted in the dataset's own space now."""
    import numpy as np

    from hwnas.predictors.data import load_dataset
    from hwnas.predictors.data.datasets import DatasetLatency, fit_linear
    from hwnas.spaces import create_space

    full = load_dataset("ofa_mbv3", mirror=str(data_dir)).space
    reduced = create_space(full.name, resolutions=[192, 224], depth_choices=[[3, 4]] * 5,
                           block_choices=[["k3e4", "k3e6", "k5e6"]] * 5)
    archs = reduced.sample(50, 0)
    want = fit_linear(full, "ofa_mbv3", "titan_xp_1", mirror=str(data_dir)).predict(archs)
    np.testing.assert_allclose(fit_linear(reduced, "ofa_mbv3", "titan_xp_1", mirror=str(data_dir)).predict(archs), want)
    target = DatasetLatency(reduced, "ofa_mbv3", "titan_xp_1", outside="fit", mirror=str(data_dir))
    held = target.holds(archs)
    np.testing.assert_allclose(target.predict(archs)[~held], want[~held])


def test_an_empty_preset_of_your_own_is_named(tmp_path):
    """An empty or cut user preset gave 'space._target_ is not set', naming no file."""
    import subprocess
    import sys

    from _pipeline_helpers import cli_env

    (tmp_path / "conf" / "space").mkdir(parents=True)
    (tmp_path / "conf" / "space" / "empty.yaml").write_text("")
    p = subprocess.run([sys.executable, "-m", "hwnas.search", "space=empty", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                       env=cli_env({"HWNAS_CONFIG_DIR": str(tmp_path / "conf")}), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "space=empty (" in p.stderr and "empty.yaml) sets no _target_" in p.stderr, p.stderr[-1500:]
    p = subprocess.run([sys.executable, "-m", "hwnas.search", "accuracy=custom", f"hydra.run.dir={tmp_path / 'r2'}"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "accuracy._target_ is not set" in p.stderr  # a preset asking for it: as before


def test_plugin_run_folders_are_named_after_the_plugin():
    """space=custom / target=custom: every plug-in's runs shared outputs/.../custom/...; now the registered
    space name, else the class's name (a class path that does not import: still custom, the build says why)."""
    from omegaconf import OmegaConf

    import hwnas.search.cli  # noqa: F401 - registers the run folder's key resolver
    from hwnas.conf import _plugin_label

    space = ["space=custom", "space._target_=hwnas.spaces.restricted.RestrictedSpace"]
    with initialize_config_module(config_module="hwnas.conf", version_base=None):
        run = compose("config", overrides=space, return_hydra_config=True).hydra.run.dir
        pipe = compose("pipeline", overrides=[*space, "target=custom", "target._target_=hwnas.predictors.lut.LookupTableLatency"],
                       return_hydra_config=True)
        pipe_dir = OmegaConf.select(pipe, "hydra.run.dir")
    assert run.startswith("outputs/search/restricted-")
    assert pipe_dir.startswith("outputs/pipeline/restricted/LookupTableLatency/k")
    assert _plugin_label(None, "nope.Missing") == "Missing" and _plugin_label(None, None) == "custom"
    assert _plugin_label(None, "x.Bad name") == "custom" and _plugin_label("mine", "a.B") == "mine"
    assert _plugin_label(None, "a.B", "pi4") == "pi4"


@pytest.mark.parametrize("choice", GROUPS["space"])
def test_a_space_presets_width_mult_example_is_a_width_it_takes(choice):
    """ofa_mbv3_w10/w12.yaml said "e.g. 0.25 for a supernet hwnas-train made narrower", which those spaces refuse
    (OFA-MobileNetV3 has the widths 1.0 and 1.2): every example a preset's width_mult comment gives is built."""
    import re

    from hwnas.spaces import create_space

    text = (CONF / "space" / f"{choice}.yaml").read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("width_mult:") and "#" in ln), None)
    if line is None:  # (no width_mult, or a reduced preset's plain value)
        return
    name = OmegaConf.create(text).name
    examples = [float(v) for v in re.findall(r"\b\d+\.\d+\b", line.split("#", 1)[1])]  # every width the comment names
    assert examples, line
    for w in examples:
        assert create_space(name, width_mult=w).width_mult == w


def test_ofa_mobilenet_widths_name_the_space_that_takes_any():
    from hwnas.spaces import create_space
    from hwnas.spaces.errors import UserError

    with pytest.raises(UserError) as e:
        create_space("ofa_mbv3_w10", width_mult=0.25)
    assert str(e.value) == ("width_mult=0.25 is not allowed (widths of the official OFA-MobileNetV3 supernets; "
                            "ofa_proxyless_w13 takes any, e.g. space=ofa_proxyless_w13 space.width_mult=0.25); "
                            "allowed values: [1.0, 1.2]")


def test_a_user_preset_named_like_a_shipped_one_is_said(tmp_path, monkeypatch):
    """userconf/latency/note10_lut.yaml was listed by --help but silently not used (hydra takes hwnas's own first)."""
    from unittest import mock

    import hwnas.conf as conf

    (tmp_path / "latency").mkdir()
    (tmp_path / "latency" / "note10_lut.yaml").write_text("budgets: [99]\n")
    (tmp_path / "latency" / "mine.yaml").write_text("budgets: [99]\n")
    monkeypatch.setenv("HWNAS_CONFIG_DIR", str(tmp_path))
    with mock.patch.object(conf, "hydra_choice", lambda g: {"latency": "note10_lut", "space": "ofa_mbv3_w12"}.get(g)):
        lines = conf.shadowed_presets()
    assert lines == [f"note: latency=note10_lut is hwnas's own preset ({CONF / 'latency' / 'note10_lut.yaml'}); your "
                     f"{tmp_path / 'latency' / 'note10_lut.yaml'} of the same name is not used: rename it (e.g. latency=my_note10_lut)"]
    with mock.patch.object(conf, "hydra_choice", lambda g: {"latency": "mine"}.get(g)):
        assert conf.shadowed_presets() == []
