"""One path from a config the user wrote to objects: spaces, predictors, and the asset settings.

Every command (search, profile, pipeline, export, measure, train) builds its space and predictors
here, so a ``_target_`` means the same thing everywhere and every error names the config key.
``_target_`` is read only from configs the user writes (the command line and hydra config files), never
from files in run folders (those hold data; see :mod:`hwnas.spaces.io`).

Plug-ins: a ``_target_`` is imported with the current working directory on ``sys.path`` (as
``python -m`` would do), so ``latency._target_=mypkg.MyLatency`` finds ``./mypkg`` without PYTHONPATH.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hwnas.spaces.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the key and the fix."""


def plain(cfg: Any, key: str = "config") -> Any:
    """An OmegaConf node (resolved) or a mapping -> plain Python containers; errors name ``key``."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            try:
                return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
            except Exception as exc:  # noqa: BLE001 - missing mandatory value / bad interpolation
                raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    if isinstance(cfg, dict):
        return {k: plain(v, f"{key}.{k}") for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain(v, f"{key}[{i}]") for i, v in enumerate(cfg)]
    return cfg


def abs_path(p: str | os.PathLike) -> str:
    """A path from the command line, relative to where the command was started (hydra may chdir)."""
    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(os.fspath(p))
    except (ValueError, ImportError):  # not inside a hydra app
        return os.path.abspath(os.path.expanduser(os.fspath(p)))


def apply_assets(cfg: Any, key: str = "assets") -> None:
    """``assets.mirror`` -> the process-wide asset mirror (absolute path); ``assets.cache`` -> ``$HWNAS_CACHE``.
    Null keeps ``$HWNAS_ASSETS_MIRROR`` / ``$HWNAS_CACHE`` / the defaults."""
    from hwnas.predictors.assets import set_default_mirror

    assets = (cfg.get(key) if hasattr(cfg, "get") else None) or {}
    mirror = assets.get("mirror")
    if mirror not in (None, ""):
        path = abs_path(str(mirror))
        if not Path(path).is_dir():
            raise ConfigError(
                f"{key}.mirror={mirror!r} is not a folder ({path}); point it at a folder laid out like the OFA "
                f"files repo, e.g. {key}.mirror=../shared/data"
            )
        set_default_mirror(path)
    cache = assets.get("cache")
    if cache not in (None, ""):
        os.environ["HWNAS_CACHE"] = abs_path(str(cache))


@contextmanager
def assets_applied(cfg: Any, key: str = "assets") -> Iterator[None]:
    """:func:`apply_assets` for the block only: the default mirror and ``$HWNAS_CACHE`` are put back afterwards
    (a Python caller of the pipeline kept them changed for everything after it)."""
    from hwnas.predictors import assets

    mirror, cache = assets._DEFAULT_MIRROR, os.environ.get("HWNAS_CACHE")
    try:
        apply_assets(cfg, key)
        yield
    finally:
        assets.set_default_mirror(mirror)
        if cache is None:
            os.environ.pop("HWNAS_CACHE", None)
        else:
            os.environ["HWNAS_CACHE"] = cache


def _cause(exc: BaseException) -> BaseException:
    """The innermost error (hydra wraps constructor errors in InstantiationException)."""
    while exc.__cause__ is not None and type(exc).__name__ == "InstantiationException":
        exc = exc.__cause__
    return exc


def _user_import_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_target(target: str, key: str) -> Any:
    """The object a ``_target_`` names (``package.module.Class``, or an attribute of an attribute), imported
    with the current folder on the import path. One :class:`ConfigError` naming ``key`` and what is wrong:
    no such module, a module without that name in it, or a module that fails while being imported (its
    own error and line); hydra's ``get_method`` logs an ERROR record first and says the same thing for
    all three."""
    import importlib
    import traceback

    _user_import_path()
    names = str(target).split(".")
    if not all(n.isidentifier() for n in names) or len(names) < 2:
        raise ConfigError(f"{key}._target_={target!r} is not a dotted path such as mypackage.mymodule.MyClass")
    module, found = None, 0
    for i in range(len(names) - 1, 0, -1):
        name = ".".join(names[:i])
        try:
            module = importlib.import_module(name)
            found = i
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or name == exc.name or name.startswith(exc.name + "."):
                continue  # this prefix is no module: try a shorter one
            raise ConfigError(f"{key}._target_={target!r}: importing it failed: it needs module {exc.name!r}, which is "
                              "not installed") from None
        except Exception as exc:  # noqa: BLE001 - the user's module fails while it is imported
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
            text = str(exc)
            if isinstance(exc, SyntaxError) and exc.filename:
                text, where = exc.msg, f" ({exc.filename}, line {exc.lineno})"
            raise ConfigError(f"{key}._target_={target!r}: importing it failed: {type(exc).__name__}: {text}{where}") from None
    if module is None:
        raise ConfigError(f"{key}._target_={target!r}: there is no module {names[0]!r} (the current folder is on the "
                          "import path; check the spelling, or install the package)")
    obj = module
    for j, attr in enumerate(names[found:], start=found):
        if not hasattr(obj, attr):
            raise ConfigError(f"{key}._target_={target!r}: {'module' if j == found else 'object'} "
                              f"{'.'.join(names[:j])} has no {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ConfigError(f"{key}._target_={target!r} is not a class or function")
    return obj


def _wants(target: Any, name: str) -> bool:
    """Whether the callable ``target`` accepts the keyword ``name``."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _null_is_a_choice(target: Any, name: str) -> bool:
    """Whether a null for keyword ``name`` of ``target`` means something else than leaving it out: the
    parameter is named in the signature with a default that is not None."""
    try:
        param = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is not inspect.Parameter.empty and param.default is not None


