"""hwnas's hydra config tree (``pkg://hwnas.conf``) and the user's config folder beside it.

Configs that hwnas writes for a user (the reduced spaces of ``hwnas-profile``) go to the user config
folder, never into the installed package: ``$HWNAS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/hwnas``, else
``~/.config/hwnas``. The commands' primary configs put it on hydra's search path with the entry
``${hwnas_user_conf:}`` (in ``hydra.searchpath``), so ``space=reduced_<device>`` finds
``<user config folder>/space/reduced_<device>.yaml``. hwnas's own configs come first: a file of the
same name as a shipped config does not replace it.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_config_dir() -> Path:
    """The user's hwnas config folder (a hydra config root: ``space/<name>.yaml`` ...)."""
    env = os.environ.get("HWNAS_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join("~", ".config")
    return (Path(base).expanduser() / "hwnas").resolve()


def _searchpath_entry() -> str:
    """``hydra.searchpath`` entry of the user config folder; while it does not exist, hwnas's own tree
    again (hydra warns about a missing folder on every run)."""
    d = user_config_dir()
    return f"file://{d}" if d.is_dir() else "pkg://hwnas.conf"


def _user_presets() -> str:
    """For ``--help``: the presets in the user config folder (``space=reduced_<device>`` from ``hwnas-profile``,
    configs of your own), which hydra's own listing leaves out, one line per group."""
    d = user_config_dir()
    groups = {}
    if d.is_dir():
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            names = sorted(f.stem for f in sub.glob("*.yaml"))
            if names:
                groups[sub.name] = names
    if not groups:
        text = (f"Your own presets (user config folder {d}): none yet; hwnas-profile writes space=reduced_<device> "
                "there (HWNAS_CONFIG_DIR moves it).")
    else:
        text = f"Your own presets (user config folder {d}):\n" + "\n".join(
            f"  {g}: {', '.join(n)}" for g, n in groups.items())
    return text.replace("$", "$$") + "\n"  # (the help template is a string.Template)


def _help(app: str, groups: list, presets: list | None = None) -> str:
    """``--help`` of a command: its own config groups only, with their options (hydra's listing gave every group
    of hwnas's tree, ``train`` and ``target`` under ``hwnas-search`` too), the primary configs it takes by
    ``--config-name``, and the user's presets (:func:`_user_presets`). ``$CONFIG`` is left for hydra."""
    root = Path(__file__).resolve().parent
    lines = [f"{g}: {', '.join(sorted(f.stem for f in (root / str(g)).glob('*.yaml')))}" for g in groups]
    text = f"{app} is powered by Hydra.\n{_user_presets()}\n== Configuration groups ==\n"
    text += "Compose your configuration from those groups (group=option)\n\n" + "\n".join(lines).replace("$", "$$") + "\n"
    if presets:
        text += f"\nWhole presets (--config-name <name>): {', '.join(map(str, presets))}\n"
    return (text + "\n== Config ==\nOverride anything in the config (foo.bar=value)\n\n$CONFIG\n\n"
            "Powered by Hydra (https://hydra.cc)\nUse --hydra-help to view Hydra specific help\n")


#: the reference target of ``latency=adapted`` (its preset's budgets are this device's)
_ADAPTED_DEFAULT = {"target_device": "titan_rtx_1", "target_samples": "ofa_mbv3"}


def _adapted_budgets(budgets: list, *, _root_: object) -> list:
    """``latency=adapted``'s preset budgets while its target is the preset's own (Titan RTX from the
    dataset); for your own device ([] : the search reports the latency quantiles of its initial population,
    and says so) -- the Titan's milliseconds mean nothing there."""
    lat = _root_.get("latency") if hasattr(_root_, "get") else None
    own = any(str(lat.get(k)) != v for k, v in _ADAPTED_DEFAULT.items()) if hasattr(lat, "get") else False
    return [] if own else list(budgets)


def hydra_choice(group: str) -> str | None:
    """The preset chosen for config group ``group`` in this hydra run (None outside one, or none chosen)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group)
    except Exception:  # noqa: BLE001 - not inside a hydra job (the compose API)
        return None
    return str(choice) if choice else None


def preset_file(group: str, choice: str | None = None) -> Path | None:
    """The file of preset ``choice`` (default: this run's :func:`hydra_choice`) of config group ``group``:
    hwnas's own first, then the user config folder's, as hydra's search path has them; None if neither."""
    choice = choice or hydra_choice(group)
    if not choice:
        return None
    for root in (Path(__file__).resolve().parent, user_config_dir()):
        f = root / group / f"{choice}.yaml"
        if f.is_file():
            return f
    return None


def shadowed_presets(groups: tuple[str, ...] = ("space", "accuracy", "latency", "target", "search", "evaluator")) -> list[str]:
    """One line per preset chosen in this hydra run that the user config folder holds too, under the name of one
    of hwnas's own: hydra takes hwnas's, and the user's file was ignored without a word."""
    out = []
    for group in groups:
        choice = hydra_choice(group)
        if not choice:
            continue
        mine, ours = user_config_dir() / group / f"{choice}.yaml", Path(__file__).resolve().parent / group / f"{choice}.yaml"
        if mine.is_file() and ours.is_file():
            out.append(f"note: {group}={choice} is hwnas's own preset ({ours}); your {mine} of the same name is not used: "
                       f"rename it (e.g. {group}=my_{choice})")
    return out


#: what a space preset file that takes no resolutions (nasbench201, fbnet: no ``resolutions`` key) is taken as
_NO_RESOLUTIONS = "none"


def _space_preset_resolutions() -> list | str | None:
    """The ``resolutions`` the chosen ``space`` preset file itself sets (a reduced space's); :data:`_NO_RESOLUTIONS`
    for a preset without the key (a space that has none); None: no hydra job (the compose API), no such file, or a
    preset that leaves them to the class (null)."""
    f = preset_file("space")
    if f is None:
        return None
    import yaml

    try:
        st = f.stat()
        key = (str(f), st.st_mtime_ns, st.st_size)
        if key not in _PRESET_RESOLUTIONS:  # (resolved at every access of the config: read once)
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
            res = data.get("resolutions") if isinstance(data, dict) else None
            ok = isinstance(res, list) and all(isinstance(r, int) for r in res)
            none = (isinstance(data, dict) and "resolutions" not in data and data.get("_target_") == "hwnas.spaces.create_space")
            _PRESET_RESOLUTIONS[key] = [int(r) for r in res] if ok else (_NO_RESOLUTIONS if none else None)
        return _PRESET_RESOLUTIONS[key]
    except (OSError, yaml.YAMLError):
        return None  # reported when the space is built


_PRESET_RESOLUTIONS: dict[tuple, list | str | None] = {}
_SAID: set = set()


def _priced_resolutions(priced: list, without: str = "keep") -> list | None:
    """``space.resolutions`` set by a latency preset: the resolutions its data prices -- or, when the space
    preset chosen with it sets its own (a space reduced by ``hwnas-profile``), those of them the data
    prices. The latency preset comes later in the defaults and used to replace a reduced space's
    resolutions with all of its own, silently undoing the reduction. ``space.resolutions=[...]`` on the
    command line still decides."""
    own = _space_preset_resolutions()
    if own == _NO_RESOLUTIONS:  # nasbench201, fbnet: ``without="drop"`` (a preset that serves them too) sets none;
        return None if without == "drop" else list(priced)  # else the space's check names the preset's mismatch
    if not own:
        return list(priced)
    both = [r for r in own if r in priced]
    if not both:  # none priced: the preset's own, which the latency's tables refuse in one line naming them
        return list(own)
    dropped = [r for r in own if r not in priced]
    if dropped and (tuple(own), tuple(priced)) not in _SAID:
        _SAID.add((tuple(own), tuple(priced)))  # (resolvers run at every access of the config: said once)
        import logging

        logging.getLogger("hwnas.conf").warning(
            f"space.resolutions: the space preset's {list(own)} searched at {both}: the latency preset's data prices "
            f"no {dropped}")
    return both


def _own_resolutions(default: list) -> list | None:
    """``space.resolutions`` of ``hwnas-train``: the chosen space preset's own (a reduced space's, which training
    must keep: any resolution can be trained), else ``default``."""
    own = _space_preset_resolutions()
    if own == _NO_RESOLUTIONS:
        return None
    return list(own) if own else list(default)


def _width_for(space: str, width: float, *, _parent_: object = None) -> object:
    """``space.width_mult`` of a config that trains a narrower ``space`` of its own (the smoke config: 0.25 for
    ``ofa_proxyless_w13``): ``width`` while that is the chosen space preset, else the chosen preset's own
    ``width_mult`` (null for most). ``--config-name smoke space=ofa_mbv3_w10`` kept the smoke width and was refused
    (OFA-MobileNetV3 has the widths 1.0 and 1.2 only). Outside a hydra job (the compose API) the space's name
    decides."""
    choice = hydra_choice("space")
    if choice is None:
        name = _parent_.get("name") if hasattr(_parent_, "get") else None
        return width if name in (None, space) else None
    if choice == space:
        return width
    f = preset_file("space")
    if f is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # reported when the space is built
    return data.get("width_mult") if isinstance(data, dict) else None


def _first(*values: object) -> object:
    """The first of ``values`` that is set (not null or empty)."""
    return next((v for v in values if v not in (None, "")), None)


def _plugin_label(name: object, target: object = None, device: object = None) -> str:
    """What names a run folder after a space or target device: ``name`` (``space.name``, ``target.device``) when
    set; for a plug-in given only by its class path (``space=custom space._target_=mypkg.WidthSpace``), the name
    it is registered under (``@register_space``), else its ``device`` or ``name`` setting, else the class's name;
    ``custom`` when none can be told (a class path that does not import: the build reports it). Every run of
    one plug-in used to share ``.../custom/...``."""
    import re

    ok = re.compile(r"[A-Za-z0-9_.-]+")
    for v in (name, device):
        if isinstance(v, str) and v:
            return v
    if not isinstance(target, str) or not target:
        return "custom"
    try:  # imported as the build will import it (the working folder on the path; hydra's get_object logs an ERROR)
        from hwnas.predictors.build import import_target

        obj = import_target(target, "space._target_")
    except Exception:  # noqa: BLE001 - any failure to import: the build names it
        obj = None
    if obj is not None:
        from hwnas.spaces.base import _REGISTRY

        reg = [n for n, f in _REGISTRY.items() if f is obj]
        if reg and ok.fullmatch(reg[0]):
            return reg[0]
    last = target.rsplit(".", 1)[-1]
    return last if ok.fullmatch(last) else "custom"


def _register() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - hydra/omegaconf are dependencies
        return
    OmegaConf.register_new_resolver("hwnas_user_conf", _searchpath_entry, replace=True)
    OmegaConf.register_new_resolver("hwnas_adapted_budgets", _adapted_budgets, replace=True)
    OmegaConf.register_new_resolver("hwnas_priced_resolutions", _priced_resolutions, replace=True)
    OmegaConf.register_new_resolver("hwnas_own_resolutions", _own_resolutions, replace=True)
    OmegaConf.register_new_resolver("hwnas_first", _first, replace=True)
    OmegaConf.register_new_resolver("hwnas_width_for", _width_for, replace=True)
    OmegaConf.register_new_resolver("hwnas_plugin_label", _plugin_label, replace=True)
    OmegaConf.register_new_resolver("hwnas_help", _help, replace=True)


_register()
