"""``hwnas-profile``: profile a space on one or more devices, reduce it per device, write everything.

    hwnas-profile assets.mirror=../shared/data
    hwnas-profile profile.n_samples=512 reduce.rules.scope=unit
    hwnas-search space=reduced_note10 ...

Writes into the run directory (``output_dir=...`` or hydra's run dir): ``profile.csv`` (all
statistics), ``summary.json`` (cost, decisions), per device ``heatmap_<device>.png``,
``decisions_<device>.csv`` and ``reduced_<device>.yaml``; the reduced space configs also go (atomically)
to ``<conf_dir>/space/`` so ``hwnas-search space=reduced_<device>`` finds them. The config lives in
``hwnas/conf/profile/default.yaml``.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

from .profile import profile_space, write_text_atomic
from .reduce import ReductionRules, _slug, reduce_space, space_yaml, write_space_config

CONF_MODULE = "hwnas.conf"
CONFIG_NAME = "profile/default"


def package_conf_dir() -> Path:
    import hwnas.conf

    return Path(hwnas.conf.__file__).resolve().parent


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _wants_space(target: str) -> bool:
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
        params = inspect.signature(obj).parameters
    except Exception:
        return False
    return "space" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def build_predictor(cfg: Any, space: Any, field: str, pass_space: bool = True) -> Any:
    """Instantiate one config (``_target_`` + kwargs; null values dropped so constructors keep their
    defaults), passing ``space=`` when the target takes it (as ``hwnas-search`` does)."""
    from hydra.utils import instantiate

    cfg = _plain(cfg)
    if not isinstance(cfg, dict) or not cfg.get("_target_") or cfg.get("_target_") == "???":
        raise ValueError(f"{field}._target_ is not set; choose a config or set {field}._target_=<module.Class> (got {cfg!r})")
    cfg = {k: v for k, v in cfg.items() if v is not None}
    kwargs = {}
    if pass_space and "space" not in cfg and _wants_space(cfg["_target_"]):
        kwargs["space"] = space
    cfg = {"_convert_": "all", **cfg}
    try:
        return instantiate(cfg, **kwargs)
    except Exception as exc:
        raise type(exc)(f"{field}: could not build {cfg['_target_']}: {exc}") from exc


def device_name_from_choice(choice: str | None) -> str:
    """``note10_lut`` -> ``note10`` (the latency config's name, without a ``_lut`` suffix)."""
    if not choice:
        return "device"
    return choice[:-4] if choice.endswith("_lut") else choice


def run_profile(cfg: Any, output_dir: str | Path | None = None, device: str | None = None,
                accuracy_name: str | None = None, log=None) -> dict:
    """Run profile + reduce + plots + YAML from a config (the structure of ``conf/profile/default.yaml``:
    ``space``, ``accuracy``, ``latency`` predictor configs, optional extra ``devices``).
    Returns the summary dict (also written to ``summary.json``)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = _plain(cfg)
    out = Path(output_dir or cfg.get("output_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    assets = cfg.get("assets") or {}
    if assets.get("mirror"):
        from hwnas.predictors.assets import set_default_mirror

        set_default_mirror(str(Path(assets["mirror"]).expanduser().resolve()))
    if assets.get("cache"):
        import os

        os.environ["HWNAS_CACHE"] = str(Path(assets["cache"]).expanduser().resolve())
    if not cfg.get("space"):
        raise ValueError("space: missing; choose one (space=ofa_mbv3_w12) or give space._target_")
    space = build_predictor(cfg["space"], None, "space", pass_space=False)
    lat_cfgs: dict[str, Any] = {}
    if cfg.get("latency"):
        lat_cfgs[str(cfg.get("device") or device or "device")] = cfg["latency"]
    for k, v in (cfg.get("devices") or {}).items():
        if str(k) in lat_cfgs:
            raise ValueError(f"devices.{k}: the name is already used by `latency` (device={k!r}); pick another name")
        lat_cfgs[str(k)] = v
    if not lat_cfgs:
        raise ValueError("latency: no device given; choose latency=<config> (e.g. note10_lut) or add devices.<name>=<predictor config>")
    latency = {k: build_predictor(v, space, f"latency[{k}]") for k, v in lat_cfgs.items()}
    accuracy = {}
    if cfg.get("accuracy"):
        accuracy[accuracy_name or "accuracy"] = build_predictor(cfg["accuracy"], space, "accuracy")
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
    rc = cfg.get("reduce") or {}
    acc_name = next(iter(accuracy)) if accuracy else None
    rules = ReductionRules.from_dict(rc.get("rules") or {})
    for dev in latency:
        entry: dict[str, Any] = {}
        if cfg.get("plots", True):
            import matplotlib.pyplot as plt

            fig = prof.heatmap(dev, acc_name, out / f"heatmap_{_slug(dev)}.png",
                               title=f"Block friendliness: {space.name} on {dev}")
            plt.close(fig)
            entry["heatmap"] = str(out / f"heatmap_{_slug(dev)}.png")
        if rc.get("enabled", True) and acc_name is not None:
            name = str(rc.get("name", "reduced_{device}")).format(device=_slug(dev))
            red = reduce_space(prof, dev, acc_name, rules, name=name)
            write_text_atomic(out / f"decisions_{_slug(dev)}.csv", red.decisions.to_csv(index=False, float_format="%.6g"))
            note = (f"profile: space {space.name}, N={prof.n_samples} samples per cell, seed {prof.seed}, "
                    f"{prof.n_evaluations} evaluations per metric")
            write_text_atomic(out / f"{name}.yaml", space_yaml(red, note))
            conf_dir = rc.get("conf_dir") or package_conf_dir()
            path = write_space_config(red, conf_dir, extra_comment=note)
            entry.update(dropped=red.dropped, dropped_all_units=red.dropped_global, max_depths=red.max_depths,
                         exchange_rate=red.exchange_rate, config=str(path), space=name,
                         resolutions=red.resolutions, dropped_resolutions=red.dropped_resolutions,
                         front_loss=red.front_loss)
            log(f"{red.describe()} -> {path}  (use: hwnas-search space={name})")
        elif acc_name is None:
            log(f"{dev}: no accuracy source, so no reduction (profile and heatmap only)")
        summary["devices"][dev] = entry
    summary["rules"] = dict(rules.__dict__)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: list[str] | None = None) -> None:
    """Console entry point (hydra). ``argv``: overrides, for programmatic use."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]

    @hydra.main(version_base=None, config_path="pkg://" + CONF_MODULE, config_name=CONFIG_NAME)
    def _app(cfg) -> None:
        hc = HydraConfig.get()
        out = cfg.get("output_dir") or hc.runtime.output_dir
        choices = hc.runtime.choices
        run_profile(cfg, output_dir=out, device=device_name_from_choice(choices.get("/latency") or choices.get("latency")),
                    accuracy_name=choices.get("/accuracy") or choices.get("accuracy") or "accuracy")

    _app()


if __name__ == "__main__":  # pragma: no cover
    main()
