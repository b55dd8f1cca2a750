"""``hwnas-profile``: profile a space on one or more devices, reduce it per device, write everything.

    hwnas-profile assets.mirror=../shared/data
    hwnas-profile profile.n_samples=512 reduce.rules.scope=unit
    hwnas-search space=reduced_note10 ...

Writes into the run directory (``output_dir=...`` or hydra's run dir): ``profile.csv`` (all
statistics), ``summary.json`` (cost, decisions), per device ``heatmap_<device>.png`` (dropped choices
hatched), ``decisions_<device>.csv`` and ``reduced_<device>.yaml``. The reduced space configs also go
(atomically) to ``<reduce.conf_dir>/space/`` — by default the user config folder
(:func:`hwnas.conf.user_config_dir`), which the commands' configs put on hydra's search path — so
``hwnas-search space=reduced_<device>`` finds them. Nothing is written into the installed package.
Space and predictors are built by :mod:`hwnas.predictors.build`, as in ``hwnas-search``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hwnas.predictors.assets import atomic_write
from hwnas.predictors.build import ConfigError, apply_assets, build_predictor, build_space, instantiate_node, plain
from hwnas.spaces.errors import cli_errors, run_hydra, writable_dir

from .profile import profile_space
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


def run_profile(cfg: Any, output_dir: str | Path | None = None, device: str | None = None,
                accuracy_name: str | None = None, log=None) -> dict:
    """Run profile + reduce + plots + YAML from a config (the structure of ``conf/profile/default.yaml``:
    ``space``, ``accuracy``, ``latency`` predictor configs, optional extra ``devices``).
    Returns the summary dict (also written to ``summary.json``)."""
    from hwnas.conf import user_config_dir
    from hwnas.predictors.base import as_predictor

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = plain(cfg)
    out = Path(writable_dir(Path(output_dir or cfg.get("output_dir") or "."), "output_dir"))
    rc = cfg.get("reduce") or {}
    conf_dir = Path(rc.get("conf_dir") or user_config_dir())
    rules = reduction_rules(rc.get("rules"))  # before the profiling, so that a typo does not wait for it
    apply_assets(cfg)
    space = build_space(cfg)
    latency: dict[str, Any] = {}
    if cfg.get("latency"):
        latency[str(cfg.get("device") or device or "device")] = build_predictor(cfg, "latency", space)
    for k, v in (cfg.get("devices") or {}).items():
        if str(k) in latency:
            raise ConfigError(f"devices.{k}: the name is already used by `latency` (device={k!r}); pick another name")
        latency[str(k)] = as_predictor(instantiate_node(v, f"devices.{k}", space=space), f"devices.{k}")
    if not latency:
        raise ConfigError("latency: no device given; choose latency=<config> (e.g. note10_lut) or add devices.<name>=<predictor config>")
    accuracy = {}
    if cfg.get("accuracy"):
        accuracy[accuracy_name or "accuracy"] = build_predictor(cfg, "accuracy", space)
    if rc.get("enabled", True) and accuracy:
        writable_dir(conf_dir / "space", "reduce.conf_dir")  # before the profiling, not after it
    pc = cfg.get("profile") or {}
    t0 = time.perf_counter()
    prof = profile_space(
        space, latency=latency, accuracy=accuracy, n_samples=int(pc.get("n_samples", 256)),
        seed=int(pc.get("seed", 0)), depth_profiles=bool(pc.get("depth_profiles", True)),
        resolution_profiles=bool(pc.get("resolution_profiles", True)),
        batch_size=int(pc.get("batch_size", 16384)), progress=bool(pc.get("progress", False)),
    )
    t_prof = time.perf_counter() - t0
    prof.to_csv(out / "profile.csv")
    log(f"profiled {space.name}: {prof.n_evaluations} evaluations per metric in {t_prof:.1f} s -> {out / 'profile.csv'}")
    summary: dict[str, Any] = {**prof.summary(), "profile_seconds": t_prof, "output_dir": str(out), "devices": {}}
    acc_name = next(iter(accuracy)) if accuracy else None
    for dev in latency:
        entry: dict[str, Any] = {}
        red = None
        if rc.get("enabled", True) and acc_name is not None:
            name = str(rc.get("name", "reduced_{device}")).format(device=_slug(dev))
            red = reduce_space(prof, dev, acc_name, rules, name=name)
            atomic_write(out / f"decisions_{_slug(dev)}.csv", red.decisions.to_csv(index=False, float_format="%.6g"))
            note = (f"profile: space {space.name}, N={prof.n_samples} samples per cell, seed {prof.seed}, "
                    f"{prof.n_evaluations} evaluations per metric")
            text = space_yaml(red, note)
            atomic_write(out / f"{name}.yaml", text)
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
                log(f"{red.describe()} -> {path}  (use: hwnas-search space={name})")
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
        with cli_errors("hwnas-profile"):
            run_profile(cfg, output_dir=out, device=device_name_from_choice(choices.get("/latency") or choices.get("latency")),
                        accuracy_name=choices.get("/accuracy") or choices.get("accuracy") or "accuracy")

    run_hydra("hwnas-profile", _app)


if __name__ == "__main__":  # pragma: no cover
    main()