def instantiate_node(node: Any, key: str, **kwargs: Any) -> Any:
    """Build ``node`` (``_target_`` + keyword values, from a user config) with extra ``kwargs``.

    A null value keeps the constructor's own default where that default is null anyway, or where the
    target takes the value only through ``**kwargs`` (``space.resolutions: null``: the space's default
    choices); a null for a named parameter whose default is something else is passed on, since it is an
    explicit choice (``latency.k=null``: every row, not the default K). Keyword arguments the target
    does not take (e.g. ``space=`` for a class without one) are not passed. Errors name ``key``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    asked = OmegaConf.is_dict(node) and "_target_" in node.keys() and OmegaConf.is_missing(node, "_target_")
    if asked:
        node = None  # "???" in a preset such as accuracy=custom: the user is to give it
    cfg = plain(node, key)
    if not isinstance(cfg, dict) or cfg.get("_target_") in (None, "", "???"):
        from hwnas.conf import preset_file

        preset = preset_file(key)
        if preset is not None and not asked and "_target_" not in (cfg if isinstance(cfg, dict) else {}):
            raise ConfigError(f"{key}={preset.stem} ({preset}) sets no _target_: the file is empty, cut short or not "
                              f"a {key} config; write it again (a reduced space: run hwnas-profile again) or choose another")
        raise ConfigError(f"{key}._target_ is not set; choose a config ({key}=<name>) or set {key}._target_=<module.Class>")
    target = cfg["_target_"]
    fn = import_target(target, key)
    cfg = {k: v for k, v in cfg.items() if v is not None or _null_is_a_choice(fn, k)}
    kwargs = {k: v for k, v in kwargs.items() if k not in cfg and _wants(fn, k)}
    try:
        return instantiate({"_convert_": "all", **cfg}, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the key named
        inner = _cause(exc)
        if isinstance(inner, UserError):  # already one line with the fix
            raise ConfigError(f"{key} ({target}): {_dotted(str(inner), key, cfg)}") from inner
        m = re.search(r"unexpected keyword argument '(\w+)'", str(inner)) if isinstance(inner, TypeError) else None
        if m and m.group(1) in cfg:  # a setting the class does not take (a typo, or one of another preset)
            raise ConfigError(f"{key}.{m.group(1)} is not a setting of {target}{_settings_of(fn)}; check its spelling, "
                              f"or remove it (~{key}.{m.group(1)})") from None
        raise ConfigError(f"{key} ({target}): {type(inner).__name__}: {inner}") from inner


def _dotted(message: str, key: str, cfg: dict) -> str:
    """A constructor's message about one of its settings (``processes=0 must be ...; e.g. processes=3``) with the
    setting named as the user writes it (``latency.processes=0 ...; e.g. latency.processes=3``)."""
    m = re.match(r"(\w+)=", message)
    if not m or m.group(1) not in cfg or m.group(1).startswith("_"):
        return message
    name = m.group(1)
    return re.sub(rf"(?<![\w.]){re.escape(name)}=", f"{key}.{name}=", message)


def _settings_of(fn: Any) -> str:
    """``" (its settings: a, b, c)"`` for a callable with named parameters only, else empty."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ""
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return ""
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "space")]
    return f" (its settings: {', '.join(names)})" if names else ""


def build_space(cfg: Any, key: str = "space") -> Any:
    """The search space of ``cfg.space`` (a config node with ``_target_``, or a registered name)."""
    node = cfg.get(key) if hasattr(cfg, "get") else None
    if isinstance(node, str):
        from hwnas.spaces import create_space

        return create_space(node)
    if node is None:
        raise ConfigError(f"{key} is not set; choose one ({key}=ofa_mbv3_w12) or give {key}._target_")
    return instantiate_node(node, key)


def build_predictor(cfg: Any, key: str, space: Any) -> Any:
    """The predictor of ``cfg.<key>`` (``accuracy``/``latency``/...), given ``space=``; checked to
    follow the predictor protocol."""
    from hwnas.predictors.base import as_predictor

    node = cfg.get(key) if hasattr(cfg, "get") else None
    return as_predictor(instantiate_node(node, key, space=space), key)


def build(cfg: Any) -> tuple[Any, Any, Any]:
    """``(space, accuracy, latency)`` from a search config; errors name the config key."""
    space = build_space(cfg)
    return space, build_predictor(cfg, "accuracy", space), build_predictor(cfg, "latency", space)
