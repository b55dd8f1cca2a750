"""Spaces in files are data: a registered name plus plain options, rebuilt through the registry."""

from __future__ import annotations

import json

import pytest

from hwnas.spaces import SpaceError, create_space, list_spaces
from hwnas.spaces.io import arch_key, space_from_spec, space_spec


@pytest.mark.parametrize("name", list_spaces())
def test_every_registered_space_round_trips_as_data(name):
    space = create_space(name)
    spec = json.loads(json.dumps(space_spec(space)))
    back = space_from_spec(spec, "x.json")
    assert back.to_config() == space.to_config() and back.name == space.name
    a = space.sample(3, rng=0)
    assert [arch_key(back, x) for x in a] == [arch_key(space, x) for x in a]


def test_restricted_options_survive():
    space = create_space("ofa_mbv3_w12", resolutions=[160, 224], depth_choices=[3, 4])
    back = space_from_spec(space_spec(space))
    assert back.resolutions == [160, 224] and back.to_config() == space.to_config()


def test_arch_key_is_one_identity_for_equal_networks():
    space = create_space("ofa_mbv3_w12")
    a = space.validate({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224})
    b = space.validate({"ks": [3, 3, 7, 7] * 5, "e": [3, 3, 6, 6] * 5, "d": [2] * 5, "r": 224})  # inactive slots differ
    assert arch_key(space, a) == arch_key(space, b)


def test_a_crafted_target_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    spec = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    with pytest.raises(SpaceError, match=r"run.json: .*class to build"):
        space_from_spec(spec, "run.json")
    nested = {"space": "ofa_mbv3_w12", "options": {"resolutions": {"_target_": "os.system", "command": f"touch {marker}"}}}
    with pytest.raises(SpaceError, match="run.json: options.resolutions has the key '_target_'"):
        space_from_spec(nested, "run.json")
    assert not marker.exists()


def test_legacy_hwnas_targets_still_load():
    space = create_space("ofa_mbv3_w12", resolutions=[192])
    back = space_from_spec(space.to_config(), "old.json")
    assert back.to_config() == space.to_config()
    assert space_from_spec({"_target_": "hwnas.spaces.nasbench201.NASBench201Space"}).name == "nasbench201"


@pytest.mark.parametrize("spec,msg", [
    (5, "must be an object"),
    ({"space": "nope"}, "not a registered space"),
    ({"space": "ofa_mbv3_w12", "options": {"resolutions": [float("nan")]}}, "finite"),
    ({"space": "ofa_mbv3_w12", "options": {"bogus": 1}}, "does not take these options"),
    ({"space": "ofa_mbv3_w12", "extra": 1}, "unknown space keys"),
])
def test_bad_specs_name_the_file(spec, msg):
    with pytest.raises(SpaceError, match=msg) as e:
        space_from_spec(spec, "f.json")
    assert str(e.value).startswith("f.json: ")


def test_a_space_built_from_a_config_target_is_saved_under_its_family(tmp_path):
    """Reduced spaces come from ``_target_: hwnas.spaces.mbconv.OFAMobileNetV3Space`` with a display name."""
    from hwnas.spaces.mbconv import OFAMobileNetV3Space

    space = OFAMobileNetV3Space(width_mult=1.2, name="reduced_note10", depth_choices=[2, 3])
    spec = space_spec(space)
    assert spec["space"] == "ofa_mbv3_w12" and spec["options"]["name"] == "reduced_note10"
    back = space_from_spec(spec)
    assert back.name == "reduced_note10" and back.to_config() == space.to_config()


def test_a_results_file_of_an_unregistered_space_says_so(caplog):
    """A space of one's own that was not registered: its pareto.json holds {"space": null, "name": ...}; reading it
    said 'unknown space keys ['name']', blaming a format hwnas itself wrote. The search now warns when it writes."""
    from hwnas.search.results import space_block
    from hwnas.spaces import SpaceError
    from hwnas.spaces.io import space_from_spec

    class Unregistered:
        name = "mine"

        def to_config(self):
            return {}

    with caplog.at_level("WARNING", logger="hwnas.search"):
        block = space_block(Unregistered())
    assert block == {"space": None, "name": "mine"} and any("is not registered" in r.getMessage() for r in caplog.records)
    with pytest.raises(SpaceError, match=r"its space 'mine' was not registered when the file was written.*--space"):
        space_from_spec(block, "pareto.json")


def test_register_space_takes_a_name_and_a_rerun_of_the_same_module():
    """register_space(5) poisoned the registry (every 'unknown space' error then raised a TypeError), and reloading
    the module of a space of one's own (a notebook cell run twice) was 'registered twice'."""
    from hwnas.spaces import SpaceError, list_spaces, register_space
    from hwnas.spaces.base import _REGISTRY

    with pytest.raises(SpaceError, match="the name must be a non-empty string"):
        register_space(5)
    try:
        def factory(**kw):
            return None

        register_space("tmp_twice")(factory)
        register_space("tmp_twice")(factory)  # the same factory again: fine

        def other(**kw):
            return None

        with pytest.raises(SpaceError, match="registered twice: by .*factory and by .*other"):
            register_space("tmp_twice")(other)
        assert "tmp_twice" in list_spaces()
    finally:
        _REGISTRY.pop("tmp_twice", None)


def test_space_options_are_checked_not_replaced():
    """resolutions=[] silently became the defaults, resolutions="160" said 'contains 0', and a misspelt option was a
    raw TypeError."""
    from hwnas.spaces import SpaceError, create_space

    with pytest.raises(SpaceError, match="resolutions is empty"):
        create_space("ofa_mbv3_w12", resolutions=[])
    with pytest.raises(SpaceError, match=r"resolutions='160' must be a list of integers, e.g. resolutions=\[160, 224\]"):
        create_space("ofa_mbv3_w12", resolutions="160")
    with pytest.raises(SpaceError, match=r"resolution=\[160\] is not an option of space ofa_mbv3_w12; its options: .*'resolutions'"):
        create_space("ofa_mbv3_w12", resolution=[160])
