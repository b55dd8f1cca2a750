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


def build_predictor(cfg: Any, space: Any, field: str) -> Any:
    """Instantiate one predictor config (``_target_`` + kwargs), passing ``space=`` when it takes one."""
    from hydra.utils import instantiate

    cfg = _plain(cfg)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ValueError(f"{field}: expected a predictor config with _target_ (e.g. hwnas.predictors.lut.LookupTableLatency); got {cfg!r}")
    kwargs = {}
    if "space" not in cfg and _wants_space(cfg["_target_"]):
        kwargs["space"] = space
    cfg = {"_convert_": "all", **cfg}
    try:
        return instantiate(cfg, **kwargs)
    except Exception as exc:
        raise type(exc)(f"{field}: could not build {cfg['_target_']}: {exc}") from exc


def run_profile(cfg: Any, output_dir: str | Path | None = None, log=None) -> dict:
    """Run profile + reduce + plots + YAML from a config (the structure of ``conf/profile/default.yaml``).
    Returns the summary dict (also written to ``summary.json``)."""
    from hydra.utils import instantiate

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = _plain(cfg)
    out = Path(output_dir or cfg.get("output_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    mirror = (cfg.get("assets") or {}).get("mirror")
    if mirror:
        from hwnas.predictors.assets import set_default_mirror

        set_default_mirror(mirror)
    if not cfg.get("space"):
        raise ValueError("space: missing; give a space config (_target_ + kwargs), e.g. space._target_=hwnas.spaces.mbconv.OFAMobileNetV3Space")
    space = instantiate({"_convert_": "all", **cfg["space"]})
    lat_cfg = cfg.get("latency") or {}
    acc_cfg = cfg.get("accuracy") or {}
    if not lat_cfg:
        raise ValueError("latency: no device given; add latency.<device>=<predictor config> (e.g. the Note10 lookup tables)")
    latency = {str(k): build_predictor(v, space, f"latency.{k}") for k, v in lat_cfg.items()}
    accuracy = {str(k): build_predictor(v, space, f"accuracy.{k}") for k, v in acc_cfg.items()}
    pc = cfg.get("profile") or {}
    t0 = time.perf_counter()
    prof = profile_space(
        space, latency=latency, accuracy=accuracy, n_samples=int(pc.get("n_samples", 256)),
        seed=int(pc.get("seed", 0)), depth_profiles=bool(pc.get("depth_profiles", True)),
        batch_size=int(pc.get("batch_size", 16384)), progress=bool(pc.get("progress", False)),
    )
    t_prof = time.perf_counter() - t0
    prof.to_csv(out / "profile.csv")
    log(f"profiled {space.name}: {prof.n_evaluations} evaluations per metric in {t_prof:.1f} s -> {out / 'profile.csv'}")
    summary: dict[str, Any] = {**prof.summary(), "profile_seconds": t_prof, "output_dir": str(out), "devices": {}}
    rc = cfg.get("reduce") or {}
    devices = rc.get("devices") or list(latency)
    acc_name = rc.get("accuracy") or (next(iter(accuracy)) if accuracy else None)
    rules = ReductionRules.from_dict(rc.get("rules") or {})
    for dev in devices:
        if dev not in latency:
            raise ValueError(f"reduce.devices: {dev!r} is not a latency entry; entries: {list(latency)}")
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
            write_text_atomic(out / f"{name}.yaml", space_yaml(red))
            conf_dir = rc.get("conf_dir") or package_conf_dir()
            path = write_space_config(red, conf_dir)
            entry.update(dropped=red.dropped, dropped_all_units=red.dropped_global, max_depths=red.max_depths,
                         exchange_rate=red.exchange_rate, config=str(path), space=name)
            log(f"{red.describe()} -> {path}  (use: hwnas-search space={name})")
        summary["devices"][dev] = entry
    summary["rules"] = rules.__dict__
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
        out = cfg.get("output_dir") or HydraConfig.get().runtime.output_dir
        run_profile(cfg, output_dir=out)

    _app()


if __name__ == "__main__":  # pragma: no cover
    main()
