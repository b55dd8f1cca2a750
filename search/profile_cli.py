"""``hwnas-profile``: profile a space on one or more devices, reduce it per device, write everything.

    hwnas-profile assets.mirror=../shared/data
    hwnas-profile profile.n_samples=512 reduce.rules.scope=unit
    hwnas-search space=reduced_note10 ...

Writes into the run directory (``output_dir=...`` or hydra's run dir): ``profile.csv`` (all
statistics), ``summary.json`` (cost, decisions, and the settings of the profile: a folder holding a
profile of other settings is refused, ``overwrite=true`` replaces it), ``profile_settings.json`` (the
settings again, written before any other file: a run killed before ``summary.json`` is run again by the
same command), per device ``heatmap_<device>.png`` (dropped choices
hatched), ``decisions_<device>.csv`` and ``reduced_<device>.yaml``. The reduced space configs also go
(atomically) to ``<reduce.conf_dir>/space/`` — by default the user config folder
(:func:`hwnas.conf.user_config_dir`), which the commands' configs put on hydra's search path — so
``hwnas-search space=reduced_<device>`` finds them. Nothing is written into the installed package.
Space and predictors are built by :mod:`hwnas.predictors.build`, as in ``hwnas-search``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hwnas.predictors.assets import atomic_write, remove_stale_temps
from hwnas.predictors.build import ConfigError, apply_assets, build_predictor, build_space, instantiate_node, plain
from hwnas.predictors.fingerprint import differences
from hwnas.spaces.checks import check_bool
from hwnas.spaces.errors import check_section, run_hydra, writable_dir

from .profile import ProfileError, check_profile_args, profile_space
from .reduce import ReductionRules, RulesError, _slug, reduce_space, space_yaml, write_space_config

CONF_MODULE = "hwnas.conf"
CONFIG_NAME = "profile/default"


def _shipped_space(name: str) -> Path | None:
    """hwnas's own ``space/<name>.yaml``, which hydra finds before the user's config folder."""
    import hwnas.conf

    p = Path(hwnas.conf.__file__).resolve().parent / "space" / f"{name}.yaml"
    return p if p.is_file() else None


def device_name_from_choice(choice: str | None) -> str:
    """``note10_lut`` -> ``note10`` (the latency config's name, without a ``_lut`` suffix)."""
    if not choice:
        return "device"
    return choice[:-4] if choice.endswith("_lut") else choice


def reduction_rules(node: Any, field: str = "reduce.rules") -> ReductionRules:
    """``reduce.rules`` (a mapping of :class:`~hwnas.search.reduce.ReductionRules` fields, or null) checked;
    a wrong one is one :class:`ConfigError` naming the field and the allowed keys or values."""
    if node is not None and not isinstance(node, dict):
        raise ConfigError(f"{field}={node!r} is not a mapping; write e.g. {field}.scope=unit (allowed keys: "
                          f"{sorted(ReductionRules.__dataclass_fields__)})")
    try:
        return ReductionRules.from_dict(node or {})
    except RulesError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    except TypeError as exc:  # a value of the wrong kind the dataclass itself trips over
        raise ConfigError(f"{field}: {exc}; see hwnas.search.reduce.ReductionRules for the fields") from None


#: the keys of the ``profile`` and ``reduce`` sections (conf/profile/default.yaml)
PROFILE_KEYS = ("n_samples", "seed", "depth_profiles", "resolution_profiles", "batch_size", "progress")
REDUCE_KEYS = ("enabled", "name", "conf_dir", "rules")
#: a reduced space's name: a file name in the config folder, nothing that leaves it or hides
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
#: settings that do not change what a profile holds: where it goes, what it shows while running
_RUN_ONLY = ("output_dir", "overwrite", "plots", "assets", "hydra")
#: the settings of the profile in a folder, written before its first output (summary.json, written last,
#: records them too): a run killed in between is recognised, and the same command runs it again
SETTINGS_FILE = "profile_settings.json"
#: what a profile writes into its folder (besides <reduce.name>.yaml per device)
_OUTPUTS = ("profile.csv", "summary.json", "heatmap_*.png", "decisions_*.csv", SETTINGS_FILE)


def _section(node: Any, field: str, known: tuple[str, ...]) -> dict:
    return check_section(node, field, known, ConfigError)


def _flag(v: Any, field: str) -> bool:
    return check_bool(v, field, error=ConfigError)


def space_config_name(pattern: Any, device: str, field: str = "reduce.name") -> str:
    """``reduce.name`` for one device (``{device}`` -> its slug), checked: a file name of letters, digits,
    ``_``, ``.`` and ``-`` not starting with ``.`` (no folder, nothing outside the config folder)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"{field}={pattern!r} is not a name; give e.g. '{field}=\"reduced_{{device}}\"' (quoted: hydra reads braces otherwise)")
    try:
        name = pattern.format(device=_slug(device))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{field}={pattern!r} cannot be filled in ({type(exc).__name__}: {exc}); the only "
                          f"placeholder is {{device}}, e.g. '{field}=\"reduced_{{device}}\"'") from None
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{field}={pattern!r} gives the name {name!r}; a space name is letters, digits, '_', '.' "
                          f"and '-', not starting with '.' (no folders); e.g. '{field}=\"reduced_{{device}}\"'")
    return name


def check_settings(cfg: dict) -> None:
    """The settings of ``hwnas-profile`` that need no predictor checked before anything is built, read or
    written; a wrong one is one :class:`ConfigError` naming it and the fix."""
    pc = _section(cfg.get("profile"), "profile", PROFILE_KEYS)
    try:
        check_profile_args(pc.get("n_samples", 256), pc.get("seed", 0), pc.get("batch_size", 16384), prefix="profile.")
    except ProfileError as exc:
        raise ConfigError(str(exc)) from None
    for k in ("depth_profiles", "resolution_profiles", "progress"):
        _flag(pc.get(k, True), f"profile.{k}")
    rc = _section(cfg.get("reduce"), "reduce", REDUCE_KEYS)
    _flag(rc.get("enabled", True), "reduce.enabled")
    space_config_name(rc.get("name", "reduced_{device}"), "device")
    _flag(cfg.get("plots", True), "plots")
    _flag(cfg.get("overwrite", False), "overwrite")
    devices = cfg.get("devices")
    if devices is not None and not isinstance(devices, dict):
        raise ConfigError(f"devices={devices!r} is not a mapping; add a device with "
                          "+devices.<name>._target_=<predictor class> (or leave devices={})")
    for k, v in (devices or {}).items():
        if not isinstance(v, dict):
            raise ConfigError(f"devices.{k}={v!r} is not a predictor config; give devices.{k}._target_=<predictor class>")
    for k in ("device", "output_dir"):
        v = cfg.get(k)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{k}={v!r} must be a name (or null)")


def use_line(name: str, red: Any, main_device: bool, overrides: Sequence[str], conf_dir: Path | None = None) -> str:
    """The hwnas-search command for a reduced space: with the profile's own latency and accuracy settings
    for the device of ``latency`` (a preset of those may set ``space.resolutions``, which would undo a
    reduction of the resolutions: they are given explicitly then); with ``HWNAS_CONFIG_DIR=`` when the preset
    went to another folder than the user config folder (``reduce.conf_dir``)."""
    from hwnas.conf import user_config_dir

    env = ""
    if conf_dir is not None and Path(conf_dir).resolve() != user_config_dir():
        env = f"HWNAS_CONFIG_DIR={Path(conf_dir).resolve()} "
    parts = [f"{env}hwnas-search space={name}"]
    if main_device:
        parts += [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] in ("latency", "accuracy", "assets")]
    if getattr(red, "dropped_resolutions", None):
        parts.append(f"space.resolutions=[{','.join(map(str, red.resolutions))}]")
    return " ".join(parts)


def profile_settings(cfg: dict, device: str | None, accuracy_name: str | None) -> dict:
    """What decides a profile's files, as plain JSON data: every setting but where it is written and how
    it runs (``profile.progress``, ``profile.batch_size``, ``reduce.conf_dir``, plots, asset folders)."""
    out = {k: v for k, v in cfg.items() if k not in _RUN_ONLY}
    out["profile"] = {k: v for k, v in dict(cfg.get("profile") or {}).items() if k not in ("progress", "batch_size")}
    out["reduce"] = {k: v for k, v in dict(cfg.get("reduce") or {}).items() if k != "conf_dir"}
    out["names"] = {"device": device, "accuracy": accuracy_name}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def _recorded_settings(path: Path) -> dict | None:
    """The ``settings`` that ``path`` (summary.json or profile_settings.json) records; None if unreadable."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, dict) else None


def check_output_dir(out: Path, settings: dict, overwrite: bool, conf_space: Path | None = None) -> None:
    """Refuse a folder that holds a profile of other settings (or of unrecorded ones): its profile.csv and
    summary.json would be silently replaced. The same settings profile again (the same files, the same
    numbers) -- also after a run killed before it wrote summary.json (its settings are in
    profile_settings.json, written before any output); ``overwrite=true`` removes the earlier profile's
    files first, its reduced space configs in the folder included (not those of ``conf_space``)."""
    summary, csv = out / "summary.json", out / "profile.csv"
    if not summary.exists() and not csv.exists():
        return  # nothing profiled here (a profile_settings.json alone: a run that failed before its outputs)
    fix = "give another output_dir, or overwrite=true to replace it"
    saved = [r for r in (_recorded_settings(out / SETTINGS_FILE), _recorded_settings(summary)) if r is not None]
    diff = next((d for d in (differences(r, settings) for r in saved) if d), [])
    if saved and not diff:
        return
    if saved:
        what = f"a profile of other settings ({', '.join(diff[:6])}{f' and {len(diff) - 6} more' if len(diff) > 6 else ''})"
    else:
        what = f"a profile whose settings are not recorded (no readable settings in {SETTINGS_FILE} or summary.json)"
    if not overwrite:
        raise ConfigError(f"output_dir {out} holds {what}; {fix}")
    for pattern in _OUTPUTS:
        for f in out.glob(pattern):
            f.unlink(missing_ok=True)
    if conf_space is None or out.resolve() != conf_space.resolve():  # (there, they are the user's space configs)
        for name in _earlier_space_names(saved, out / "summary.json"):
            f = out / f"{name}.yaml"
            if f.is_file() and _MARK in f.read_text(encoding="utf-8", errors="replace")[:400]:
                f.unlink(missing_ok=True)  # the earlier profile's reduced space, of another reduce.name than this one's


#: the provenance line of the reduced space configs a profile writes (hwnas.search.reduce.space_yaml)
_MARK = "derived by hwnas-profile"


def _earlier_space_names(saved: list[dict], summary: Path) -> set[str]:
    """The reduced space configs (``<name>.yaml``) an earlier profile wrote into its folder: from its summary.json,
    and from its recorded settings (a run killed before its summary wrote some of them)."""
    names: set[str] = set()
    try:
        devices = json.loads(summary.read_text(encoding="utf-8")).get("devices") or {}
        names |= {str(e["space"]) for e in devices.values() if isinstance(e, dict) and "space" in e}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    for st in saved:
        devs = [str(k) for k in st.get("devices") or {}]
        if st.get("latency"):
            devs.append(str(st.get("device") or (st.get("names") or {}).get("device") or "device"))
        for d in devs:
            try:
                names.add(space_config_name((st.get("reduce") or {}).get("name", "reduced_{device}"), d))
            except ConfigError:
                pass
    return {n for n in names if n and "/" not in n and not n.startswith(".")}


def run_profile(cfg: Any, output_dir: str | Path | None = None, device: str | None = None,
                accuracy_name: str | None = None, log=None, search_overrides: Sequence[str] = ()) -> dict:
    """Run profile + reduce + plots + YAML from a config (the structure of ``conf/profile/default.yaml``:
    ``space``, ``accuracy``, ``latency`` predictor configs, optional extra ``devices``).
    Returns the summary dict (also written to ``summary.json``)."""
    from hwnas.conf import user_config_dir
    from hwnas.predictors.base import as_predictor, provenance

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = plain(cfg)
    check_settings(cfg)  # before anything is built, read or written
    rc = cfg.get("reduce") or {}
    rules = reduction_rules(rc.get("rules"))  # before the profiling, so that a typo does not wait for it
    out = Path(writable_dir(Path(output_dir or cfg.get("output_dir") or "."), "output_dir"))
    remove_stale_temps(out)  # what the atomic writes of a killed run left (its finished files are whole)
    conf_dir = Path(rc.get("conf_dir") or user_config_dir())
    apply_assets(cfg)
    space = build_space(cfg)
    latency: dict[str, Any] = {}
    if cfg.get("latency"):
        latency[str(cfg.get("device") or device or "device")] = build_predictor(cfg, "latency", space)
    latency_from_cfg = set(latency)  # the device of the `latency` setting (not of devices.<name>)
    for k, v in (cfg.get("devices") or {}).items():
        if str(k) in latency:
            raise ConfigError(f"devices.{k}: the name is already used by `latency` (device={k!r}); pick another name")
        latency[str(k)] = as_predictor(instantiate_node(v, f"devices.{k}", space=space), f"devices.{k}")
    if not latency:
        raise ConfigError("latency: no device given; choose latency=<config> (e.g. note10_lut) or add devices.<name>=<predictor config>")
    accuracy = {}
    if cfg.get("accuracy"):
        name = accuracy_name or "accuracy"
        if name in latency:  # accuracy=custom latency=custom: both named after their config; not an error of the user's
            name = "accuracy" if "accuracy" not in latency else f"{name}_accuracy"
        accuracy[name] = build_predictor(cfg, "accuracy", space)
    names = {dev: space_config_name(rc.get("name", "reduced_{device}"), dev) for dev in latency}
    if rc.get("enabled", True) and accuracy:
        taken = [n for n in names.values() if list(names.values()).count(n) > 1]
        if taken:
            raise ConfigError(f"reduce.name={rc.get('name')!r} gives the name {taken[0]!r} to several devices "
                              f"({[d for d, n in names.items() if n == taken[0]]}); put {{device}} in it")
        writable_dir(conf_dir / "space", "reduce.conf_dir")  # before the profiling, not after it
        remove_stale_temps(conf_dir / "space")  # the half-written space configs of killed runs
        from hwnas.conf import hydra_choice

        preset = hydra_choice("space")
        if preset is not None and preset in names.values():
            raise ConfigError(
                f"space={preset} is the preset this profile would write ({conf_dir / 'space' / (preset + '.yaml')}): profiling "
                f"it again would reduce it further and replace the record of the first reduction; write the new one under "
                f"another name, e.g. reduce.name={preset}_2")
    settings = profile_settings(cfg, device, accuracy_name)
    check_output_dir(out, settings, bool(cfg.get("overwrite", False)), conf_dir / "space")
    pc = cfg.get("profile") or {}
    measured = [d for d, p in latency.items() if provenance(p)["kind"] == "measured"]
    if measured:  # each evaluation times a network (seconds): the profile's tens of thousands take days
        log(f"note: the latency of {measured[0]!r} is measured arch by arch (seconds each); a profile evaluates profile.n_samples="
            f"{int(pc.get('n_samples', 256))} archs for each of hundreds of cells -- days on a device. Profile a "
            "predictor of it instead: latency=adapted with a few measurements as latency.target_samples")
    t0 = time.perf_counter()
    prof = profile_space(
        space, latency=latency, accuracy=accuracy, n_samples=int(pc.get("n_samples", 256)),
        seed=int(pc.get("seed", 0)), depth_profiles=bool(pc.get("depth_profiles", True)),
        resolution_profiles=bool(pc.get("resolution_profiles", True)),
        batch_size=int(pc.get("batch_size", 16384)), progress=bool(pc.get("progress", False)),
    )
    t_prof = time.perf_counter() - t0
    # the settings first: a run killed from here on leaves a folder the same command profiles again
    atomic_write(out / SETTINGS_FILE, json.dumps({"settings": settings}, indent=2, sort_keys=True) + "\n")
    prof.to_csv(out / "profile.csv")
    log(f"profiled {space.name}: {prof.n_evaluations} evaluations per metric in {t_prof:.1f} s -> {out / 'profile.csv'}")
    summary: dict[str, Any] = {**prof.summary(), "profile_seconds": t_prof, "output_dir": str(out), "devices": {}}
    acc_name = next(iter(accuracy)) if accuracy else None
    for dev in latency:
        entry: dict[str, Any] = {}
        red = None
        if rc.get("enabled", True) and acc_name is not None:
            name = names[dev]
            red = reduce_space(prof, dev, acc_name, rules, name=name)
            atomic_write(out / f"decisions_{_slug(dev)}.csv", red.decisions.to_csv(index=False, float_format="%.6g"))
            note = (f"profile: space {space.name}, N={prof.n_samples} samples per cell, seed {prof.seed}, "
                    f"{prof.n_evaluations} evaluations per metric")
            text = space_yaml(red, note)
            atomic_write(out / f"{name}.yaml", text)
            before = conf_dir / "space" / f"{name}.yaml"
            if before.is_file() and _body(before.read_text()) != _body(text):
                log(f"note: {before} held another reduction (of other settings, or of another device named {dev!r}); "
                    f"it is replaced (reduce.name=<another name> keeps both)")
            path = write_space_config(red, conf_dir, extra_comment=note)
            entry.update(dropped=red.dropped, dropped_all_units=red.dropped_global, max_depths=red.max_depths,
                         exchange_rate=red.exchange_rate, config=str(path), space=name,
                         resolutions=red.resolutions, dropped_resolutions=red.dropped_resolutions,
                         front_loss=red.front_loss)
            shipped = _shipped_space(name)
            if shipped is not None and _body(shipped.read_text()) != _body(text):
                log(f"{red.describe()} -> {path}")
                log(f"note: hwnas ships a space config named {name} ({shipped}), which hwnas-search takes before yours; "
                    f"to search this reduction, profile again with reduce.name=<another name>")
            else:
                log(f"{red.describe()} -> {path}  (use: {use_line(name, red, dev in latency_from_cfg, search_overrides, conf_dir)})")
        elif acc_name is None:
            log(f"{dev}: no accuracy source, so no reduction (profile and heatmap only)")
        if cfg.get("plots", True):
            import matplotlib.pyplot as plt

            fig = prof.heatmap(dev, acc_name, out / f"heatmap_{_slug(dev)}.png", reduction=red,
                               title=f"Block friendliness: {space.name} on {dev}")
            plt.close(fig)
            entry["heatmap"] = str(out / f"heatmap_{_slug(dev)}.png")
        summary["devices"][dev] = entry
    summary["rules"] = dict(rules.__dict__)
    summary["settings"] = settings
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _body(yaml_text: str) -> str:
    """A space YAML without its comment lines (the provenance header)."""
    return "\n".join(line for line in yaml_text.splitlines() if not line.startswith("#"))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (hydra). ``argv``: overrides, for programmatic use."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]

    @hydra.main(version_base="1.3", config_path="pkg://" + CONF_MODULE, config_name=CONFIG_NAME)
    def _app(cfg) -> None:
        hc = HydraConfig.get()
        out = cfg.get("output_dir") or hc.runtime.output_dir
        choices = hc.runtime.choices
        from .cli import run_errors

        with run_errors("hwnas-profile", hc.runtime.output_dir):
            _run_app(cfg, out, choices, hc)

    def _run_app(cfg, out, choices, hc) -> None:
        lat = cfg.get("latency")
        own = lat.get("target_device") if hasattr(lat, "get") else None  # latency=adapted: the device adapted to
        device = str(own) if isinstance(own, str) and own else device_name_from_choice(choices.get("/latency") or
                                                                                        choices.get("latency"))
        run_profile(cfg, output_dir=out, device=device,
                    accuracy_name=choices.get("/accuracy") or choices.get("accuracy") or "accuracy",
                    search_overrides=list(hc.overrides.task))

    run_hydra("hwnas-profile", _app)


if __name__ == "__main__":  # pragma: no cover
    main()
