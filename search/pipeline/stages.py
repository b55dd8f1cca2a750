"""The pipeline's stages, one small class each (see :mod:`.runner` for what a stage is).

1. ``01_proxy``     the proxy predictor (config ``latency``; any latency predictor, e.g. a lookup
                    table), checked to price the space.
2. ``02_samples``   K target archs picked by the adaptation's selection from a pool, measured on the
                    target (config ``samples``; the target is config ``target``).
3. ``03_adapt``     monotonicity check: when the lower confidence bound of SRCC(proxy, target) on the K
                    samples reaches ``adapt.threshold`` the proxy is reused, scaled; else it is adapted.
4. ``04_reduce``    the space profiled with the adapted latency and the accuracy source; the unfriendly
                    choices are reported, and dropped from the search with ``reduce.apply`` (MBConv
                    spaces, ``agree_with_proxy``: only what the proxy's profile drops too).
5. ``05_search``    NSGA-II (+ refinement) in the reduced space, checkpointed every generation, up to
                    ``search_margin`` x the largest budget. Budgets: ``search.budgets``, or quantiles
                    (``budget_quantiles``) of the adapted latency over the reduced space.
6. ``06_remeasure`` the front measured on the target (``max_archs`` spread over latency, and the
                    ``near_budget`` members on each side of every budget); then, with ``calibrate``,
                    the budgets are moved by the median measured / predicted ratio and the members
                    around them are measured too (with ``search_again``, taken from a second search
                    at the moved budgets, in ``again/``). What is not Pareto-optimal on the target is
                    dropped.
7. ``07_export``    ``archs.json``; MBConv spaces also get networks with weights (config ``export``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.predictors.assets import atomic_write, temp_prefix
from hwnas.predictors.base import Predictor
from hwnas.predictors.metrics import srcc
from hwnas.spaces.errors import UserError
from hwnas.spaces.checks import check_bool, check_int, check_number
from hwnas.spaces.io import arch_key, space_from_spec, space_spec

from .evaluate import choose_budgets, front_hv, measure_front, read_csv, srcc_lower_bound, write_csv
from .runner import Context, PipelineError, Stage

log = logging.getLogger("hwnas.pipeline")


class ScaledProxy(Predictor):
    """``c + a * proxy(archs)``: the proxy's ranking at the target's scale."""

    metric = "latency_ms"

    def __init__(self, proxy: Any, a: float, c: float) -> None:
        self.proxy, self.a, self.c = proxy, float(a), float(c)
        self.space = getattr(proxy, "space", None)

    def predict(self, archs: Any) -> np.ndarray:
        return self.c + self.a * np.asarray(self.proxy.predict(archs), dtype=float)


# ============================================================================ settings
# Every stage checks its settings in ``check`` (called for all stages before the run folder is touched),
# so that a typo in a late stage's setting is one line at once, not a traceback after minutes of work.
_DEFAULTS = "defaults in hwnas/conf/pipeline_base.yaml"


_BASE_DEFAULTS: dict | None = None


def base_default(path: str) -> Any:
    """The default of the setting ``path`` in ``pipeline_base.yaml`` (a plain number or word), else None: the
    example an error on that setting gives."""
    global _BASE_DEFAULTS
    if _BASE_DEFAULTS is None:
        import yaml

        try:
            from importlib.resources import files

            _BASE_DEFAULTS = yaml.safe_load(files("hwnas.conf").joinpath("pipeline_base.yaml").read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError):
            _BASE_DEFAULTS = {}
    node: Any = _BASE_DEFAULTS
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    ok = isinstance(node, (int, float, str)) and not isinstance(node, bool) and "$" not in str(node)
    return node if ok else None


def _checked(check: Any, ctx: Context, path: str, what: str, **kw: Any) -> Any:
    example = base_default(path)
    if example is None:  # no plain default to show: say where they are
        return check(ctx.setting(path), path, what="; ".join(filter(None, (what, _DEFAULTS))), error=PipelineError, **kw)
    return check(ctx.setting(path), path, what=what or None, example=example, error=PipelineError, **kw)


def whole(ctx: Context, path: str, low: int, null: bool = False, what: str = "") -> int | None:
    """The setting ``path`` as an integer >= ``low`` (or None with ``null``); else one PipelineError."""
    return _checked(check_int, ctx, path, what, lo=low, null=null)


def number(ctx: Context, path: str, low: float | None = None, high: float | None = None, null: bool = False,
           what: str = "") -> float | None:
    """The setting ``path`` as a finite number in ``[low, high]`` (or None with ``null``); else one PipelineError."""
    return _checked(check_number, ctx, path, what, lo=low, hi=high, null=null)


def flag(ctx: Context, path: str) -> bool:
    return check_bool(ctx.setting(path), path, error=PipelineError)


def number_list(ctx: Context, path: str, low: float, high: float | None, what: str) -> list[float]:
    """The setting ``path`` as a list of numbers in ``(low, high]``; else one PipelineError saying how to write it."""
    v = ctx.setting(path)
    ok = isinstance(v, (list, tuple)) and all(not isinstance(x, bool) and isinstance(x, (int, float)) and np.isfinite(x)
                                              and x > low and (high is None or x <= high) for x in v)
    if not ok:
        rng = f" in ({low:g}, {high:g}]" if high is not None else f" > {low:g}"
        raise PipelineError(f"{path}={v!r} is not a list of numbers{rng}; {what}")
    return [float(x) for x in v]


def check_target(ctx: Context) -> None:
    """Refuse a target config that its class cannot be built from, with one line naming the keys and the
    fix: target=plan on a space it cannot write models of, and keys the class does not take -- e.g. the
    dataset options (target.dataset, target.outside) a dataset preset (pipeline_nasbench201, pipeline_fbnet)
    sets, left under ``target=plan``. A class taking ``**kwargs`` checks its own keys when built."""
    import inspect

    from hwnas.predictors.build import import_target
    from hwnas.predictors.measure.plan import PlanLatency
    from hwnas.spaces.mbconv import MBConvSpace

    node = ctx.setting("target")
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        return  # refused when the target is built, naming target._target_
    cls = import_target(node["_target_"], "target")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a callable without a signature: built later, checking its own keys
        return
    name = node["_target_"].rsplit(".", 1)[-1]
    if cls is PlanLatency and not isinstance(ctx.space, MBConvSpace):
        raise PipelineError(
            f"target=plan ({name}) writes ONNX/TorchScript models of the archs for your own tools to measure and needs an "
            f"MBConv space (ofa_mbv3_w12, proxyless_mobile, ...), not space {ctx.space.name}; run target=plan with "
            f"--config-name pipeline (space=<MBConv space>) target.device=<name>, or keep this preset's dataset target")
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(k for k, v in node.items() if not k.startswith("_") and v is not None and k not in params)
    if bad:
        takes = sorted(f"target.{k}" for k, p in params.items() if k != "space" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        drop = " ".join(f"~target.{k}" for k in bad)
        raise PipelineError(
            f"target ({name}) does not take {', '.join('target.' + k for k in bad)}; it takes {takes}. Options of another "
            f"target (a dataset preset sets target.dataset/target.outside for its dataset target) do not apply: remove them "
            f"({drop}) or choose the target they belong to")


# ============================================================================ 1 proxy
class ProxyStage(Stage):
    name, title, config_key, outputs = "01_proxy", "proxy predictor", "latency", ("proxy.json",)

    def extra_key(self, ctx: Context) -> Any:
        return [space_spec(ctx.space), ctx.setting("seed")]

    def check(self, ctx: Context) -> None:
        whole(ctx, "seed", 0, what="the seed of every random choice of the run")
        flag(ctx, "report")
        space = ctx.space
        mbconv = hasattr(space, "all_block_choices") and hasattr(space, "n_slots")
        categorical = hasattr(space, "n_positions") and hasattr(space, "choices")
        if not (mbconv or categorical):
            raise PipelineError(
                f"space {getattr(space, 'name', '?')!r} ({type(space).__name__}): the pipeline adapts a per-operator "
                "latency model, which needs an MBConv space (ofa_mbv3_w12, proxyless_mobile, ...) or a space of positions x "
                "choices (nasbench201, fbnet: a hwnas.spaces.nasbench201.CategoricalSpace subclass); search this space with hwnas-search")

    def run(self, ctx: Context) -> dict:
        """Check the proxy prices this space and record what it is (any latency predictor works: the
        adaptation reads a non-linear one, e.g. a lookup table, through its own linear fit)."""
        proxy = ctx.proxy
        check = ctx.space.sample(512, np.random.default_rng(int(ctx.setting("seed"))))
        y = np.asarray(proxy.predict(check), dtype=float)
        if y.shape != (len(check),) or not np.isfinite(y).all():
            raise PipelineError(f"latency ({type(proxy).__name__}): the proxy's predictions over random archs of the space "
                                "are not finite numbers, one per arch; choose a proxy that prices this space")
        data = {"predictor": type(proxy).__name__, "latency_range_ms": [float(y.min()), float(np.median(y)), float(y.max())]}
        atomic_write(ctx.run_dir / self.name / "proxy.json", json.dumps(data) + "\n")
        return data

    def load(self, ctx: Context, meta: dict) -> None:
        data = json.loads((ctx.run_dir / self.name / "proxy.json").read_text())
        if not isinstance(data, dict) or "predictor" not in data:
            raise ValueError("not the proxy.json of an hwnas pipeline")


# ============================================================================ 2 samples
class SamplesStage(Stage):
    name, title, config_key, outputs = "02_samples", "K target samples", "samples", ("samples.csv",)
    upstream = ("01_proxy",)

    def extra_key(self, ctx: Context) -> Any:
        key = [ctx.identity, ctx.setting("seed")]
        plan = getattr(ctx.target, "plan_identity", None)
        if plan:  # the samples of target.plan are its archs: another plan (or an edited one) is other samples
            key.append(plan)
        return key

    def check(self, ctx: Context) -> None:
        from hwnas.predictors.adapt import SELECTIONS

        check_target(ctx)  # the first stage that builds the target
        k = whole(ctx, "samples.k", 3, what="the number of target samples")
        pool = whole(ctx, "samples.pool", 3, what="the random archs the samples are chosen from")
        if k > pool:
            raise PipelineError(f"samples.k={k} is more than samples.pool={pool}; choose k <= pool")
        how = ctx.setting("samples.selection")
        if how != "auto" and how not in SELECTIONS:
            raise PipelineError(f"samples.selection={how!r} is unknown; choose from {['auto'] + sorted(SELECTIONS)}")

    def run(self, ctx: Context) -> dict:
        from hwnas.predictors.adapt import select_samples

        rng = np.random.default_rng(int(ctx.setting("seed")))
        target = ctx.target
        fixed = getattr(target, "fixed_samples", None)
        if fixed:  # the archs of a filled plan are the samples
            archs, how = list(fixed), "plan"
            if ctx.setting("samples.k") != len(archs):
                log.info(f"[{self.name}] target.plan holds {len(archs)} measured archs: they are the samples "
                         f"(samples.k={ctx.setting('samples.k')} is not used, nor samples.pool and samples.selection)")
        else:
            pool_n = whole(ctx, "samples.pool", 3)
            pool = target.candidates(pool_n, rng) if hasattr(target, "candidates") else ctx.space.sample(pool_n, rng)
            pool = list(dict.fromkeys(pool))
            k = whole(ctx, "samples.k", 3)
            if not 3 <= k <= len(pool):
                raise PipelineError(f"samples.k={k}: choose between 3 and {len(pool)} target samples (samples.pool={pool_n})")
            how = ctx.setting("samples.selection")
            archs = [pool[i] for i in select_samples(ctx.space, pool, k, how, rng, proxy=ctx.proxy)]
        y = ctx.ledger.measure(archs, ctx.run_dir / self.name, "sample archs")
        p = np.asarray(ctx.proxy.predict(archs), dtype=float)
        write_csv(ctx.run_dir / self.name / "samples.csv",
                  [{"key": arch_key(ctx.space, a), "arch": str(a), "target_latency": repr(float(v)), "proxy_pred": repr(float(q))}
                   for a, v, q in zip(archs, y, p)])
        return {"k": len(archs), "selection": how, "target_range_ms": [float(y.min()), float(y.max())]}

    def load(self, ctx: Context, meta: dict) -> None:
        rows = read_csv(ctx.run_dir / self.name / "samples.csv")
        if len(rows) != meta.get("k", len(rows)):
            raise ValueError(f"{len(rows)} rows, the stage wrote {meta['k']}")
        ctx.put("samples", ([ctx.space.validate(r["key"]) for r in rows], np.array([float(r["target_latency"]) for r in rows])))


# ============================================================================ 3 adapt
class AdaptStage(Stage):
    name, title, config_key, outputs = "03_adapt", "monotonicity check and adaptation", "adapt", ("adapt.json",)
    upstream = ("02_samples",)

    def check(self, ctx: Context) -> None:
        import inspect

        from hwnas.predictors.adapt import METHODS

        number(ctx, "adapt.threshold", what="the lower confidence bound of SRCC(proxy, target) that reuses the proxy (above 1: always adapt)")
        number(ctx, "adapt.confidence", 0.0, 1.0, null=True, what="e.g. 0.95 (null: the point estimate)")
        method = ctx.setting("adapt.method")
        if method not in METHODS:
            raise PipelineError(f"adapt.method={method!r} is unknown; choose from {sorted(METHODS)}")
        kwargs = ctx.setting("adapt.kwargs")
        if kwargs is None:
            return
        if not isinstance(kwargs, dict):
            raise PipelineError(f"adapt.kwargs={kwargs!r} is not a mapping; write e.g. adapt.kwargs={{}} or +adapt.kwargs.<option>=<value>")
        params = list(inspect.signature(METHODS[method]).parameters.values())[3:]  # after (proxy, archs, latencies)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):  # else checked when the method runs
            allowed = sorted(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
            bad = sorted(set(kwargs) - set(allowed))
            if bad:
                raise PipelineError(f"adapt.kwargs has option(s) {bad} that adapt.method={method} does not take; "
                                    f"its options: {allowed}")

    def run(self, ctx: Context) -> dict:
        archs, y = ctx.get("samples")
        p = np.asarray(ctx.proxy.predict(archs), dtype=float)
        r = srcc(p, y)
        thr, conf = float(ctx.setting("adapt.threshold")), ctx.setting("adapt.confidence")
        low = srcc_lower_bound(r, len(y), conf)
        reuse = not np.isnan(low) and low >= thr
        out: dict[str, Any] = {"srcc_proxy_on_samples": r, "srcc_lower_bound": low, "confidence": conf, "threshold": thr}
        if reuse:
            a, c = np.polyfit(p, y, 1) if np.std(p) > 0 else (0.0, float(np.mean(y)))
            if a <= 0:
                a, c = float(np.mean(y) / max(np.mean(p), 1e-12)), 0.0
            out.update(method="proxy", decision="reuse proxy (scaled)", a=float(a), c=float(c))
        else:
            method = ctx.setting("adapt.method")
            out.update(method=method, decision=f"adapt ({method})")
        self._set_predictor(ctx, out)
        model = ctx.get("adapted")
        out["srcc_on_samples_after"] = srcc(np.asarray(model.predict(archs), dtype=float), y)
        if callable(getattr(model, "summary", None)):
            out["summary"] = str(model.summary())  # (the run's log says it)
        target = ctx.target
        if hasattr(target, "data") and hasattr(target, "y"):  # a study: the target's whole column, evaluation only
            m = np.isfinite(target.y)
            every = [a for a, ok in zip(target.data.archs, m) if ok]
            out["eval_srcc_proxy_full"] = srcc(np.asarray(ctx.proxy.predict(every), dtype=float), target.y[m])
            out["eval_srcc_adapted_full"] = srcc(np.asarray(model.predict(every), dtype=float), target.y[m])
        # (the summary, with its fit time, goes to the log and stage.json: adapt.json holds what a rerun reproduces)
        atomic_write(ctx.run_dir / self.name / "adapt.json",
                     json.dumps({k: v for k, v in out.items() if k != "summary"}, indent=1) + "\n")
        return out

    def _set_predictor(self, ctx: Context, info: dict) -> None:
        if info["method"] == "proxy" and "a" in info:  # the check reused the proxy (adapt.method=proxy is fitted below)
            ctx.put("adapted", ScaledProxy(ctx.proxy, info["a"], info["c"]))
            return
        kwargs = ctx.setting("adapt.kwargs") or {}

        def fit() -> Any:  # deterministic, a fraction of a second on the stored samples: made only when needed
            from hwnas.predictors.adapt import adapt

            archs, y = ctx.get("samples")
            extra = {"library": ctx.setting("adapt.library")} if info["method"] == "bayes" else {}
            try:
                return adapt(ctx.proxy, archs, y, method=info["method"], **{**extra, **kwargs})
            except TypeError as exc:  # an option the method does not take (one with **kwargs is checked only here)
                if not kwargs:
                    raise
                raise PipelineError(f"adapt.kwargs={kwargs!r}: adapt.method={info['method']} refuses them ({exc}); "
                                    "remove the option or fix its value") from None

        ctx.lazy("adapted", fit)

    def load(self, ctx: Context, meta: dict) -> None:
        info = json.loads((ctx.run_dir / self.name / "adapt.json").read_text())
        if not ctx.has("adapted"):
            self._set_predictor(ctx, info)
        ctx.put("adapt_info", info)


# ============================================================================ 4 reduce
class ReduceStage(Stage):
    name, title, config_key, outputs = "04_reduce", "profile and reduce the space", "reduce", ("space.json",)
    upstream = ("03_adapt",)

    def extra_key(self, ctx: Context) -> Any:
        return [ctx.setting("accuracy"), ctx.setting("seed")]

    def check(self, ctx: Context) -> None:
        from hwnas.search.profile_cli import reduction_rules

        for name in ("enabled", "apply", "agree_with_proxy"):
            flag(ctx, f"reduce.{name}")
        whole(ctx, "reduce.n_samples", 1, what="background archs per (position, choice) cell")
        whole(ctx, "reduce.min_choices", 1)
        number(ctx, "reduce.latency_tol", 0.0)
        number(ctx, "reduce.accuracy_tol", 0.0)
        reduction_rules(ctx.setting("reduce.rules"))

    def run(self, ctx: Context) -> dict:
        d = ctx.run_dir / self.name
        seed = int(ctx.setting("seed"))
        info: dict[str, Any] = {"dropped": []}
        space = ctx.space
        if not ctx.setting("reduce.enabled"):
            reduced = space
        elif hasattr(space, "n_positions"):
            from .categorical import reduce_categorical

            reduced, rows = reduce_categorical(space, ctx.get("adapted"), ctx.accuracy, n_samples=int(ctx.setting("reduce.n_samples")),
                                               seed=seed, latency_tol=float(ctx.setting("reduce.latency_tol")),
                                               accuracy_tol=float(ctx.setting("reduce.accuracy_tol")),
                                               min_choices=int(ctx.setting("reduce.min_choices")))
            write_csv(d / "profile.csv", rows)
            info["dropped"] = [{"position": x["position"], "op": x["op"]} for x in rows if not x["kept"]]
        else:
            from hwnas.search.profile import profile_space
            from hwnas.search.profile_cli import reduction_rules
            from hwnas.search.reduce import agreed_reduction, reduce_space

            agree = bool(ctx.setting("reduce.agree_with_proxy"))
            latency = {"target": ctx.get("adapted"), **({"proxy": ctx.proxy} if agree else {})}
            prof = profile_space(space, latency=latency, accuracy={"accuracy": ctx.accuracy},
                                 n_samples=int(ctx.setting("reduce.n_samples")), seed=seed)
            prof.to_csv(d / "profile.csv")
            rules = reduction_rules(ctx.setting("reduce.rules"))
            red = reduce_space(prof, "target", "accuracy", rules=rules)
            if agree:  # drop only what the proxy's profile drops too (see agreed_reduction)
                alone = red
                red = agreed_reduction(space, alone, reduce_space(prof, "proxy", "accuracy", rules=rules))
                info["dropped_by_the_adapted_latency_alone"] = [[b for b in a if b not in set(k)] for a, k in zip(alone.dropped, red.dropped)]
            reduced = red.space
            info.update(dropped=red.dropped, describe=red.describe(), dropped_resolutions=red.dropped_resolutions)
        if not ctx.setting("reduce.apply") and reduced is not space:  # profiled and reported, the search keeps every choice
            info.update(unfriendly=info["dropped"], dropped=[], applied=False)
            reduced = space
        atomic_write(d / "space.json", json.dumps(space_spec(reduced), indent=1) + "\n")
        return info

    def load(self, ctx: Context, meta: dict) -> None:
        f = ctx.run_dir / self.name / "space.json"
        ctx.put("search_space", space_from_spec(json.loads(f.read_text()), f))
        ctx.put("dropped", meta.get("dropped") or [])
        ctx.put("unfriendly", meta.get("unfriendly") or [])


# ============================================================================ 5 search
def search_front(ctx: Context, s: dict, d: Path, settings_key: str) -> tuple[Any, Any]:
    """NSGA-II of the pipeline (the ``search`` settings ``s`` with their ``budgets``) over the searched
    space, on the accuracy and the adapted latency; results and checkpoint in ``d``. Returns the
    search result and its checkpoint."""
    from hwnas.search.checkpoint import SearchCheckpoint
    from hwnas.search.cli import CHECKPOINT, search_kwargs
    from hwnas.search.evaluators import make_runner, wrap_predictors
    from hwnas.search.nsga import run_search
    from hwnas.search.results import write_results

    s = dict(s)
    if s.get("max_latency") is None and s["budgets"]:
        s["max_latency"] = float(ctx.setting("search_margin")) * max(s["budgets"])
    skw = search_kwargs(s)
    d.mkdir(parents=True, exist_ok=True)
    ck = SearchCheckpoint(d / CHECKPOINT, settings=settings_key)
    stale = ck.archive_if_stale()  # the checkpoint of other settings: start afresh
    if stale is not None:
        stale.unlink()
    runner = make_runner(ctx.setting("evaluator"))
    try:
        preds = wrap_predictors(ctx.setting("evaluator"), runner, accuracy=ctx.accuracy, latency=ctx.get("adapted"))
        try:
            res = run_search(ctx.get("search_space"), preds["accuracy"], preds["latency"], log=log.info, checkpoint=ck, **skw)
        except ValueError as exc:  # settings the search refuses (budgets out of range, ...): one line
            if isinstance(exc, UserError):
                raise
            raise PipelineError(str(exc)) from exc
    finally:
        runner.close()
    write_results(res, d, plot=bool(s["plot"]))
    return res, ck


class SearchStage(Stage):
    name, title, config_key, outputs = "05_search", "NSGA-II", "search", ("pareto.json",)
    upstream = ("04_reduce",)

    def extra_key(self, ctx: Context) -> Any:
        return [ctx.setting("evaluator.objectives"), ctx.setting("search_margin"), ctx.setting("budget_quantiles")]

    def check(self, ctx: Context) -> None:
        from hwnas.search.cli import search_kwargs

        s = ctx.setting("search")
        budgets = s.get("budgets") if isinstance(s, dict) else None
        if budgets is not None:
            number_list(ctx, "search.budgets", 0.0, None, "write the target latency budgets in ms, e.g. "
                        "search.budgets=[20,30] (null: budget_quantiles of the adapted latency)")
        if not budgets:
            q = number_list(ctx, "budget_quantiles", 0.0, 1.0, "write e.g. "
                            "budget_quantiles=[0.25,0.5,0.75] (or give search.budgets)")
            if not q:
                raise PipelineError("budget_quantiles=[] gives no budget; write e.g. budget_quantiles=[0.25,0.5,0.75], or give "
                                    "search.budgets")
        number(ctx, "search_margin", 1.0, what="the factor over the largest budget the search goes up to")
        search_kwargs({**s, "budgets": [1.0]})  # the search's own settings (budgets: above), each checked with one line

    def run(self, ctx: Context) -> dict:
        d = ctx.run_dir / self.name
        s = dict(ctx.setting("search"))
        if ctx.setting("search.budgets"):
            s["budgets"], budgets_from = [float(b) for b in ctx.setting("search.budgets")], "search.budgets"
        else:
            # derived budgets, decided here only: quantiles over the space that is searched (the reduction may
            # have removed the fastest choices, leaving budgets of the full space below every arch searched)
            q = list(ctx.setting("budget_quantiles"))
            s["budgets"] = choose_budgets(ctx.get("adapted"), ctx.get("search_space"), q, seed=int(ctx.setting("seed")))
            budgets_from = f"quantiles {q} of the adapted latency over 2000 random archs of the searched space"
            log.info(f"budgets {s['budgets']} ms: {budgets_from} (set search.budgets to choose them)")
        res, ck = search_front(ctx, s, d, ctx.keys[self.name])
        return {"n_evals": res.n_evals, "front_size": len(res), "resumed_from_gen": ck.resumed_from, "budgets": s["budgets"],
                "budgets_from": budgets_from}

    def load(self, ctx: Context, meta: dict) -> None:
        from hwnas.search.results import load_front

        ctx.put("budgets", [float(b) for b in meta["budgets"]])  # what the search used (and what the front is judged against)

        ctx.put("front", load_front(ctx.run_dir / self.name / "pareto.json", space=ctx.get("search_space")))


# ============================================================================ 6 re-measure
class RemeasureStage(Stage):
    name, title, config_key, outputs = "06_remeasure", "re-measure the front on the target", "remeasure", ("front.csv",)
    upstream = ("05_search",)

    def check(self, ctx: Context) -> None:
        whole(ctx, "remeasure.max_archs", 1, null=True, what="front members measured on the target")
        whole(ctx, "remeasure.near_budget", 0, what="front members measured on each side of every budget")
        flag(ctx, "remeasure.calibrate")
        flag(ctx, "remeasure.search_again")

    def run(self, ctx: Context) -> dict:
        from hwnas.search.checkpoint import fingerprint

        front = list(ctx.get("front"))
        pred_all = [float(r["latency"]) for r in front]
        again: dict[str, Any] = {}

        def search_again(budgets: list[float]) -> list[float]:
            # the front's best archs sit at the budgets as predicted; the measurements put them over: the
            # same search at the moved budgets finds the best archs under the budgets as measured
            s = {**dict(ctx.setting("search")), "budgets": [float(f"{b:.6g}") for b in budgets], "plot": False}
            log.info(f"measured / predicted on the front: {ctx.get('budgets')[0] / s['budgets'][0]:.3f}; searching again "
                     f"at budgets {s['budgets']} ms (remeasure.search_again)")
            res, _ = search_front(ctx, s, ctx.run_dir / self.name / "again", fingerprint([ctx.keys[self.name], s["budgets"]]))
            new = [{"arch": a, "accuracy": float(x), "latency": float(y)} for a, x, y in zip(res.archs, res.accuracy, res.latency)]
            again.update(budgets=s["budgets"], front_size=len(new))
            front.extend(new)
            return [r["latency"] for r in new]

        idx, meas, ratio = measure_front(pred_all, ctx.setting("remeasure.max_archs"), ctx.get("budgets"),
                                         int(ctx.setting("remeasure.near_budget")),
                                         lambda ii: ctx.ledger.measure([front[i]["arch"] for i in ii], ctx.run_dir / self.name, "front archs"),
                                         calibrate=bool(ctx.setting("remeasure.calibrate")),
                                         measure_more=lambda ii: ctx.ledger.measure([front[i]["arch"] for i in ii],
                                                                                     ctx.run_dir / self.name / "calibrated",
                                                                                     "front archs around the calibrated budgets"),
                                         search_again=search_again if ctx.setting("remeasure.search_again") else None)
        if not again:  # a second front of an earlier run (other measurements) is not this run's
            shutil.rmtree(ctx.run_dir / self.name / "again", ignore_errors=True)
        seen: set = set()  # the second search may find archs of the first front again: keep each arch once
        keep_idx = []
        for i in idx:
            k = arch_key(ctx.space, front[i]["arch"])
            if k not in seen:
                seen.add(k)
                keep_idx.append(i)
        kept = set(keep_idx)
        meas = np.array([m for i, m in zip(idx, meas) if i in kept], dtype=float)
        front = [front[i] for i in keep_idx]
        archs = [r["arch"] for r in front]
        acc = np.array([float(r["accuracy"]) for r in front])
        pred = np.array([float(r["latency"]) for r in front])
        from hwnas.search.problem import pareto_mask

        keep = pareto_mask(acc, meas)
        write_csv(ctx.run_dir / self.name / "front.csv",
                  [{"key": arch_key(ctx.space, a), "arch": str(a), "accuracy": repr(float(x)), "predicted_latency": repr(float(p)),
                    "measured_latency": repr(float(m)), "pareto_on_target": int(k)}
                   for a, x, p, m, k in zip(archs, acc, pred, meas, keep)])
        return {"front_size": len(archs), "kept": int(keep.sum()), "srcc_pred_vs_measured_on_front": srcc(pred, meas),
                "measured_over_predicted": ratio, "searched_again_at": again.get("budgets")}

    def load(self, ctx: Context, meta: dict) -> None:
        rows = read_csv(ctx.run_dir / self.name / "front.csv")
        if len(rows) != meta.get("front_size", len(rows)):
            raise ValueError(f"{len(rows)} rows, the stage wrote {meta['front_size']}")
        final = [{"arch": ctx.space.validate(r["key"]), "accuracy": float(r["accuracy"]), "predicted": float(r["predicted_latency"]),
                  "measured": float(r["measured_latency"])} for r in rows if int(r["pareto_on_target"])]
        ctx.put("final", sorted(final, key=lambda r: r["measured"]))
        ctx.put("remeasured", rows)


# ============================================================================ 7 export
def best_under_budgets(final: list[dict], budgets: list[float]) -> dict[str, dict | None]:
    """The most accurate member of ``final`` with measured latency under each budget."""
    out = {}
    for b in budgets:
        ok = [r for r in final if r["measured"] <= b]
        out[f"{b:g}"] = max(ok, key=lambda r: r["accuracy"]) if ok else None
    return out


#: in ``07_export/models``: the key of the stage whose networks the folder holds
KEY_FILE = "pipeline_key.json"


class ExportStage(Stage):
    name, title, config_key, outputs = "07_export", "export", "export", ("archs.json",)
    upstream = ("06_remeasure",)

    def check(self, ctx: Context) -> None:
        ex = ctx.setting("export")
        formats = ex.get("formats")
        if formats is not None and not (isinstance(formats, list) and all(isinstance(f, str) for f in formats)):
            raise PipelineError(f"export.formats={formats!r} is not a list of formats; write e.g. export.formats=[onnx,torch] "
                                "([] for archs.json only)")
        if formats:
            from hwnas.supernet.export import FORMATS

            bad = [f for f in formats if f not in FORMATS]
            if bad:
                raise PipelineError(f"export.formats={formats!r}: unknown {bad}; the allowed formats: {list(FORMATS)} "
                                    "([] for archs.json only)")
        whole(ctx, "export.max_archs", 1, null=True, what="networks exported with weights")
        whole(ctx, "export.calib_images", 1, what="images for the BN re-calibration")
        flag(ctx, "export.no_calib")
        if ex["checkpoint"] and ex["formats"] and not ex["calib_data"] and not ex["no_calib"]:
            raise PipelineError(
                f"export.checkpoint={ex['checkpoint']!r} without export.calib_data: subnets extracted from a supernet need "
                "their BN statistics re-calibrated on training images, or their accuracy collapses. Set "
                "export.calib_data=<ImageFolder>, or export.no_calib=true to export the supernet's statistics, flagged in every file")
        from hwnas.spaces.mbconv import MBConvSpace

        if formats and not isinstance(ctx.space, MBConvSpace):  # (no network to write: it was skipped without a word)
            raise PipelineError(f"export.formats={formats!r}: hwnas writes networks of MBConv spaces only, not of "
                                f"{ctx.space.name}; set export.formats=[] (the final front goes to archs.json)")

    def run(self, ctx: Context) -> dict:
        from hwnas.spaces.mbconv import MBConvSpace

        ex = ctx.setting("export")
        d = ctx.run_dir / self.name
        final = ctx.get("final")
        fitted = fitted_on_target(ctx, [r["arch"] for r in final])
        items = [{"arch": r["arch"].to_dict(), "arch_str": str(r["arch"]), "accuracy": r["accuracy"], "latency_measured": r["measured"],
                  "latency_predicted": r["predicted"], **({"latency_fitted": True} if f else {})} for r, f in zip(final, fitted)]
        atomic_write(d / "archs.json", json.dumps({"space": space_spec(ctx.space), "target": ctx.identity, "archs": items},
                                                  indent=1) + "\n")
        info: dict[str, Any] = {"n": len(items)}
        formats = list(ex["formats"] or [])
        if formats and isinstance(ctx.space, MBConvSpace) and final:
            info["models"] = self._models(ctx, final, d / "models", formats, ex)
        return info

    def _models(self, ctx: Context, final: list[dict], out: Path, formats: list[str], ex: dict) -> list[str]:
        """Networks with weights for the best arch under each budget (then the most accurate ones), at
        most ``export.max_archs``, through :func:`hwnas.supernet.export.export_many`."""
        from hwnas.predictors.build import abs_path
        from hwnas.supernet.export import ExportError, ExportItem, export_many, load_weights_source

        chosen: list[dict] = []
        for r in best_under_budgets(final, ctx.get("budgets")).values():
            if r is not None and r not in chosen:
                chosen.append(r)
        for r in sorted(final, key=lambda r: -r["accuracy"]):
            if r not in chosen:
                chosen.append(r)
        if ex["max_archs"] is not None:
            chosen = chosen[: int(ex["max_archs"])]
        weights = load_weights_source(ctx.space, ex["checkpoint"])
        fitted = fitted_on_target(ctx, [r["arch"] for r in chosen])
        todo = [ExportItem(r["arch"], accuracy=r["accuracy"], latency=r["measured"], latency_kind="predicted" if f else "measured",
                           extra={"target": ctx.identity, **({"latency_fitted": True} if f else {})})
                for r, f in zip(chosen, fitted)]
        # A rerun after a kill keeps the networks already exported (export_many skips a folder that holds
        # the same export); networks of other settings (this stage's key changed) are not this run's: the
        # folder goes first, in one rename, and a key file says which settings the folder is for.
        key, key_file = ctx.keys[self.name], out / KEY_FILE
        try:
            same = json.loads(key_file.read_text()).get("key") == key
        except (OSError, ValueError, AttributeError):
            same = False
        if out.exists() and not same:
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_prefix(out), suffix=".old"))
            os.replace(out, old / out.name)
            shutil.rmtree(old, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(key_file, json.dumps({"key": key}) + "\n")
        kw = dict(weights=weights, formats=formats, calib_data=abs_path(ex["calib_data"]) if ex["calib_data"] else None,
                  calib_images=int(ex["calib_images"]), allow_uncalibrated=bool(ex["no_calib"]))
        try:
            paths = export_many(ctx.space, todo, out, overwrite=False, **kw)
        except ExportError as exc:  # a folder of these settings that does not hold the same export (an older hwnas)
            if "other settings" not in str(exc) and "not a complete hwnas export" not in str(exc):
                raise
            log.info(f"{exc}; exporting every network again")
            paths = export_many(ctx.space, todo, out, overwrite=True, **kw)
        return [str(Path(p).relative_to(out.parent)) for p in paths]

    def load(self, ctx: Context, meta: dict) -> None:
        """Check what the stage wrote is there and whole: ``archs.json`` and each network's files (a broken
        one makes the stage run again; the networks that are complete are kept, see :meth:`_models`)."""
        d = ctx.run_dir / self.name
        data = json.loads((d / "archs.json").read_text())
        if not isinstance(data, dict) or not isinstance(data.get("archs"), list) or len(data["archs"]) != meta.get("n"):
            raise ValueError(f"{d / 'archs.json'} does not hold the {meta.get('n')} archs this stage wrote")
        from hwnas.supernet.export import missing_files

        for m in meta.get("models") or []:
            bad = missing_files(d / m, json.loads((d / m / "metadata.json").read_text()))
            if bad:  # missing, cut or edited
                raise FileNotFoundError(2, "a file of the exported network is missing or changed", str(d / m / bad[0]))


STAGES = (ProxyStage(), SamplesStage(), AdaptStage(), ReduceStage(), SearchStage(), RemeasureStage(), ExportStage())


def _proxy_device(ctx: Context) -> str | None:
    """The proxy's device as the latency config names it (``latency.device``, ``latency.proxy_device``), or the
    device the built proxy knows (the Note10 tables: note10); None when neither says."""
    node = ctx.setting("latency")
    for k in ("device", "proxy_device"):
        v = node.get(k) if isinstance(node, dict) else None
        if isinstance(v, str) and v:
            return v
    built = ctx.__dict__.get("proxy")
    name = getattr(built, "device_name", None)
    return name if isinstance(name, str) and name else None


def fitted_on_target(ctx: Context, archs: list) -> list[bool]:
    """Per arch, whether the target's value for it is a fit rather than a measurement: a dataset target
    (``target.outside=fit``) prices the archs it does not hold with a linear model of the device column."""
    node = ctx.setting("target")
    if not archs or not isinstance(node, dict) or node.get("outside") != "fit":  # (a measuring target is not built for this)
        return [False] * len(archs)
    holds = getattr(ctx.target, "holds", None)
    if not callable(holds):
        return [False] * len(archs)
    return [not bool(h) for h in holds(archs)]


def summarise_run(ctx: Context) -> dict:
    """The run's numbers (``summary.json``; the report is built from them)."""
    final = ctx.get("final")
    budgets = ctx.get("budgets")
    a = ctx.get("adapt_info")
    hv_acc = (ctx.setting("search.hv_ref") or {}).get("accuracy")
    acc = np.array([r["accuracy"] for r in final])
    meas = np.array([r["measured"] for r in final])
    ref = (float(hv_acc) if hv_acc is not None else (float(acc.min()) if len(acc) else 0.0), max(budgets) if budgets else float(meas.max()))
    fitted = {id(r) for r, f in zip(final, fitted_on_target(ctx, [r["arch"] for r in final])) if f}
    return {
        "space": ctx.space.name,
        "proxy": ctx.setting("latency._target_"),
        "proxy_device": _proxy_device(ctx),
        "target": ctx.identity,
        "k": ctx.info["02_samples"].get("k"),
        "target_measurements": ctx.ledger.count,
        "new_measurements_this_run": ctx.ledger.new,
        "target_measure_s": round(ctx.ledger.seconds, 3),
        "adapt": {k: v for k, v in a.items()},
        "budgets": budgets,
        "budgets_from": (ctx.info.get("05_search") or {}).get("budgets_from"),
        "reduced_space": space_spec(ctx.get("search_space")),
        "dropped": ctx.get("dropped"),
        "unfriendly": ctx.get("unfriendly"),
        "front_size": len(ctx.get("remeasured")),
        "final_size": len(final),
        "best_at_budgets": {b: (None if r is None else {"arch": str(r["arch"]), "accuracy": r["accuracy"], "measured": r["measured"],
                                                        **({"fitted": True} if id(r) in fitted else {})})
                            for b, r in best_under_budgets(final, budgets).items()},
        "fitted_in_final": len(fitted),
        "hv_measured": front_hv(acc, meas, ref),
        "hv_ref": list(ref),
        "stages_ran": list(ctx.ran),
        "stages_skipped": list(ctx.skipped),
    }
