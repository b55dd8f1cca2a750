"""Measuring on the target and judging the result: the run's measurement ledger, the confidence bound
of a rank correlation, the budgets, and the front's hypervolume against the whole target data (when a
study has it)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_write
from hwnas.predictors.base import arch_text, predict_array
from hwnas.spaces.errors import UserError
from hwnas.spaces.io import arch_key

from ..problem import hypervolume, pareto_mask
from .runner import PipelineError


class WaitingForMeasurements(UserError):
    """The target is measured with the user's own tools: a plan was written; fill it and rerun."""


def srcc_lower_bound(r: float, n: int, confidence: float | None = 0.95) -> float:
    """One-sided lower confidence bound of a Spearman correlation from ``n`` samples (Fisher z with the
    Bonett-Wright standard error ``sqrt((1 + r^2 / 2) / (n - 3))``). ``confidence=None``: ``r`` itself.
    K diverse samples span the latency range, where ranking is easy, so the point estimate is
    optimistic; the bound keeps the proxy only when the evidence is strong."""
    if confidence in (None, 0) or math.isnan(r):
        return r
    if n <= 3:
        return -1.0
    from scipy.stats import norm

    r = max(min(r, 0.999999), -0.999999)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    return float(math.tanh(math.atanh(r) - norm.ppf(float(confidence)) * se))


def identity_of(target: Any, node: Any) -> dict:
    """What identifies a target measurer: its ``identity`` (device + protocol, dataset + column, plan
    device) or else its config."""
    ident = getattr(target, "identity", None)
    if ident is None:
        ident = {k: v for k, v in dict(node or {}).items() if k not in ("progress",)}
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


