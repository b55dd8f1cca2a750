"""The paper's headline claim, measured for real on this machine: a few target measurements adapt a
proxy as well as a lookup table built on the target itself, for a fraction of the measuring.

Target: this CPU through ONNX Runtime (1 thread, the default protocol). Proxy: the Samsung Note10
lookup tables (a phone). Accuracy: the official OFA predictor. Space: OFA-MobileNetV3 w1.2 at the
tables' resolutions. Three fronts, each re-measured on the target by the pipeline's own rule, the same
for all (``measure_front``): ``--front-cap`` members spread over predicted latency and
``remeasure.near_budget`` members on each side of every budget, then the members around each budget
moved by the first round's measured / predicted ratio, taken from the front searched again at the moved
budgets where the method did so (``remeasure.search_again``: (b)'s pipeline; (c)'s table, its ratio
measured through the worker as (b)'s pipeline measures its front; (a) is reused as is):

(a) the proxy's front reused as is (NSGA-II on the Note10 tables, the README's main search);
(b) ``hwnas-pipeline`` with K target measurements (``--ks``), taken through a loopback Dask worker
    holding the ``hwnas-device`` resource, exactly as a remote device would be measured;
(c) per-device NAS: a lookup table built on the target (``hwnas-measure --build-lut``), searched.

Budgets: three target latencies spanning the front (quantiles 0.2/0.5/0.8 of (c)'s table over 2,000
random archs); (b) and (c) search up to the pipeline's ``search_margin`` x the largest one. Reported:
hypervolume on measured latency (reference: accuracy 0.70, the largest budget), best accuracy under
each budget, and the target measurements each method needed (count and wall seconds). The evaluation
is a measurement of its own (stored as ``<target>-eval``): the picked members of every front, pooled
and shuffled, 5 timing processes each; it is not counted as any method's cost. "What the measurement
resolves" then compares the methods' measurements of the same archs with the evaluation's, and ranks
every evaluated arch by each latency model (SRCC), beside the target's own table. ``--chunked`` adds
the cost of timing the same K archs in one task (as the table's layers are timed, 64 per process);
``--reduced`` adds (b) with the space reduction applied (``reduce.apply=true``).

    nice -n 10 python benchmarks/device_pipeline.py --mirror ../shared/data --out outputs/device_pipeline --chunked --reduced
    python benchmarks/device_pipeline.py --quick          # a smoke run (2 resolutions, small searches)
    nice -n 10 python benchmarks/device_pipeline.py --out outputs/device_pipeline --seeds 0 1 2   # (b) once per seed, and the mean

Every measurement is kept in ``<out>/cpu.sqlite``: a rerun with the same ``--out`` measures nothing twice.
The evaluated members of every front (accuracy, predicted and measured latency) go to ``<out>/fronts.json``.
Goal (issue 14): (b) >= 0.99 of (c)'s HV, the same best accuracy within 0.1 point per budget, for
<= 1/10 of (c)'s measurement time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _cli import at_least  # noqa: E402  (this folder is the script's first import path)



#: timing processes per arch of the evaluation (the pipeline's own measurements use the default, 3)
EVAL_PROCESSES = 5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def compose(name: str, overrides: list[str]):
    from hydra import compose as _compose, initialize_config_module

    with initialize_config_module("hwnas.conf", version_base="1.3"):
        return _compose(name, overrides=overrides)


def search(cfg, budgets, max_latency=None):
    """NSGA-II of the search config ``cfg`` (built through hwnas.predictors.build) at ``budgets``."""
    from omegaconf import OmegaConf

    from hwnas.predictors.build import apply_assets, build
    from hwnas.search.cli import search_kwargs
    from hwnas.search.nsga import run_search

    apply_assets(cfg)
    space, acc, lat = build(cfg)
    s = OmegaConf.to_container(cfg.search, resolve=True)
    s.update(budgets=list(budgets), max_latency=max_latency, verbose=False)
    res = run_search(space, acc, lat, **search_kwargs(s))
    return space, [{"arch": a, "accuracy": float(x), "latency": float(y)} for a, x, y in zip(res.archs, res.accuracy, res.latency)]


def pareto_csv(space, path: Path) -> list[dict]:
    """A search's ``pareto.csv``: each arch with its accuracy and the predicted latency it was searched on."""
    from hwnas.search.pipeline.evaluate import read_csv

    return [{"arch": space.validate(r["arch_str"]), "accuracy": float(r["accuracy"]), "latency": float(r["latency"])}
            for r in read_csv(path)]


