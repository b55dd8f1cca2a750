"""The search's settings: ``conf/search/nsga2.yaml`` is the one place their defaults live.

:func:`search_kwargs` turns a ``search`` config block (hydra node or mapping; missing keys take the
packaged defaults) into the keyword arguments of :func:`hwnas.search.nsga.run_search`, checking every
value with one error line that names the key. ``run_search`` fills the arguments it is not given from
the same file, so the library and the command line cannot disagree on a default.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any

import yaml

from hwnas.predictors.build import ConfigError, plain
from hwnas.spaces.checks import check_bool, check_choice, check_int, check_number

#: config key (dotted) -> run_search keyword
KEYWORDS = {
    "engine": "engine",
    "pop_size": "pop_size",
    "n_gen": "n_gen",
    "restarts": "restarts",
    "seed": "seed",
    "budgets": "budgets",
    "constraint": "constraint",
    "max_latency": "max_latency",
    "max_evals": "max_evals",
    "hv_ref": "hv_ref",
    "sampling.structured": "structured",
    "crossover.mode": "crossover",
    "crossover.prob": "crossover_prob",
    "mutation.rate": "mutation_rate",
    "mutation.neighbour": "neighbour",
    "refine.passes": "refine",
    "refine.members": "refine_members",
    "refine.moves": "refine_moves",
    "refine.pairs": "refine_pairs",
    "refine.starts": "refine_starts",
    "refine.budget_band": "refine_band",
    "threads": "threads",
    "verbose": "verbose",
}
#: keys the command reads itself (not search settings)
CLI_KEYS = {"algorithm", "plot", "overwrite", "checkpoint_s"}

_INT = {"pop_size": 4, "n_gen": 1, "restarts": 1, "refine.passes": 0, "refine.members": 1, "refine.pairs": 0, "refine.starts": 0,
        "max_evals": 1, "threads": 1}
_FLOAT = {"refine.budget_band", "max_latency", "crossover.prob", "mutation.rate", "mutation.neighbour", "sampling.structured", "checkpoint_s"}
_BOOL = {"constraint", "verbose", "plot", "overwrite"}
_CHOICES = {"engine": ("numpy", "pymoo"), "crossover.mode": ("unit", "uniform", "mixed"), "refine.moves": ("grid", "all")}
_NULLABLE = {"seed", "max_latency", "max_evals", "mutation.rate", "refine.members", "threads"}
#: float keys with a range: (low, high, what the message calls it); _POSITIVE excludes 0 as well
_RANGE = {
    "crossover.prob": (0.0, 1.0, "a probability in [0, 1]"),
    "mutation.rate": (0.0, 1.0, "a probability in [0, 1] (or null: 1.5 / number of effective genes)"),
    "mutation.neighbour": (0.0, 1.0, "a probability in [0, 1]"),
    "sampling.structured": (0.0, 1.0, "a fraction of the initial population in [0, 1]"),
    "max_latency": (0.0, math.inf, "a latency > 0 (or null: the largest budget)"),
    "checkpoint_s": (0.0, math.inf, "a number of seconds >= 0"),
}
_POSITIVE = {"max_latency"}
#: what null means for the nullable whole-number keys (said in their error line)
_NULL_MEANS = {"max_evals": "null: no limit", "refine.members": "null: every front member", "threads": "null: leave the BLAS settings alone"}
_HV_FORMS = ("write search.hv_ref={accuracy: 0.7, latency: 30} or search.hv_ref.accuracy=0.7 (a number or null for "
             "each: null takes it from the initial population; run_search also takes a pair (accuracy, latency))")


def parse_hv_ref(v: Any) -> tuple[float | None, float | None]:
    """``search.hv_ref`` -> ``(accuracy, latency)`` of the hypervolume reference point (None: chosen
    by the search). Accepted: null, a mapping ``{accuracy: .., latency: ..}`` or a pair
    ``[accuracy, latency]``, each value a number or null. Anything else is one :class:`ConfigError`
    naming the key and the accepted forms (not a TypeError from deep inside the search)."""
    if v is None:
        return None, None
    where = f"search.hv_ref={v!r}"
    if isinstance(v, dict) or (hasattr(v, "get") and hasattr(v, "keys")):
        extra = sorted(str(k) for k in v.keys() if k not in ("accuracy", "latency"))
        if extra:
            raise ConfigError(f"{where} has unknown key(s) {extra}; {_HV_FORMS}")
        pair = [v.get("accuracy"), v.get("latency")]
        names = ["search.hv_ref.accuracy", "search.hv_ref.latency"]
    elif not isinstance(v, (str, bytes)) and hasattr(v, "__len__") and hasattr(v, "__getitem__") and len(v) == 2:
        # a list or tuple (also a numpy array, an omegaconf ListConfig)
        pair = list(v)
        names = ["search.hv_ref[0] (accuracy)", "search.hv_ref[1] (latency)"]
    else:
        raise ConfigError(f"{where} is not a reference point; {_HV_FORMS}")
    out: list[float | None] = []
    for name, x in zip(names, pair):
        if x is None:
            out.append(None)
            continue
        try:
            f = float(x) if not isinstance(x, bool) else math.nan
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise ConfigError(f"{where}: {name}={x!r} is not a number; {_HV_FORMS}")
        if "latency" in name and f <= 0:  # every latency is above it: the hypervolume is 0 whatever the front
            raise ConfigError(f"{where}: {name}={x!r} must be a latency > 0 (the slowest latency that counts, e.g. the "
                              "largest budget; or null)")
        out.append(f)
    return out[0], out[1]


@functools.lru_cache(maxsize=1)
def _packaged() -> dict:
    text = resources.files("hwnas.conf").joinpath("search/nsga2.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def defaults() -> dict:
    """The packaged ``conf/search/nsga2.yaml`` as a plain dict (a fresh copy)."""
    import copy

    return copy.deepcopy(_packaged())


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "hv_ref":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _check(key: str, v: Any, default: Any = None) -> Any:
    field = f"search.{key}"
    example = default if default is not None else None
    if v is None:
        if key in _NULLABLE or key == "hv_ref":
            return None
        raise ConfigError(f"{field}=None: a value is required{f'; e.g. {field}={default}' if default is not None else ''}")
    if key in _BOOL:
        return check_bool(v, field, error=ConfigError)
    if key in _INT:
        return check_int(v, field, _INT[key], null=key in _NULLABLE, what=_NULL_MEANS.get(key), example=example,
                         error=ConfigError)
    if key in _FLOAT:
        if key == "refine.budget_band":
            return check_number(v, field, 0.0, 1.0, hi_open=True, desc="a fraction in [0, 1)", example=example,
                                error=ConfigError)
        lo, hi, what = _RANGE.get(key, (None, None, None))
        return check_number(v, field, lo, None if hi == math.inf else hi, lo_open=key in _POSITIVE, desc=what,
                            example=example, error=ConfigError)
    if key == "hv_ref":
        parse_hv_ref(v)  # checked here (one line naming the key); run_search parses it again
        return v
    if key == "budgets":
        if isinstance(v, bool) or not isinstance(v, (int, float, list, tuple)):
            raise ConfigError(f"{field}={v!r} must be a list of latency budgets; e.g. search.budgets=[15,20] (or [] for none)")
        return v
    if key in _CHOICES:
        return check_choice(v, field, _CHOICES[key], error=ConfigError)
    if key == "seed":
        return check_int(v, field, 0, null=True, what="null: a random seed", example=0, error=ConfigError)
    return v


def search_kwargs(s: Any) -> dict:
    """``cfg.search`` -> keyword arguments of :func:`hwnas.search.nsga.run_search` (see the module doc)."""
    given = plain(s, "search") if s is not None else {}
    if not isinstance(given, dict):
        raise ConfigError(f"search must be a mapping of settings, not {type(given).__name__}")
    algo = given.get("algorithm", "nsga2")
    if algo != "nsga2":
        raise ConfigError(f"search.algorithm={algo!r} is unknown; allowed values: ['nsga2']")
    base = _flat(defaults())
    flat = _flat(given)
    unknown = sorted(set(flat) - set(base))
    if unknown:
        raise ConfigError(f"search has unknown key(s) {unknown}; known keys: {sorted(base)}")
    merged = {**base, **flat}
    out = {}
    for key, kw in KEYWORDS.items():
        out[kw] = _check(key, merged[key], base[key])
    return out


def check_kwargs(given: dict) -> dict:
    """Keyword arguments given to :func:`hwnas.search.nsga.run_search` (a library call), checked like
    the same settings in a config: one :class:`ConfigError` naming the setting (``search.<key>``)."""
    keys = {kw: key for key, kw in KEYWORDS.items()}
    base = _flat(defaults())
    return {kw: _check(keys[kw], v, base[keys[kw]]) if kw in keys else v for kw, v in given.items()}


def cli_settings(s: Any) -> dict:
    """The command's own keys of ``cfg.search`` (plot, overwrite, checkpoint_s), checked."""
    merged = {**_flat(defaults()), **_flat(plain(s, "search") or {})}
    base = _flat(defaults())
    return {k: _check(k, merged[k], base[k]) for k in sorted(CLI_KEYS - {"algorithm"})}