class TargetLedger:
    """Every target measurement of a run, in ``<run>/measurements.sqlite`` keyed by (measurer identity,
    arch key) and committed one arch at a time: a rerun never measures an arch twice, and a run folder
    never hands one target's numbers to another."""

    def __init__(self, run_dir: Path, space: Any, target: Any, identity: dict) -> None:
        from hwnas.predictors.measure.store import MeasurementStore

        self.space, self.target, self.identity = space, target, identity
        self.store = MeasurementStore(Path(run_dir) / "measurements.sqlite")
        self.device = "target-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.store.register_device(self.device, identity)
        self.new = 0
        self.seconds = 0.0

    @property
    def count(self) -> int:
        return len(self.store.records(device=self.device))

    def measure(self, archs: Sequence[Any], stage_dir: Path, what: str) -> np.ndarray:
        """Target latency of ``archs`` (ms): from the ledger, else measured now (a plan target: from a
        filled plan in ``stage_dir/plan``, else a plan is written there and the run stops)."""
        keys = [arch_key(self.space, a) for a in archs]
        known = {k: r.value for k, r in self.store.get_many(self.device, self.space.name, keys).items()}
        todo = [k for k in dict.fromkeys(keys) if k not in known]
        if todo:
            todo_archs = [self.space.validate(k) for k in todo]
            t0 = time.perf_counter()
            try:
                if hasattr(self.target, "request"):  # numbers from the user's own tools
                    self._from_plan(todo, todo_archs, stage_dir / "plan", what, known)
                else:  # a chunk of the measuring protocol at a time, committed when measured; a measurer that
                    # commits each arch to its own store file gets them all at once (it overlaps export and
                    # timing). An in-memory store (target.store=null) keeps nothing over a kill: chunk by chunk.
                    step = getattr(getattr(self.target, "config", None), "chunk", 1)
                    from hwnas.predictors.measure.store import MeasurementStore

                    own = getattr(self.target, "store", None)
                    if isinstance(own, MeasurementStore) and own.path != ":memory:":
                        step = len(todo)
                    for s in range(0, len(todo), step):
                        values = self._predict(todo_archs[s:s + step])  # checked before any is committed
                        for k, v in zip(todo[s:s + step], values):
                            self._commit(k, float(v), known)
            finally:
                self.seconds += time.perf_counter() - t0
        return np.array([known[k] for k in keys], dtype=float)

    def _predict(self, archs: list) -> np.ndarray:
        """The target's latencies of ``archs``, checked as a whole before any is committed: one number per arch
        asked, finite and > 0 -- else one error naming the target's class and what was wrong (a value too
        many would otherwise shift every latency onto the wrong arch, and stay in the ledger)."""
        return predict_array(self.target, archs, "target", positive=True)

    def _commit(self, key: str, value: float, known: dict) -> None:
        if not (math.isfinite(value) and value > 0):
            raise PipelineError(f"target: the measurer returned {value!r} ms for {key[:80]}; a latency must be positive")
        self.store.put(self.device, self.space.name, key, value)
        known[key] = value
        self.new += 1

    def _from_plan(self, todo: list[str], archs: list, plan_dir: Path, what: str, known: dict) -> None:
        """Commit the latencies of ``archs`` (keys ``todo``) from the user's filled plans; raise
        :class:`WaitingForMeasurements` when some are in none (a plan for them is written in ``plan_dir``).

        The plan in ``plan_dir`` may have been written by an earlier run of this stage with other settings
        (``search.budgets`` changed after the front's plan was written): it asks for other archs, and
        filling it would end in the same request again, forever. What is filled in it is real measurements
        of this target: they go into the ledger; the plan is set aside (``plan.old-N``, kept) and a new one
        asks for what is still missing."""
        from hwnas.predictors.measure.plan import PlanMissing, plan_keys, plan_started, read_plan, set_aside

        csv_path = plan_dir / "plan.csv"
        moved: Path | None = None
        if csv_path.is_file() or (plan_dir / "plan.json").is_file():
            if csv_path.is_file() and set(todo) <= plan_keys(csv_path):  # a broken plan.json: one PlanError naming it
                if plan_started(csv_path) and str(csv_path) not in self.target.plans:
                    self.target.add_plan(csv_path)  # a partly filled plan: the error names the first empty row
            else:
                if plan_started(csv_path):
                    self.target.add_plan(csv_path, partial=True)  # device and filled rows checked
                    _, got, y, _ = read_plan(csv_path, partial=True)
                    keys = [arch_key(self.space, a) for a in got]
                    stored = self.store.get_many(self.device, self.space.name, keys)
                    for k, v in zip(keys, y):
                        if k not in stored:
                            self._commit(k, float(v), known)
                moved = set_aside(plan_dir)
                if str(csv_path) in self.target.plans:  # the path now names the next plan
                    self.target.plans.remove(str(csv_path))
        rest = [(k, a) for k, a in zip(todo, archs) if k not in known]
        if not rest:
            return
        try:
            values = self._predict([a for _, a in rest])
        except PlanMissing as exc:
            missing = {arch_key(self.space, a) for a in exc.archs}
            have = [(k, a) for k, a in rest if k not in missing]
            if have:  # measured in a plan already: kept whatever happens next
                for (k, _), v in zip(have, self._predict([a for _, a in have])):
                    self._commit(k, float(v), known)
            path = self.target.request(exc.archs, plan_dir, note=what)
            moved = moved or getattr(self.target, "set_aside_to", None)
            before = (f"; the plan there before asked for other archs (this stage ran again with other settings): its filled "
                      f"rows were kept, the folder is now {moved}") if moved else ""
            raise WaitingForMeasurements(
                f"the target is measured with your own tools: measure the {len(exc.archs)} {what} in {path.parent} and fill "
                f"the latency_ms column of {path} (see {path.parent / 'INSTRUCTIONS.md'}), then run the same command again"
                + before
            ) from None
        self._check_units([a for _, a in rest], values, csv_path)
        for (k, _), v in zip(rest, values):
            self._commit(k, float(v), known)

    def _check_units(self, archs: list, values: np.ndarray, csv_path: Path) -> None:
        """Numbers of a later plan against this device's earlier ones (time per MAC): 30x off or more is a
        different unit (a re-measure plan filled in microseconds was stored as ms, and the run ended with an
        empty front). A plan's own check (:func:`~hwnas.predictors.measure.plan.read_plan`) cannot see it
        when the device is fast enough for microseconds to look like a plausible throughput."""
        from hwnas.predictors.measure.plan import MIXED_UNITS, PlanError

        macs_of = getattr(self.space, "macs", None)
        earlier = self.store.records(device=self.device, space=self.space.name)
        if not callable(macs_of) or len(earlier) < 3 or not len(archs):
            return
        before = np.median([r.value / max(macs_of(self.space.validate(r.arch)), 1.0) for r in earlier])
        now = np.median([float(v) / max(macs_of(a), 1.0) for a, v in zip(archs, values)])
        ratio = float(now / before)
        if ratio > MIXED_UNITS or ratio < 1 / MIXED_UNITS:
            size = f"{ratio:.0f}x" if ratio > 1 else f"1/{1 / ratio:.0f} of"
            raise PlanError(
                f"{csv_path}: its values are {size} this device's earlier measurements per MAC ({len(earlier)} in "
                f"{self.store.path}); a different unit? write every value in milliseconds")

    def check_plans_unchanged(self, run_dir: Path) -> None:
        """A filled plan of this run edited after its numbers were taken (a value corrected, or filled in
        another unit and fixed) used to be ignored for good: the ledger answers first. One error naming the
        row and what to do instead."""
        from hwnas.predictors.measure.plan import PlanError, plan_started, read_plan

        for csv_path in sorted(Path(run_dir).glob("*/**/plan/plan.csv")):
            if not plan_started(csv_path):
                continue
            try:
                _, got, y, meta = read_plan(csv_path, partial=True)
            except PlanError:
                continue  # a plan being filled: read (and checked) when its stage asks for it
            keys = [arch_key(self.space, a) for a in got]
            stored = self.store.get_many(self.device, self.space.name, keys)
            for k, v in zip(keys, y):
                if k in stored and stored[k].value != float(v):
                    raise PlanError(
                        f"{csv_path}: the value of {arch_text(self.space.validate(k))} is now {float(v):g} ms; "
                        f"{stored[k].value:g} ms was taken from it before and the stages after it used that. To use "
                        "corrected numbers, run the pipeline again in a new folder (hydra.run.dir=...) with target.plan= "
                        "a plan holding them, or restore the value")


