"""The pipeline's runner: a run folder, its stages, and what makes a stage finished.

A stage (:class:`Stage`) is one small class: its folder (``02_samples``), the config key it reads
(``samples``), the upstream stages whose results it uses, what it writes, and a ``stage.json`` with the
hash (``key``) of all of that. The runner (:func:`run_stages`) goes through the stages in order; a stage
whose ``stage.json`` carries the current key and whose outputs exist is finished: it is not run again,
its outputs are read back (``load``) instead. Changing a setting re-runs that stage and the ones
downstream of it, nothing upstream. A stage that runs again loses its ``stage.json`` first, and gets
the new one only after all its outputs are written, so a run killed in between is never read back.

An output that cannot be read back -- truncated, edited, half-copied: its size or checksum is not the
one ``stage.json`` records, or ``load`` fails on it -- makes its stage not finished: the runner logs one
line naming the file and runs the stage again, and the stages downstream of it too. Target
measurements are kept in ``measurements.sqlite`` (:class:`.evaluate.TargetLedger`), not in the stage
outputs, so a stage that runs again measures nothing twice.

Everything a stage reads back from the run folder is data: CSV/JSON numbers, arch keys, and spaces as
:func:`hwnas.spaces.io.space_spec` (rebuilt through the space registry). Nothing in a run folder is
unpickled or names a class to build.

A run folder belongs to one search space and one target (``run.json``): a rerun with another space or
another target measurer in the same folder is refused, naming both.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.predictors.assets import atomic_write, file_sha256, remove_stale_temps
from hwnas.predictors.build import ConfigError
from hwnas.search.checkpoint import fingerprint
from hwnas.spaces.errors import CraftedFileError, UserError, one_line, os_error_message

RUN_FILE = "run.json"
#: what reading a stage's outputs back raises when one is truncated, edited or half-written. Only the read
#: back of a finished stage is guarded: a stage that runs again reads its fresh outputs without this net,
#: so a bug in a ``load`` still shows
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, UserError)


class PipelineError(ConfigError):
    """A pipeline setting or run folder is wrong; the message names the key or file and the fix."""


class Context:
    """What the stages share: the config (plain), the built objects, the run folder, the products."""

    def __init__(self, cfg: Any, run_dir: Path, c: dict) -> None:
        self.cfg = cfg  # the OmegaConf config (for hwnas.predictors.build)
        self.c = c  # the same, resolved to plain containers
        self.run_dir = Path(run_dir)
        self.keys: dict[str, str] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.info: dict[str, dict] = {}
        self._products: dict[str, Any] = {}
        self._makers: dict[str, Callable[[], Any]] = {}

    # the objects of the config, built through the one config -> object path when first needed
    @cached_property
    def space(self) -> Any:
        from hwnas.predictors.build import build_space

        return build_space(self.cfg)

    @cached_property
    def accuracy(self) -> Any:
        from hwnas.predictors.build import build_predictor

        return build_predictor(self.cfg, "accuracy", self.space)

    @cached_property
    def proxy(self) -> Any:
        from hwnas.predictors.build import build_predictor

        return build_predictor(self.cfg, "latency", self.space)

    @cached_property
    def target(self) -> Any:
        from hwnas.predictors.build import build_predictor

        return build_predictor(self.cfg, "target", self.space)

    @cached_property
    def identity(self) -> dict:
        from .evaluate import identity_of

        return identity_of(self.target, self.c.get("target"))

    @cached_property
    def ledger(self) -> Any:
        from .evaluate import TargetLedger

        return TargetLedger(self.run_dir, self.space, self.target, self.identity)

    def section(self, key: str | None) -> Any:
        return self.c.get(key) if key else None

    def setting(self, path: str) -> Any:
        """The config value at ``path`` (``"samples.k"``); its default lives in ``conf/pipeline_base.yaml`` only."""
        node: Any = self.c
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"{path} is not set; the pipeline's settings and their defaults are in hwnas/conf/pipeline_base.yaml")
            node = node[part]
        return node

    def dir(self, name: str) -> Path:
        """The folder of stage ``name``, without the temporary files of a killed run."""
        d = self.run_dir / name
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(d)
        return d

    # products: what a stage hands downstream; a maker builds one only when a later stage asks for it
    def put(self, name: str, value: Any) -> None:
        self._products[name] = value

    def lazy(self, name: str, maker: Callable[[], Any]) -> None:
        self._products.pop(name, None)
        self._makers[name] = maker

    def has(self, name: str) -> bool:
        return name in self._products or name in self._makers

    def get(self, name: str) -> Any:
        if name not in self._products:
            if name not in self._makers:
                raise KeyError(f"pipeline product {name!r} is not available")
            self._products[name] = self._makers.pop(name)()
        return self._products[name]


class Stage:
    """One step of the pipeline (see the module doc). Subclasses set the class attributes and
    implement :meth:`run` (writes the outputs, returns what goes into ``stage.json``) and :meth:`load`
    (hands the outputs downstream; called after :meth:`run` too)."""

    name = ""
    title = ""
    config_key: str | None = None
    upstream: Sequence[str] = ()
    outputs: Sequence[str] = ()

    def extra_key(self, ctx: Context) -> Any:
        """What else decides this stage's result (besides its config section and its upstream)."""
        return None

    def check(self, ctx: Context) -> None:
        """Refuse settings this stage cannot run with (called for every stage before the run folder is
        touched, so a bad setting of a late stage does not wait for the early ones)."""

    def key(self, ctx: Context) -> str:
        return fingerprint([[ctx.keys[u] for u in self.upstream], ctx.section(self.config_key), self.extra_key(ctx)])

    def done(self, ctx: Context, key: str) -> dict | None:
        f = ctx.run_dir / self.name / "stage.json"
        try:
            meta = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        if not all((ctx.run_dir / self.name / o).exists() for o in self.outputs):
            return None
        return meta

    def ran_before(self, ctx: Context) -> bool:
        """Whether this folder holds a finished run of the stage (of whatever settings)."""
        try:
            return isinstance(json.loads((ctx.run_dir / self.name / "stage.json").read_text()).get("key"), str)
        except (OSError, ValueError, AttributeError):
            return False

    def output_files(self, ctx: Context) -> dict:
        """Size and checksum of each output, recorded in ``stage.json`` (:meth:`changed_output` compares them)."""
        d = ctx.run_dir / self.name
        return {o: {"bytes": (d / o).stat().st_size, "sha256": file_sha256(d / o)} for o in self.outputs}

    def changed_output(self, ctx: Context, meta: dict) -> str | None:
        """Why an output is not the file this stage wrote (size or checksum not those of ``stage.json``;
        a ``stage.json`` of an older hwnas records none), or None."""
        rec = meta.get("output_files")
        for o in self.outputs:
            want = rec.get(o) if isinstance(rec, dict) else None
            if not isinstance(want, dict):
                continue
            f = ctx.run_dir / self.name / o
            try:
                if f.stat().st_size != want.get("bytes") or file_sha256(f) != want.get("sha256"):
                    return f"{f} is not the file this stage wrote (its size or checksum differs from {self.name}/stage.json)"
            except OSError as exc:
                return f"{f} cannot be read ({os_error_message(exc)})"
        return None

    def read_back(self, ctx: Context, meta: dict) -> str | None:
        """Hand a finished stage's outputs downstream (:meth:`load`); returns why they cannot be read
        back (one line naming the file), or None. The read errors of every stage are caught here."""
        why = self.changed_output(ctx, meta)
        try:
            self.load(ctx, meta)  # reads data only (see the module doc), also when the checksum differs
        except READ_ERRORS as exc:
            if isinstance(exc, CraftedFileError):
                raise  # a file crafted to name code to run: the folder was tampered with; refused, not replaced
            files = ", ".join(str(ctx.run_dir / self.name / o) for o in self.outputs)
            return why or f"{files} cannot be read back ({type(exc).__name__}: {one_line(str(exc))})"
        return why

    def run(self, ctx: Context) -> dict:
        raise NotImplementedError

    def load(self, ctx: Context, meta: dict) -> None:
        raise NotImplementedError


