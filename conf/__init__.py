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


#: the reference target of ``latency=adapted`` (its preset's budgets are this device's)
_ADAPTED_DEFAULT = {"target_device": "titan_rtx_1", "target_samples": "ofa_mbv3"}


def _adapted_budgets(budgets: list, *, _root_: object) -> list:
    """``latency=adapted``'s preset budgets while its target is the preset's own (Titan RTX from the
    dataset); for your own device ([] : the search reports the latency quantiles of its initial population,
    and says so) -- the Titan's milliseconds mean nothing there."""
    lat = _root_.get("latency") if hasattr(_root_, "get") else None
    own = any(str(lat.get(k)) != v for k, v in _ADAPTED_DEFAULT.items()) if hasattr(lat, "get") else False
    return [] if own else list(budgets)


def _register() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - hydra/omegaconf are dependencies
        return
    OmegaConf.register_new_resolver("hwnas_user_conf", _searchpath_entry, replace=True)
    OmegaConf.register_new_resolver("hwnas_adapted_budgets", _adapted_budgets, replace=True)


_register()