def choose_budgets(predictor: Any, space: Any, quantiles: Sequence[float], n: int = 2000, seed: int = 0) -> list[float]:
    """Latency budgets at ``quantiles`` of ``predictor`` over ``n`` random archs (3 significant digits)."""
    archs = space.sample(int(n), np.random.default_rng(seed))
    y = np.asarray(predictor.predict(archs), dtype=float)
    return [float(f"{q:.3g}") for q in np.quantile(y[np.isfinite(y)], list(quantiles))]


def remeasure_picks(pred: Sequence[float], cap: int | None, budgets: Sequence[float], near: int = 0) -> np.ndarray:
    """Which front members to measure on the target, as indices into ``pred`` (their predicted
    latencies), by increasing predicted latency: ``cap`` of them spread over the latency range (all
    when ``cap`` is None), plus the ``near`` members on each side of every budget. The best arch under
    a budget is then chosen among measured archs around it: a spread alone leaves gaps there as wide
    as its step, and a prediction a little off moves the best arch across the budget."""
    pred = np.asarray(pred, dtype=float)
    n = len(pred)
    order = np.argsort(pred, kind="stable")
    if cap is None or n <= int(cap):
        picks = set(order.tolist())
    else:
        picks = set(order[np.unique(np.linspace(0, n - 1, int(cap)).round().astype(int))].tolist())
    near = int(near)
    if near > 0:
        for b in budgets:
            pos = int(np.searchsorted(pred[order], float(b), side="right"))  # order[:pos] are predicted under b
            picks.update(order[max(0, pos - near): pos + near].tolist())
    return np.array(sorted(picks, key=lambda i: (pred[i], i)), dtype=int)


#: measure_front searches again only when the front's measured / predicted ratio is off by more than this
#: (closer, the moved budgets move less than one measurement's noise)
SEARCH_AGAIN_TOL = 0.01