def run_stages(ctx: Context, stages: Sequence[Stage], log: Callable[[str], None] = print) -> None:
    """Run every stage that is not finished, in order; finished ones are read back. A finished stage
    whose outputs cannot be read back, or whose upstream ran again, runs again (one line says why)."""
    node = ctx.c.get("target") if isinstance(ctx.c, dict) else None
    plan_target = isinstance(node, dict) and str(node.get("_target_", "")).endswith("measure.plan.PlanLatency")
    if plan_target and (ctx.run_dir / "measurements.sqlite").is_file():
        ctx.ledger.check_plans_unchanged(ctx.run_dir)  # numbers from the user's tools: an edited plan is refused
    for st in stages:
        k = st.key(ctx)
        ctx.keys[st.name] = k
        meta = st.done(ctx, k)
        if meta is None and st.ran_before(ctx):
            log(f"[{st.name}] its settings (or an upstream stage's) changed since it last ran in this folder; running it "
                "again (its earlier results here are replaced)")
        if meta is not None:
            ctx.info[st.name] = meta
            again = [u for u in st.upstream if u in ctx.ran]  # ran with the same key: its outputs were unreadable
            why = f"its upstream {', '.join(again)} ran again" if again else st.read_back(ctx, meta)
            if why is None:
                log(f"[{st.name}] finished before, read back")
                ctx.skipped.append(st.name)
                continue
            log(f"[{st.name}] {why}; running it again")
        log(f"[{st.name}] {st.title}")
        # the stage's old stage.json goes before it runs again: a run killed halfway through (new outputs
        # beside the old ones, e.g. a new archs.json while the models are exported) is then run again,
        # never read back as the old result; the new stage.json is written once every output is complete
        (ctx.dir(st.name) / "stage.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        info = st.run(ctx)
        meta = {"stage": st.name, "key": k, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": round(time.perf_counter() - t0, 3), **info, "output_files": st.output_files(ctx)}
        atomic_write(ctx.run_dir / st.name / "stage.json", json.dumps(meta, indent=1, default=json_default) + "\n")
        ctx.ran.append(st.name)
        ctx.info[st.name] = meta
        if isinstance(info.get("summary"), str):
            log(f"[{st.name}] {info['summary']}")
        st.load(ctx, meta)


def check_run_dir(run_dir: Path, identity: dict) -> None:
    """Bind ``run_dir`` to ``identity`` (space and target measurer) on first use; refuse another one."""
    f = run_dir / RUN_FILE
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except json.JSONDecodeError:
            raise PipelineError(f"{f} is not valid JSON; it says which space and target this run folder belongs to. "
                                "Restore it, or use another run folder (hydra.run.dir=...)") from None
        for k in sorted(set(old) | set(identity)):
            if old.get(k) != identity.get(k):
                raise PipelineError(
                    f"run folder {run_dir} belongs to {k}={json.dumps(old.get(k), sort_keys=True)}, this run has "
                    f"{k}={json.dumps(identity.get(k), sort_keys=True)}; its measurements and results are not this "
                    "run's. Use another run folder (hydra.run.dir=...)")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(f, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def known_settings() -> dict:
    """The pipeline's settings as ``conf/pipeline_base.yaml`` defines them (every preset builds on it):
    its keys, and the config groups of its defaults list."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    base = OmegaConf.to_container(OmegaConf.create((files("hwnas.conf") / "pipeline_base.yaml").read_text()), resolve=False)
    groups = {str(next(iter(d))) if isinstance(d, dict) else str(d) for d in base.pop("defaults", [])}
    base.pop("hydra", None)
    return {**{g: None for g in groups - {"_self_"}}, **base}


def check_known_keys(c: dict) -> None:
    """Refuse a key the pipeline does not know (``+samples.kk=3``: a typo that would be ignored), at the top
    level and in each settings block of ``pipeline_base.yaml``; the config groups (space, target, search
    ...) are checked by what they build. One line naming the key and the known ones."""
    known = known_settings()
    where = "see hwnas/conf/pipeline_base.yaml for each setting and its default"
    bad = sorted(k for k in c if k not in known)
    if bad:
        raise PipelineError(f"unknown setting(s) {bad}; the known ones: {sorted(known)}; {where}")
    for block, default in known.items():
        if isinstance(default, dict) and block not in GROUP_BLOCKS and isinstance(c.get(block), dict):
            bad = sorted(k for k in c[block] if k not in default)
            if bad:
                raise PipelineError(f"{block} has unknown key(s) {bad}; the known ones: {sorted(default)}; {where}")


#: blocks of ``pipeline_base.yaml`` that add to a config group (their other keys come from the group)
GROUP_BLOCKS = ("search",)


def json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_pipeline(cfg: Any, run_dir: str | Path, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the pipeline of ``cfg`` in ``run_dir``; returns the summary (also ``summary.json``,
    and ``report.md`` unless ``report=false``). The assets settings apply during the call only."""
    from hwnas.predictors.build import assets_applied

    with assets_applied(cfg):
        return _run_pipeline(cfg, run_dir, log)


def _run_pipeline(cfg: Any, run_dir: str | Path, log: Callable[[str], None] | None = None) -> dict:
    import logging

    from hwnas.predictors.build import plain
    from hwnas.spaces.io import space_spec

    from .evaluate import evaluate_against_full
    from .stages import STAGES, summarise_run

    log = log or logging.getLogger("hwnas.pipeline").info
    c = plain(cfg, "config")
    ctx = Context(cfg, Path(run_dir), c)
    t0 = time.perf_counter()
    try:
        check_known_keys(c)
        for st in STAGES:
            st.check(ctx)
        check_run_dir(ctx.run_dir, {"space": space_spec(ctx.space), "target": ctx.identity})
        remove_stale_temps(ctx.run_dir)
        run_stages(ctx, STAGES, log)
    finally:
        close = getattr(ctx.__dict__.get("target"), "close", None)
        if close is not None:
            close()
    summary = summarise_run(ctx)
    target = ctx.target
    space = ctx.space
    if hasattr(target, "data") and hasattr(space, "n_positions") and len(target.data) == getattr(space, "size", -1):
        budgets = ctx.get("budgets")
        summary["evaluation"] = evaluate_against_full(target, ctx.accuracy, ctx.get("final"), max(budgets) if budgets else None)
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    atomic_write(ctx.run_dir / "summary.json", json.dumps(summary, indent=1, default=json_default) + "\n")
    if ctx.setting("report"):
        from .report import write_report

        write_report(ctx.run_dir, summary)
    return summary
