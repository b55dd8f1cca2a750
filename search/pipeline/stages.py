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
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.predictors.base import Predictor
from hwnas.predictors.metrics import srcc
from hwnas.spaces.errors import UserError
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


# ============================================================================ 1 proxy
class ProxyStage(Stage):
    name, title, config_key, outputs = "01_proxy", "proxy predictor", "latency", ("proxy.json",)

    def extra_key(self, ctx: Context) -> Any:
        return [space_spec(ctx.space), ctx.setting("seed")]

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
        pass


# ============================================================================ 2 samples
class SamplesStage(Stage):
    name, title, config_key, outputs = "02_samples", "K target samples", "samples", ("samples.csv",)
    upstream = ("01_proxy",)

    def extra_key(self, ctx: Context) -> Any:
        return [ctx.identity, ctx.setting("seed")]

    def run(self, ctx: Context) -> dict:
        from hwnas.predictors.adapt import select_samples

        rng = np.random.default_rng(int(ctx.setting("seed")))
        target = ctx.target
        fixed = getattr(target, "fixed_samples", None)
        if fixed:  # the archs of a filled plan are the samples
            archs, how = list(fixed), "plan"
        else:
            pool_n = int(ctx.setting("samples.pool"))
            pool = target.candidates(pool_n, rng) if hasattr(target, "candidates") else ctx.space.sample(pool_n, rng)
            pool = list(dict.fromkeys(pool))
            k = int(ctx.setting("samples.k"))
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
        ctx.put("samples", ([ctx.space.validate(r["key"]) for r in rows], np.array([float(r["target_latency"]) for r in rows])))


# ============================================================================ 3 adapt
class AdaptStage(Stage):
    name, title, config_key, outputs = "03_adapt", "monotonicity check and adaptation", "adapt", ("adapt.json",)
    upstream = ("02_samples",)

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
        target = ctx.target
        if hasattr(target, "data") and hasattr(target, "y"):  # a study: the target's whole column, evaluation only
            m = np.isfinite(target.y)
            every = [a for a, ok in zip(target.data.archs, m) if ok]
            out["eval_srcc_proxy_full"] = srcc(np.asarray(ctx.proxy.predict(every), dtype=float), target.y[m])
            out["eval_srcc_adapted_full"] = srcc(np.asarray(model.predict(every), dtype=float), target.y[m])
        atomic_write(ctx.run_dir / self.name / "adapt.json", json.dumps(out, indent=1) + "\n")
        return out

    def _set_predictor(self, ctx: Context, info: dict) -> None:
        if info["method"] == "proxy":
            ctx.put("adapted", ScaledProxy(ctx.proxy, info["a"], info["c"]))
            return
        kwargs = ctx.setting("adapt.kwargs") or {}

        def fit() -> Any:  # deterministic, a fraction of a second on the stored samples: made only when needed
            from hwnas.predictors.adapt import adapt

            archs, y = ctx.get("samples")
            extra = {"library": ctx.setting("adapt.library")} if info["method"] == "bayes" else {}
            return adapt(ctx.proxy, archs, y, method=info["method"], **{**extra, **kwargs})

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
            from hwnas.search.reduce import agreed_reduction, reduce_space

            agree = bool(ctx.setting("reduce.agree_with_proxy"))
            latency = {"target": ctx.get("adapted"), **({"proxy": ctx.proxy} if agree else {})}
            prof = profile_space(space, latency=latency, accuracy={"accuracy": ctx.accuracy},
                                 n_samples=int(ctx.setting("reduce.n_samples")), seed=seed)
            prof.to_csv(d / "profile.csv")
            red = reduce_space(prof, "target", "accuracy", rules=ctx.setting("reduce.rules"))
            if agree:  # drop only what the proxy's profile drops too (see agreed_reduction)
                alone = red
                red = agreed_reduction(space, alone, reduce_space(prof, "proxy", "accuracy", rules=ctx.setting("reduce.rules")))
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


class ExportStage(Stage):
    name, title, config_key, outputs = "07_export", "export", "export", ("archs.json",)
    upstream = ("06_remeasure",)

    def check(self, ctx: Context) -> None:
        ex = ctx.setting("export")
        if ex["checkpoint"] and ex["formats"] and not ex["calib_data"] and not ex["no_calib"]:
            raise PipelineError(
                f"export.checkpoint={ex['checkpoint']!r} without export.calib_data: subnets extracted from a supernet need "
                "their BN statistics re-calibrated on training images, or their accuracy collapses. Set "
                "export.calib_data=<ImageFolder>, or export.no_calib=true to export the supernet's statistics, flagged in every file")

    def run(self, ctx: Context) -> dict:
        from hwnas.spaces.mbconv import MBConvSpace

        ex = ctx.setting("export")
        d = ctx.run_dir / self.name
        final = ctx.get("final")
        items = [{"arch": r["arch"].to_dict(), "arch_str": str(r["arch"]), "accuracy": r["accuracy"], "latency_measured": r["measured"],
                  "latency_predicted": r["predicted"]} for r in final]
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
        from hwnas.supernet.export import ExportItem, export_many, load_weights_source

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
        todo = [ExportItem(r["arch"], accuracy=r["accuracy"], latency=r["measured"], latency_kind="measured",
                           extra={"target": ctx.identity}) for r in chosen]
        paths = export_many(ctx.space, todo, out, weights=weights, formats=formats, overwrite=True,
                            calib_data=abs_path(ex["calib_data"]) if ex["calib_data"] else None,
                            calib_images=int(ex["calib_images"]), allow_uncalibrated=bool(ex["no_calib"]))
        return [str(Path(p).relative_to(out.parent)) for p in paths]

    def load(self, ctx: Context, meta: dict) -> None:
        pass


STAGES = (ProxyStage(), SamplesStage(), AdaptStage(), ReduceStage(), SearchStage(), RemeasureStage(), ExportStage())


def summarise_run(ctx: Context) -> dict:
    """The run's numbers (``summary.json``; the report is built from them)."""
    final = ctx.get("final")
    budgets = ctx.get("budgets")
    a = ctx.get("adapt_info")
    hv_acc = (ctx.setting("search.hv_ref") or {}).get("accuracy")
    acc = np.array([r["accuracy"] for r in final])
    meas = np.array([r["measured"] for r in final])
    ref = (float(hv_acc) if hv_acc is not None else (float(acc.min()) if len(acc) else 0.0), max(budgets) if budgets else float(meas.max()))
    return {
        "space": ctx.space.name,
        "proxy": ctx.setting("latency._target_"),
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
        "best_at_budgets": {b: (None if r is None else {"arch": str(r["arch"]), "accuracy": r["accuracy"], "measured": r["measured"]})
                            for b, r in best_under_budgets(final, budgets).items()},
        "hv_measured": front_hv(acc, meas, ref),
        "hv_ref": list(ref),
        "stages_ran": list(ctx.ran),
        "stages_skipped": list(ctx.skipped),
    }