def measure_front(pred: Sequence[float], cap: int | None, budgets: Sequence[float], near: int, measure: Any,
                  calibrate: bool = True, measure_more: Any = None, search_again: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Measure the front members that :func:`remeasure_picks` names; with ``calibrate``, then also the
    ``near`` members on each side of every budget *as the measurements place it*.

    A search picks archs its predictor finds fast, so on the front the predictions err low (the
    winner's curse: 8-9 % on this machine's CPU with K=10-20 samples), and the members predicted just
    under a budget are measured over it. The median ratio measured / predicted of the first round
    moves each budget into the predictor's scale (``budget / ratio``), and the members around the moved
    budgets are measured too. ``measure(indices)`` returns their latencies; ``measure_more``, if
    given, measures the second round (a plan target writes it as a plan of its own).

    ``search_again(moved_budgets)``, if given, is called when the ratio is off by more than
    :data:`SEARCH_AGAIN_TOL`; it returns the predicted latencies of another front, searched at the moved
    budgets (its refinement finds the best arch the predictor knows under each of them; the first
    front has them at the original budgets, which the measurements put over). The second round then
    picks among those, whose indices follow the first front's (``len(pred) + j``). Returns the
    measured indices (by increasing predicted latency), their latencies and the ratio (1.0 without a
    second round).
    """
    pred = np.asarray(pred, dtype=float)
    idx = remeasure_picks(pred, cap, budgets, near)
    got = dict(zip(idx.tolist(), np.asarray(measure(idx), dtype=float).tolist()))
    ratio = 1.0
    if calibrate and int(near) > 0 and len(got) >= 3:
        ok = [i for i in got if pred[i] > 0]
        ratio = float(np.median([got[i] / pred[i] for i in ok])) if ok else 1.0
        moved_budgets = [float(b) / ratio for b in budgets]
        if search_again is not None and abs(ratio - 1.0) > SEARCH_AGAIN_TOL:
            n = len(pred)
            pred = np.concatenate([pred, np.asarray(search_again(moved_budgets), dtype=float)])
            moved = n + remeasure_picks(pred[n:], 0, moved_budgets, near)
        else:
            moved = remeasure_picks(pred, 0, moved_budgets, near)
        more = np.array([i for i in moved.tolist() if i not in got], dtype=int)
        if len(more):
            got.update(zip(more.tolist(), np.asarray((measure_more or measure)(more), dtype=float).tolist()))
    order = np.array(sorted(got, key=lambda i: (pred[i], i)), dtype=int)
    return order, np.array([got[i] for i in order], dtype=float), ratio


def front_hv(acc: np.ndarray, lat: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume of the Pareto-optimal points of (accuracy, latency) against ``ref = (acc, lat)``."""
    acc, lat = np.asarray(acc, dtype=float), np.asarray(lat, dtype=float)
    if not len(acc):
        return 0.0
    m = pareto_mask(acc, lat)
    return float(hypervolume(acc[m], lat[m], float(ref[0]), float(ref[1])))


def evaluate_against_full(target: Any, accuracy: Any, final: list[dict], lat_ref: float | None) -> dict:
    """For a study whose target is a dataset covering the whole space: hypervolume of the final front
    (true latency) against that of the true front over every arch. Reference: the dataset's lowest
    accuracy and the largest budget (or the slowest arch)."""
    ds, y = target.data, target.y
    acc_all = np.asarray(accuracy.predict(ds.archs), dtype=float)
    m = np.isfinite(y)
    lat_ref = float(lat_ref) if lat_ref else float(y[m].max())
    ref = (float(acc_all[m].min()), lat_ref)
    tm = pareto_mask(acc_all[m], y[m])
    true_front = np.flatnonzero(m)[tm]
    hv_true = float(hypervolume(acc_all[true_front], y[true_front], *ref))
    hv_ours = front_hv(np.array([r["accuracy"] for r in final]), np.array([r["measured"] for r in final]), ref)
    return {"hv_ref": list(ref), "hv_final": hv_ours, "hv_true_front": hv_true,
            "hv_ratio": hv_ours / hv_true if hv_true > 0 else float("nan"),
            "true_front": [{"arch": str(ds.archs[i]), "accuracy": float(acc_all[i]), "latency": float(y[i])}
                           for i in true_front[np.argsort(y[true_front])]]}


def write_csv(path: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return atomic_write(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