def searched_front(space, run: Path) -> list[dict]:
    """The front the pipeline's search found (``05_search``, on the adapted latency). It is judged like (a)'s
    and (c)'s, by the evaluation's own measurements; the pipeline's own re-measuring (``06_remeasure``)
    is its way to choose, measured at another time."""
    return pareto_csv(space, run / "05_search" / "pareto.csv")


def searched_again(space, run: Path) -> list[dict] | None:
    """The front the pipeline searched again at the budgets its measurements moved (``06_remeasure/again``),
    or None when it did not."""
    if json.loads((run / "06_remeasure" / "stage.json").read_text()).get("searched_again_at") is None:
        return None
    return pareto_csv(space, run / "06_remeasure" / "again" / "pareto.csv")


def first_round(front: list[dict], cap: int, budgets: list[float], near: int) -> list[dict]:
    """The members of ``front`` the pipeline's rule measures first (``remeasure_picks``): ``cap`` spread over
    predicted latency, and ``near`` on each side of every budget."""
    from hwnas.search.pipeline.evaluate import remeasure_picks

    return [front[i] for i in remeasure_picks([r["latency"] for r in front], cap, budgets, near)]


def judge(acc, lat, budgets, ref):
    from hwnas.search.pipeline.evaluate import front_hv

    acc, lat = np.asarray(acc), np.asarray(lat)
    best = []
    for b in budgets:
        ok = lat <= b
        best.append(float(acc[ok].max()) if ok.any() else float("nan"))
    return front_hv(acc, lat, ref), best


def cost(out: Path, name: str, seconds: float, fresh: bool) -> float:
    """Wall seconds of a measuring step: this run's when it measured something, else the recorded ones
    (``<out>/costs.json``), so a rerun that finds everything stored reports what it cost."""
    f = out / "costs.json"
    costs = json.loads(f.read_text()) if f.is_file() else {}
    if fresh or name not in costs:
        costs[name] = seconds
        from hwnas.predictors.assets import atomic_write

        atomic_write(f, json.dumps(costs, indent=1) + "\n")
    return float(costs[name])


def adapted_model(cfg, run: Path):
    """The target-latency model a finished pipeline run searched with, rebuilt by the pipeline's own stages
    from its run folder (the K samples and ``adapt.json``; nothing is measured)."""
    from hwnas.predictors.build import plain
    from hwnas.search.pipeline.runner import Context
    from hwnas.search.pipeline.stages import AdaptStage, SamplesStage

    ctx = Context(cfg, run, plain(cfg, "config"))
    SamplesStage().load(ctx, {})
    AdaptStage().load(ctx, {})
    return ctx.get("adapted")


def resolution(store, device: str, ev: dict, space, keys: list[str], order, measured: dict, lut, cfg_a) -> None:
    """What the evaluation can tell apart: the same archs measured by the methods (through the worker)
    and by the evaluation, each measurement's own spread; how each latency model ranks every evaluated
    arch (what a search needs) and each front's own judged members (beside the target's own table)."""
    from hwnas.predictors.adapt.core import macs_of
    from hwnas.predictors.build import build_predictor
    from hwnas.predictors.metrics import srcc

    ours = store.get_many(device, space.name, keys)  # ev: the evaluation's records of the same keys
    both = [k for k in keys if k in ours and k in ev]
    print("\n## What the measurement resolves\n")
    if both:
        q = np.array([ours[k].value / ev[k].value for k in both])
        sp = [np.median([r.spread for r in recs.values() if r.spread is not None] or [np.nan]) for recs in (ours, ev)]
        print(f"- the same {len(both)} archs measured by the methods (through the worker) and by the evaluation: ratio median "
              f"{np.median(q):.3f}, 10-90 % {np.quantile(q, 0.1):.3f} .. {np.quantile(q, 0.9):.3f}; SRCC "
              f"{srcc([ours[k].value for k in both], [ev[k].value for k in both]):.3f}; each measurement's own relative "
              f"spread (median): {sp[0]:.3f} and {sp[1]:.3f}")
    pool = {x["key"]: x["measured_ms"] for m in measured.values() for x in m}
    archs, y = [space.validate(k) for k in pool], np.array(list(pool.values()))
    print(f"\nSRCC with the evaluation's measurements: over all {len(y)} evaluated archs (how well the model ranks what a "
          "search compares), and over the front's own judged members (beside the target's table on the same members):\n")
    print("| latency model | SRCC, all evaluated archs | front members | SRCC on them | the target's table on them |")
    print("|---|---|---|---|---|")
    proxy = build_predictor(cfg_a, "latency", space)
    for name, p in (("Note10 proxy (tables)", proxy.predict(archs)), ("MACs", macs_of(space, archs)), ("the target's table, (c)", lut.predict(archs))):
        print(f"| {name} | {srcc(np.asarray(p, dtype=float), y):.3f} | | | |")
    for name, r, *_ in order:
        m = measured[name]
        ym = [x["measured_ms"] for x in m]
        t = lut.predict([space.validate(x["key"]) for x in m])
        allv = f"{srcc(np.asarray(adapted_model(*r['model']).predict(archs), dtype=float), y):.3f}" if "model" in r else ""
        print(f"| {name} | {allv} | {len(m)} | {srcc([x['predicted_ms'] for x in m], ym):.3f} | {srcc(t, ym):.3f} |")


def start_loopback_device(tmp: Path):
    """A Dask scheduler here and a stock ``dask worker`` process holding the hwnas-device resource."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=0, protocol="tcp", host="127.0.0.1", scheduler_port=0, dashboard_address=None)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--nthreads", "1",
                               "--no-nanny", "--no-dashboard", "--resources", "hwnas-device=1", "--host", "127.0.0.1",
                               "--local-directory", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Client(cluster.scheduler_address, timeout=30) as c:
        c.wait_for_workers(1, timeout=120)
    return cluster, worker


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="outputs/device_pipeline")
    ap.add_argument("--ks", nargs="+", type=at_least(3), default=[10, 20])
    ap.add_argument("--front-cap", type=at_least(1), default=40, help="re-measure at most this many members of each front")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="run (b) once per seed (its samples and search); the table adds the mean over seeds. "
                         "(a) and (c) do not depend on it")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the target (another \"device\"; use its own --out)")
    ap.add_argument("--chunked", action="store_true", help="also run (b) with the K samples timed in one task (chunk K), "
                    "the batching the lookup table's layers get (64 per timing process)")
    ap.add_argument("--reduced", action="store_true", help="also run (b) with the space reduction applied (reduce.apply=true)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for (b)'s pipeline runs, e.g. --set reduce.agree_with_proxy=false (repeatable)")
    ap.add_argument("--eval-name", default="eval", help="the evaluation is stored as device <target>-<name>: a new name "
                    "measures every judged member afresh, all together (an existing name reuses what it has)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 resolutions, small searches, K=5, cap 8")
    args = ap.parse_args()
    device = f"bench-cpu-ort-t{args.threads}"  # the target's name in the store
    logging.disable(logging.INFO)
    os.environ.setdefault("HWNAS_ASSETS_MIRROR", args.mirror)
    from hwnas.predictors.build import apply_assets

    apply_assets({"assets": {"mirror": args.mirror}})  # a wrong mirror is one line before the CPU's table is measured
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = [160, 176, 192, 208, 224]
    small: list[str] = []
    if args.quick:  # (the smoke run's own sizes: said, as they replace what was given)
        res, args.ks, args.front_cap = [160, 224], [5], 8
        print("--quick: resolutions 160/224, K=5, front cap 8, small searches", flush=True)
        small = ["search.pop_size=24", "search.n_gen=6", "search.refine.passes=1"]
    res_o = f"space.resolutions=[{','.join(map(str, res))}]"
    mirror_o = f"assets.mirror={args.mirror}"

    from hwnas.predictors.measure import MeasureConfig, MeasuredLatency
    from hwnas.predictors.measure.lut_build import LAYER_DEFAULTS, build_lut, distinct_layers
    from hwnas.predictors.measure.store import MeasurementStore
    from hwnas.search.pipeline.evaluate import measure_front
    from hwnas.spaces.io import arch_key

    t_all = time.perf_counter()
    store = MeasurementStore(out / "cpu.sqlite")
    rows = {}

    # ---------------------------------------------------------------- (c) a lookup table of this CPU
    cfg_c = compose("config", ["latency=note10_lut", f"latency.tables='{out}/lut/{{r}}_lookup_table.yaml'", res_o, mirror_o, *small])
    from hwnas.predictors.build import build_space

    space = build_space(cfg_c)
    n_layers = len({k for table in distinct_layers(space, res).values() for k in table})
    had = len(store.records(device=device + "-layers"))
    log(f"(c) building the lookup table of this CPU: {n_layers} layers at r={res} ({had} already stored)")
    t0 = time.perf_counter()
    build_lut(space, out / "lut", resolutions=res, config=MeasureConfig(seed=args.seed, threads=args.threads, **LAYER_DEFAULTS), store=store,
              device=device + "-layers", progress=True)
    t_lut = cost(out, "lut", time.perf_counter() - t0, fresh=len(store.records(device=device + "-layers")) > had)
    log(f"(c) table built: {t_lut:.0f} s of measuring")
    from hwnas.predictors.build import build_predictor

    lut = build_predictor(cfg_c, "latency", space)
    y = lut.predict(space.sample(2000, np.random.default_rng(args.seed)))
    budgets = [float(f"{q:.3g}") for q in np.quantile(y, [0.2, 0.5, 0.8])]
    ref = (0.70, max(budgets))
    log(f"budgets on the target: {budgets} ms (quantiles 0.2/0.5/0.8 of the table over 2000 random archs)")
    margin = float(compose("pipeline", [mirror_o]).search_margin)  # the pipeline's margin, for (c) too
    _, front_c = search(cfg_c, budgets, max_latency=margin * max(budgets))
    rows["(c) LUT built on the target, searched"] = {"front": front_c, "count": n_layers, "seconds": t_lut, "what": f"{n_layers} layers"}

    # ---------------------------------------------------------------- (a) the proxy's front as is
    cfg_a = compose("config", ["latency=note10_lut", res_o, mirror_o, *small])
    _, front_a = search(cfg_a, list(cfg_a.search.budgets))
    rows["(a) Note10 front reused"] = {"front": front_a, "count": 0, "seconds": 0.0, "what": "-"}

    remeasure = compose("pipeline", [mirror_o, *args.set]).remeasure  # the pipeline's rule, for every front
    near, calibrate, search_again = int(remeasure.near_budget), bool(remeasure.calibrate), bool(remeasure.search_again)

    # ---------------------------------------------------------------- (b) the pipeline, K through Dask
    cluster, worker = start_loopback_device(out)
    try:
        seeds = args.seeds or [args.seed]
        variants = [(k, False) for k in args.ks] + ([(k, True) for k in args.ks] if args.reduced else [])
        for seed, (k, reduce) in [(sd, v) for sd in seeds for v in variants]:
            tag = f", seed {seed}" if len(seeds) > 1 else ""
            sfx = f"_s{seed}" if seed != 0 else ""
            log(f"(b) hwnas-pipeline, K={k}, target = loopback Dask worker" + (", space reduced" if reduce else ""))
            cfg_b = compose("pipeline", ["target=remote", f"target.scheduler={cluster.scheduler_address}", f"target.device={device}",
                                         f"target.store={out / 'cpu.sqlite'}", "target.progress=false", f"+target.threads={args.threads}", f"samples.k={k}",
                                         f"seed={seed}", f"search.budgets=[{','.join(map(str, budgets))}]",
                                         f"remeasure.max_archs={args.front_cap}", "export.formats=[]", "search.verbose=false",
                                         "search.plot=false", f"reduce.apply={str(reduce).lower()}", res_o, mirror_o, *small, *args.set])
            from hwnas.search.pipeline import run_pipeline
            from hwnas.search.pipeline.evaluate import read_csv

            s = run_pipeline(cfg_b, out / (f"pipeline_k{k}" + ("_reduced" if reduce else "") + sfx))
            run = out / f"pipeline_k{k}{sfx}"  # the K samples are the same archs: their cost is that run's
            if reduce:
                fr = searched_front(space, out / f"pipeline_k{k}_reduced{sfx}")
                st = json.loads((run / "02_samples" / "stage.json").read_text())
                rows[f"(b) K={k}, space reduced{tag}"] = {"front": fr, "count": st["k"], "seconds": st["seconds"],
                                                         "what": f"{st['k']} archs", "decision": s["adapt"]["decision"],
                                                         "dropped": s["dropped"], "again": searched_again(space, out / f"pipeline_k{k}_reduced{sfx}")}
                continue
            st = json.loads((run / "02_samples" / "stage.json").read_text())
            fr = searched_front(space, run)
            rows[f"(b) hwnas adapted, K={k} via Dask{tag}"] = {"front": fr, "count": st["k"], "seconds": st["seconds"],
                                                         "what": f"{st['k']} archs", "decision": s["adapt"]["decision"],
                                                         "dropped": s["unfriendly"], "again": searched_again(space, run),
                                                         "model": (cfg_b, run)}
            log(f"(b) K={k}{tag}: {s['adapt']['decision']}; SRCC on samples {s['adapt']['srcc_proxy_on_samples']:.3f}; "
                f"K samples measured in {st['seconds']:.0f} s")
            if args.chunked and seed == seeds[0]:  # the same K archs timed in one task, as the table's layers are timed 64 per process
                samples = [space.validate(r["key"]) for r in read_csv(run / "02_samples" / "samples.csv")]
                t0 = time.perf_counter()
                chunked = MeasuredLatency(space, device=device, store=out / f"cpu_chunk{k}.sqlite", scheduler=cluster.scheduler_address,
                                          config=MeasureConfig(seed=args.seed, chunk=k, threads=args.threads))
                fresh = chunked.n_measured
                chunked.predict(samples)
                chunked.close()
                rows[f"(b) K={k} samples timed in one Dask task (chunk {k})"] = {
                    "front": fr, "count": k, "what": f"{k} archs",
                    "seconds": cost(out, f"chunk{k}", time.perf_counter() - t0, fresh=chunked.n_measured > fresh)}
        # (c) finished as the pipeline finishes its front (06_remeasure): measured on the target through the
        # worker, the budgets moved by the measured / predicted ratio, and the table searched again there
        if search_again:
            log("(c) the table's front measured on the target; searching again at the budgets the measurements move")
            tgt = MeasuredLatency(space, device=device, store=store, scheduler=cluster.scheduler_address,
                                  config=MeasureConfig(seed=args.seed, threads=args.threads))
            row_c = rows["(c) LUT built on the target, searched"]

            def again_c(bs):
                _, row_c["again"] = search(cfg_c, bs, max_latency=margin * max(bs))
                return [x["latency"] for x in row_c["again"]]

            _, _, r_c = measure_front([x["latency"] for x in front_c], args.front_cap, budgets, near,
                                      lambda ii: tgt.predict([(front_c + row_c.get("again", []))[i]["arch"] for i in ii]),
                                      calibrate=calibrate, search_again=again_c)
            tgt.close()
            log(f"(c) measured / predicted {r_c:.3f} on its front")
    finally:
        worker.kill()
        worker.wait()
        cluster.close()

    # ---------------------------------------------------------------- re-measure every front on the target
    # The evaluation is its own measurement (device "<target>-eval"), not the numbers the pipeline chose
    # with: the picked members of all fronts together, in one shuffled list, 5 processes each, so that
    # neither the time at which a front was measured nor one lucky reading favours a front.
    target = MeasuredLatency(space, device=f"{device}-{args.eval_name}", store=store, progress=True,
                             config=MeasureConfig(seed=args.seed + 1, threads=args.threads, processes=EVAL_PROCESSES))

    def judge_front(r, measure):
        """The members the pipeline's rule picks (measure_front: a first round, then the members around each
        budget moved by the measured ratio, from the second front when the method searched again)."""
        fr, ag = r["front"], r.get("again") or []
        allf = fr + ag
        idx, meas, _ = measure_front([x["latency"] for x in fr], args.front_cap, budgets, near,
                                     lambda ii: measure([allf[i]["arch"] for i in ii]), calibrate=calibrate,
                                     search_again=(lambda bs: [x["latency"] for x in ag]) if ag else None)
        return [allf[i] for i in idx], meas

    def pooled(archs):  # measure what is not stored yet, all together in a shuffled order
        todo = list({arch_key(space, a): a for a in archs}.values())
        np.random.default_rng(args.seed + len(todo)).shuffle(todo)
        if todo:
            target.predict(todo)

    first = {name: first_round(r["front"], args.front_cap, budgets, near) for name, r in rows.items()}
    t0 = time.perf_counter()
    pooled([x["arch"] for fr in first.values() for x in fr])
    wanted = []  # the second rounds, known once the first rounds are measured: pooled too

    def known_or_wanted(archs):
        got = store.get_many(target.device, space.name, [arch_key(space, a) for a in archs])
        wanted.extend(a for a in archs if arch_key(space, a) not in got)
        return [got[arch_key(space, a)].value if arch_key(space, a) in got else 1.0 for a in archs]

    for r in rows.values():
        judge_front(r, known_or_wanted)
    pooled(wanted)
    picked = {name: judge_front(r, target.predict) for name, r in rows.items()}
    n_eval = len({arch_key(space, x["arch"]) for fr, _ in picked.values() for x in fr})
    log(f"evaluation: {n_eval} distinct front members measured ({time.perf_counter() - t0:.0f} s; {EVAL_PROCESSES} processes each)")
    table, measured = [], {}
    for name, r in rows.items():
        fr, meas = picked[name]
        hv, best = judge([x["accuracy"] for x in fr], meas, budgets, ref)
        table.append((name, r, hv, best, len(fr)))
        measured[name] = [{"key": arch_key(space, x["arch"]), "accuracy": x["accuracy"], "predicted_ms": x["latency"], "measured_ms": float(v)}
                          for x, v in zip(fr, meas)]
    from hwnas.predictors.assets import atomic_write

    atomic_write(out / "fronts.json", json.dumps({"budgets": budgets, "hv_ref": list(ref), "fronts": measured}, indent=1) + "\n")
    hv_c = table[0][2]
    best_c = table[0][3]
    print(f"\n## Target = this CPU (ONNX Runtime, {args.threads} thread{'s' if args.threads > 1 else ''}), proxy = Note10 tables, accuracy = OFA predictor\n")
    print(f"Budgets {budgets} ms; hypervolume reference (0.70, {ref[1]} ms); fronts re-measured ({args.front_cap} members spread "
          f"over latency and {near} on each side of every budget, the pipeline's rule, for every front), measured together "
          f"for the evaluation ({EVAL_PROCESSES} processes each).\n")
    print("| front | target measurements | measuring (s) | HV (measured) | HV / (c) | " + " | ".join(f"best top-1 @{b:g} ms" for b in budgets) + " |")
    print("|---|---|---|---|---|" + "---|" * len(budgets))
    order = [t for t in table if t[0].startswith("(a)")] + [t for t in table if t[0].startswith("(b)")] + [table[0]]
    for name, r, hv, best, n in order:
        cells = " | ".join("-" if np.isnan(b) else f"{100 * b:.2f} ({100 * (b - c):+.2f})" for b, c in zip(best, best_c))
        print(f"| {name} | {r['what']} | {r['seconds']:.0f} | {hv:.5f} | {hv / hv_c:.4f} | {cells} |")
    if len(seeds) > 1:  # the mean over seeds of each (b) variant
        print(f"\nMean over seeds {seeds} (min .. max of HV / (c)):\n")
        print("| (b) | measuring (s) | HV / (c) | " + " | ".join(f"best top-1 - (c) @{b:g} ms" for b in budgets) + " |")
        print("|---|---|---|" + "---|" * len(budgets))
        for k, reduce in variants:
            name = f"(b) K={k}, space reduced" if reduce else f"(b) hwnas adapted, K={k} via Dask"
            got = [t for t in table if t[0].startswith(name + ", seed ")]
            ratios = [t[2] / hv_c for t in got]
            diffs = np.array([[b - c for b, c in zip(t[3], best_c)] for t in got], dtype=float)
            cells = " | ".join(f"{100 * np.nanmean(d):+.2f}" for d in diffs.T)
            print(f"| {name} | {np.mean([t[1]['seconds'] for t in got]):.0f} | {np.mean(ratios):.4f} ({min(ratios):.3f} .. {max(ratios):.3f}) | {cells} |")
    for name, r, *_ in order:
        if "decision" in r:
            print(f"\n{name}: {r['decision']}; {'dropped' if 'reduced' in name else 'unfriendly (kept)'} {r['dropped']}")
    keys = list({arch_key(space, x["arch"]) for fr, _ in picked.values() for x in fr})
    recs = store.get_many(target.device, space.name, keys)
    resolution(store, device, recs, space, keys, order, measured, lut, cfg_a)
    print(f"\nre-measuring (the evaluation): {len(keys)} distinct archs, median {np.median([v.value for v in recs.values()]):.1f} ms; "
          f"total wall time {time.perf_counter() - t_all:.0f} s (this run)")
    return 0


if __name__ == "__main__":
    from _cli import run

    run(main)
