"""``hwnas-search`` / ``python -m hwnas.search``: the hydra entry point of the NSGA-II search.

    hwnas-search space=ofa_mbv3_w12 accuracy=ofa_predictor latency=note10_lut assets.mirror=../shared/data
    hwnas-search search.pop_size=200 search.n_gen=100 search.seed=3 search.refine.passes=0
    hwnas-search --multirun search.budgets=[15],[20],[25]
    hwnas-search accuracy._target_=mypkg.MyPredictor +accuracy.some_arg=1   # any predictor by _target_

The config tree ships in the package ``hwnas.conf`` (``config.yaml`` + groups ``space/``,
``accuracy/``, ``latency/``, ``search/``, ``evaluator/``); objects are built by
:func:`hwnas.predictors.build.build`. The run folder is ``outputs/search/<space>-<key>``, where the key
is a fingerprint of the settings that decide the results and of the contents of the local files they
name (``accuracy.path=acc_mlp.pt``, ``latency.tables=luts``: retrained or re-measured, they are another
search), so the same command finds its own folder again:

* an unfinished search there (killed, Ctrl-C, SIGTERM) resumes from its checkpoint -- also with
  ``search.overwrite=true``, and also when a power loss left ``pareto.json`` unreadable;
* a finished one is reported, not redone (``search.overwrite=true`` searches again);
* results of *other* settings there (``hydra.run.dir=`` given twice), and result files hwnas did not
  write (``pareto.csv`` ... without a ``pareto.json`` or checkpoint), are never overwritten silently;
* a run refused before any result (one line, exit 2) leaves no run folder behind if it made one (a
  folder that existed before is kept); the space name, part of the folder's path, is a plain name.

SIGINT/SIGTERM write the front found so far (``pareto.json`` with ``"partial": true``) and the
checkpoint, then exit with 130/143. During a long search the same partial results are refreshed
whenever the checkpoint is (``search.checkpoint_s``). Errors are one line (``hwnas-search: error:``).
Under ``--multirun`` each job runs in the folder a single run of its settings uses (so the same sweep
run again reports its finished jobs and resumes the unfinished ones); a failing job is recorded
(``failed.json`` in its folder) and the sweep goes on, then exits with status 2; :class:`SweepSummary`
writes ``jobs.json``, ``summary.md`` / ``summary.csv`` and ``fronts.png`` into the sweep folder.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hwnas.predictors.assets import remove_stale_temps
from hwnas.predictors.build import ConfigError, apply_assets, build, plain  # noqa: F401  (ConfigError re-exported)
from hwnas.spaces.errors import UserError, cli_errors, error_line, run_hydra
from hwnas.spaces.io import json_digest

from .settings import cli_settings, search_kwargs  # noqa: F401  (search_kwargs re-exported for the pipeline)

log = logging.getLogger("hwnas.search")

CONFIG_PATH = "pkg://hwnas.conf"
CONFIG_NAME = "config"
PROG = "hwnas-search"
CHECKPOINT = "checkpoint.npz"
#: search keys that do not change the results (left out of the settings key)
_COSMETIC = {"verbose", "plot", "threads", "overwrite", "checkpoint_s"}


# ============================================================================ settings key / run folder
def settings_key(cfg: Any) -> str:
    """Fingerprint of what decides a search's results: space, predictors (asset mirrors aside),
    evaluator, search settings (display settings aside), and the contents of the local files those
    settings name (:func:`local_files`): a predictor retrained, or latencies re-measured, into the same
    path are other results, so they get another key (another run folder, no stale "nothing to do", no
    archive of the old predictor resumed with the new one). Settings that name no local file keep the
    key they always had, so existing run folders stay valid."""
    from .checkpoint import fingerprint

    def node(name: str) -> Any:
        try:
            v = OmegaConf.to_container(cfg[name], resolve=True) if OmegaConf.is_config(cfg) else cfg.get(name)
        except Exception:  # noqa: BLE001 - an unresolved value; the run reports it with one line later
            v = repr(cfg.get(name)) if hasattr(cfg, "get") else None
        return v

    parts: dict[str, Any] = {}
    for name in ("space", "accuracy", "latency", "evaluator", "search"):
        v = node(name) if (hasattr(cfg, "get") and cfg.get(name) is not None) else None
        if isinstance(v, dict):
            v = {k: x for k, x in v.items() if k != "mirror" and not (name == "search" and k in _COSMETIC)
                 and not (name == "evaluator" and k in _CLUSTER)
                 and not (name == "accuracy" and v.get("_target_") == _SUPERNET and k in _HOW_IT_RUNS)
                 and not ((name, k) in _ADDED_NULL and x is None)}
        parts[name] = v
    local = local_files({k: parts[k] for k in _FILE_NODES})
    for where in local:  # a local file counts by its contents, not by how its path was written
        _set_path(parts, where, "<local file>")  # (accuracy.checkpoint=ck.pth and =/abs/ck.pth: one search)
    files = {**local, **plugin_files({k: parts[k] for k in _FILE_NODES})}
    if files:  # only then: the key of settings without local files is unchanged
        parts["files"] = files
    return fingerprint(parts)


def _set_path(tree: Any, where: str, value: Any) -> None:
    """Set ``tree``'s value at ``where`` (as :func:`local_files` names it: ``accuracy.paths[0]``)."""
    steps: list[Any] = []
    for part in where.split("."):
        steps.append(part.split("[", 1)[0])
        steps += [int(i) for i in re.findall(r"\[(\d+)\]", part)]
    node = tree
    for st in steps[:-1]:
        node = node[st]
    node[steps[-1]] = value


#: how the supernet's accuracies are computed, not what they are: loader processes, the progress bar, the
#: torch device, the cache file (a search resumed with fewer workers was another search, started over)
_HOW_IT_RUNS = ("num_workers", "progress", "device", "cache")
_SUPERNET = "hwnas.supernet.accuracy.SupernetAccuracy"


#: settings added to the configs later: at null (their default) they leave the key as it was before them,
#: so that run folders made before keep resuming
_ADDED_NULL = {("space", "width_mult")}


#: where an evaluator=dask search runs (not what it computes: the same values either way), so not part of
#: the key -- a search resumes on another cluster, or on a restarted scheduler at a new address
_CLUSTER = ("address", "n_workers", "threads_per_worker", "processes")
#: the config nodes whose string values may name local files (search settings name none)
_FILE_NODES = ("space", "accuracy", "latency", "evaluator")
#: keys that never name an input of the results: class paths, asset mirrors, and files the run itself
#: writes and grows -- measurement stores and caches of evaluations (``latency.store``,
#: ``accuracy.cache``): keyed by content, a killed run's store would change its key and the rerun would
#: not find its folder to resume
_NOT_INPUTS = {"_target_", "_convert_", "_recursive_", "_partial_", "mirror", "store", "cache"}


def local_files(settings: Any, prefix: str = "") -> dict[str, str]:
    """``{"accuracy.path": "sha256:...", ...}``: a content fingerprint of every existing local file or
    folder a string value of ``settings`` names (relative to the directory the command was started
    in, as the predictors read them; ``{r}``-style templates are matched like globs). Asset names
    (``ofa/acc_predictor.pth``: fetched from the mirror or the cache), class paths and other words
    name no local file and add nothing. Large files and folders: see
    :mod:`hwnas.predictors.fingerprint`."""
    from hwnas.predictors.build import abs_path
    from hwnas.predictors.fingerprint import fingerprint_paths

    out: dict[str, str] = {}
    if isinstance(settings, dict):
        for k, v in settings.items():
            if str(k) not in _NOT_INPUTS:
                out.update(local_files(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(settings, (list, tuple)):
        for i, v in enumerate(settings):
            out.update(local_files(v, f"{prefix}[{i}]"))
    elif isinstance(settings, str) and settings.strip() not in ("", ".", "..") and "\n" not in settings:
        try:
            text = os.path.expanduser(settings)
            if "{" in text:  # a template such as luts/{r}_lookup_table.yaml: every file it matches
                pattern = abs_path(re.sub(r"\{[^{}]*\}", "*", glob.escape(text)))
                found = sorted(Path(p) for p in glob.glob(pattern))
            else:
                p = Path(abs_path(text))
                found = [p] if p.exists() else []
            cwd = Path.cwd().resolve()
            found = [p for p in found if p.resolve() not in (cwd, *cwd.parents)]  # never the run's own tree
            if found:
                out[prefix] = fingerprint_paths(found)
        except (OSError, ValueError):  # a name that is no path here (too long, bad characters)
            pass
    return out


def plugin_files(settings: Any, prefix: str = "") -> dict[str, str]:
    """``{"accuracy._target_": "sha256:...", ...}``: a content fingerprint of the source file of every
    plug-in a ``_target_`` names outside hwnas (``plug.preds.MyAcc`` -> ``plug/preds.py``), found on
    ``sys.path`` without running it (only its parent packages are imported). Editing your predictor's
    code is another search: it gets another run folder, not the old results as "nothing to do" nor the
    old checkpoint resumed under the new code. (Other modules that file imports are not followed.)"""
    import importlib.util

    from hwnas.predictors.build import _user_import_path
    from hwnas.predictors.fingerprint import fingerprint_paths

    _user_import_path()  # where the plug-in will be imported from
    out: dict[str, str] = {}
    if isinstance(settings, dict):
        for k, v in settings.items():
            where = f"{prefix}.{k}" if prefix else str(k)
            if k == "_target_" and isinstance(v, str) and not v.startswith("hwnas."):
                names = v.split(".")
                for i in range(len(names) - 1, 0, -1):  # the longest prefix that is a module with a source file
                    try:
                        spec = importlib.util.find_spec(".".join(names[:i]))
                    except (ImportError, ValueError, AttributeError):
                        continue
                    origin = getattr(spec, "origin", None) if spec is not None else None
                    if origin and origin.endswith(".py") and os.path.isfile(origin):
                        out[where] = fingerprint_paths([Path(origin)])
                        break
            else:
                out.update(plugin_files(v, where))
    elif isinstance(settings, (list, tuple)):
        for i, v in enumerate(settings):
            out.update(plugin_files(v, f"{prefix}[{i}]"))
    return out


def _key_resolver(*, _root_: Any) -> str:
    return settings_key(_root_)[:10]


if not OmegaConf.has_resolver("hwnas_search_key"):
    OmegaConf.register_new_resolver("hwnas_search_key", _key_resolver, use_cache=False)
if not OmegaConf.has_resolver("hwnas_abspath"):  # hydra.sweep.subdir: a sweep job runs in its settings' own folder
    OmegaConf.register_new_resolver("hwnas_abspath", lambda path: os.path.abspath(str(path)), use_cache=False)


def _prepare_run_dir(out: Path, key: str, overwrite: bool) -> str:
    """What to do in ``out``: "fresh", "resume" or "done".

    * The checkpoint of *this* search (same settings key) and no finished results of it: "resume",
      with or without ``overwrite`` (a rerun after a kill must not start from zero), and also when
      ``pareto.json`` is unreadable (a power loss can leave it empty; the checkpoint is what counts).
    * Finished results of this search: "done"; with ``overwrite`` "replace": they are removed when the
      new search writes its first results, so that a run refused before that (a missing predictor file,
      budgets out of range) leaves them as they were.
    * Results or a checkpoint of other settings: refused; with ``overwrite`` the checkpoint is removed
      and the results are replaced as above.
    """
    from .checkpoint import SearchCheckpoint, checkpoint_key
    from .results import RESULT_FILES

    ck = out / CHECKPOINT
    pj = out / "pareto.json"
    old_key, partial, readable = None, True, False
    if pj.is_file():
        try:
            data = json.loads(pj.read_text(encoding="utf-8"))
            old_key, partial = data.get("settings_key"), bool(data.get("partial", False))
            readable = True
        except (OSError, ValueError, AttributeError):
            old_key = "unreadable"
    own_ck = ck.exists() and checkpoint_key(ck) == SearchCheckpoint(ck, settings=key).key
    finished = readable and old_key == key and not partial
    if own_ck and not finished and (overwrite or not pj.is_file() or old_key in (key, "unreadable")):
        if pj.is_file() and old_key != key:  # another search's results, or an unreadable file: not ours
            for name in RESULT_FILES:
                (out / name).unlink(missing_ok=True)
        why = [f"{pj.name} was unreadable" if old_key == "unreadable" else "",
               "search.overwrite=true replaces finished or other searches' results only" if overwrite else ""]
        why = "; ".join(w for w in why if w)
        log.info(f"{out} holds the checkpoint of this unfinished search: resuming it"
                 + (f" ({why})" if why else "") + f"; delete {ck} to start from scratch")
        return "resume"
    if overwrite:  # the old results stay until the new search writes its first ones (run_from_config)
        ck.unlink(missing_ok=True)
        return "replace" if any((out / name).exists() for name in RESULT_FILES) else "fresh"
    if pj.is_file() and old_key != key:
        what = (f"an unreadable {pj.name} (and no checkpoint of this search to resume)" if old_key == "unreadable"
                else f"the results of another search (settings key {old_key} here, {key} now)")
        raise ConfigError(
            f"{out} already holds {what}; choose another folder (hydra.run.dir=...) or add search.overwrite=true "
            "to replace them"
        )
    foreign = [name for name in RESULT_FILES if (out / name).exists()]
    if foreign and not pj.is_file() and not ck.exists():  # results hwnas did not write (or whose pareto.json is gone)
        raise ConfigError(
            f"{out} already holds {', '.join(foreign)} but no pareto.json or checkpoint of an hwnas search, so they are "
            "not this search's results; choose another folder (hydra.run.dir=...) or add search.overwrite=true to "
            "replace them"
        )
    if pj.is_file() and not partial and not ck.exists():
        return "done"
    if ck.exists():
        return "resume"
    return "fresh"


# ============================================================================ signals / progress
@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While the search runs, SIGTERM raises :class:`~hwnas.search.nsga.SearchInterrupted` and SIGINT
    KeyboardInterrupt, so both save the checkpoint and the front found so far. Each is also recorded
    (:func:`~hwnas.search.nsga.request_stop`): an exception raised where a library swallows it (a Dask
    client's garbage-collection callback "ignores" it) still stops the search at the next step."""
    from .nsga import SearchInterrupted, request_stop

    def on_term(signum: int, frame: Any) -> None:
        request_stop("SIGTERM")
        raise SearchInterrupted(None, "SIGTERM")

    def on_int(signum: int, frame: Any) -> None:
        request_stop("SIGINT")
        raise KeyboardInterrupt

    try:
        old = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_term), (signal.SIGINT, on_int))}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Progress:
    """Per-step progress: on an interactive terminal one status line with a bar and the ETA, redrawn
    in place (the per-step lines go to the log file only); otherwise one log line per step (with its
    ETA)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.done = 0.0
        self.drawn = False

    def __call__(self, line: str) -> None:
        if not (self.tty and line.startswith(("gen ", "refine "))):
            self.clear()
            log.info(line)
            return
        log.debug(line)
        width = shutil.get_terminal_size((100, 20)).columns
        filled = int(20 * self.done)
        text = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * self.done:3.0f}% {line}"
        sys.stderr.write("\r" + text[: width - 1] + "\x1b[K")
        sys.stderr.flush()
        self.drawn = True

    def fraction(self, done: float) -> None:
        self.done = min(max(float(done), 0.0), 1.0)

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn = False


# ============================================================================ the command
def _output_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path(os.getcwd())


def write_predictor_reports(out: Path, **predictors: Any) -> None:
    """A predictor with ``report()`` (e.g. ``latency=adapted``: its samples, fit and decision) has it
    logged in one line and written to ``<run>/<key>_report.json``."""
    from hwnas.predictors.assets import atomic_write

    for key, p in predictors.items():
        if callable(getattr(p, "report", None)):
            rep = p.report()
            log.info(f"{key}: {rep.get('summary', '')}")
            atomic_write(out / f"{key}_report.json", json.dumps(rep, indent=1, default=str) + "\n")


def _finished_best(path: Path) -> str:
    """``@<budget>: <accuracy> (<latency>), ...`` of a finished search's ``pareto.json``; a file that lacks
    them (edited, or not written by hwnas) is one error naming it and the fix."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "digest" in data and data["digest"] != json_digest(data):
            raise ValueError("edited after the search wrote it: its content no longer matches its digest")
        best = data["best"]
        if not isinstance(best, dict):
            raise TypeError(f"'best' is {type(best).__name__}, not a mapping budget -> best arch")
        from .nsga import _fmt_acc

        return ", ".join(f"@{b}: " + ("-" if r is None else f"{_fmt_acc(float(r['accuracy']))} ({float(r['latency']):.4g})")
                         for b, r in best.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{path} has the settings key of this search but is not a whole results file of hwnas ({what}); add "
            "search.overwrite=true to search again and replace it (or choose another folder: hydra.run.dir=...)"
        ) from None


#: characters a space name may have where it names the run folder (outputs/search/<space>-<key>)
_SPACE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_space_name(cfg: Any) -> None:
    """The space name is part of the run folder's path: it must stay a plain folder name."""
    try:
        name = OmegaConf.select(cfg, "space.name", default=None) if OmegaConf.is_config(cfg) else (cfg.get("space") or {}).get("name")
    except Exception:  # noqa: BLE001 - an unresolved name: the build reports it
        return
    if name is not None and not (isinstance(name, str) and _SPACE_NAME.fullmatch(name)):
        raise ConfigError(
            f"space.name={name!r} names the run folder (outputs/search/<space>-<key>) and may only hold letters, digits "
            "and the characters _ . - (no / or spaces); rename the space"
        )


def check_space_options(cfg: Any) -> None:
    """A space without options (nasbench201, fbnet) given options by a config group rather than by the
    command line -- the default ``latency=note10_lut`` sets ``space.resolutions`` for its OFA tables --
    is one error naming that config and what to pass instead."""
    from hwnas.spaces.base import space_factory

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        choices, task = dict(hc.runtime.choices), list(hc.overrides.task)
    except (ValueError, ImportError):  # not inside hydra
        return
    node = cfg.get("space") if hasattr(cfg, "get") else None
    if not OmegaConf.is_dict(node) or node.get("_target_") != "hwnas.spaces.create_space":
        return
    name = node.get("name")
    extra = [k for k in node.keys() if k not in ("_target_", "name") and node.get(k) is not None]
    if name not in _NO_OPTION_SPACES or not extra:
        return
    try:
        space_factory(name)  # a registered space (a user's own one may take options)
    except Exception:  # noqa: BLE001
        return
    given = {o.split("=", 1)[0].lstrip("+~") for o in task}
    injected = [k for k in extra if f"space.{k}" not in given]
    if not injected:
        return
    lat = choices.get("latency")
    by = f"latency={lat}" + (" (the default latency)" if f"latency={lat}" not in task else "")
    raise ConfigError(
        f"space={name} takes no options, but {by} sets space.{injected[0]} for the spaces its tables price; choose a "
        f"latency for {name}: {_NO_OPTION_SPACES[name]}"
    )


#: spaces that take no options, and the settings that search them
_NO_OPTION_SPACES = {
    "nasbench201": "latency=dataset_linear accuracy=capacity (pixel3's linear predictor; latency.device=<a column of "
                   "latency/nasbench201.csv> for another device)",
    "fbnet": "latency=dataset_linear latency.dataset=fbnet latency.device=pixel3 accuracy=capacity (latency.device=<a column "
             "of latency/fbnet.csv> for another device)",
}


def run_from_config(cfg: Any, out_dir: str | os.PathLike | None = None) -> Any:
    """Build everything from ``cfg``, search (or resume), write the results into ``out_dir`` (default:
    hydra's run directory); returns the :class:`~hwnas.search.nsga.SearchResult` (None when the folder
    already holds this search's finished results)."""
    from .checkpoint import SearchCheckpoint
    from .evaluators import make_runner, wrap_predictors
    from .nsga import SearchInterrupted, run_search
    from .results import write_results

    check_space_name(cfg)
    check_space_options(cfg)
    from hwnas.conf import shadowed_presets

    for line in shadowed_presets():
        log.warning(line)
    apply_assets(cfg)
    kwargs = search_kwargs(cfg.get("search"))
    opts = cli_settings(cfg.get("search"))
    out = Path(out_dir) if out_dir is not None else _output_dir()
    key = settings_key(cfg)
    remove_stale_temps(out)  # the temporary files of a killed run (atomic writes: its results are whole)
    state = _prepare_run_dir(out, key, opts["overwrite"])
    if state == "done":
        best = _finished_best(out / "pareto.json")
        again = ("search.seed=null: this is the random search already run here; search.overwrite=true or another "
                 "hydra.run.dir for a new one" if kwargs.get("seed") is None else "search.overwrite=true searches again")
        log.info(f"{out} already holds the finished results of this search ({best}); nothing to do ({again})")
        return None
    from .results import RESULT_FILES

    replaced = [out / name for name in RESULT_FILES] if state == "replace" else []

    def write(result: Any, plot: bool) -> None:
        for f in replaced:  # search.overwrite=true: the old results go when the new ones are written
            f.unlink(missing_ok=True)
        replaced.clear()
        write_results(result, out, config=cfg, plot=plot, key=key)

    space, accuracy, latency = build(cfg)
    write_predictor_reports(out, accuracy=accuracy, latency=latency)
    runner = make_runner(plain(cfg.get("evaluator"), "evaluator"))
    progress = _Progress()

    class _Checkpoint(SearchCheckpoint):
        def on_saved(self, engine: Any) -> None:  # partial results on disk as the search goes
            write(engine.result(partial=True), plot=False)

    ck = _Checkpoint(out / CHECKPOINT, settings=key, interval_s=opts["checkpoint_s"])
    cpu_start = time.process_time()
    try:
        preds = wrap_predictors(plain(cfg.get("evaluator"), "evaluator"), runner, accuracy=accuracy, latency=latency)
        with interrupt_on_signals():
            try:
                result = run_search(space, preds["accuracy"], preds["latency"], log=progress, checkpoint=ck,
                                    callback=lambda row: progress.fraction(row["done"]), **kwargs)
            except ValueError as exc:
                if isinstance(exc, UserError):
                    raise
                raise ConfigError(str(exc)) from exc
    except SearchInterrupted as exc:
        progress.clear()
        if exc.result is not None:
            write(exc.result, plot=False)
        code = 143 if exc.signal == "SIGTERM" else 130
        print(f"{PROG}: interrupted ({exc.signal}); the front so far is in {out / 'pareto.json'} (partial) and the "
              "checkpoint beside it: run the same command again to resume", file=sys.stderr)
        raise SystemExit(code) from None
    finally:
        progress.clear()
        runner.close()
    cpu_search = time.process_time()
    write(result, plot=opts["plot"])
    ck.clear()
    cpu_end = time.process_time()
    if not kwargs["verbose"]:
        print(result.summary())
    # a later job of a multirun in this process: its start-up counts from the previous job's end, and the
    # peak memory is the process's (it cannot be told per job)
    later = _JOBS_ENDED_CPU[-1] if _JOBS_ENDED_CPU else None
    peak = f"peak memory {_peak_mb():.0f} MB" + (" (the process's, over its jobs so far)" if later is not None else "")
    log.info(f"results: {out.resolve()} | cpu s: start-up {cpu_start - (later or 0.0):.2f}, search "
             f"{cpu_search - cpu_start:.2f}, writing {cpu_end - cpu_search:.2f} | {peak}")
    _JOBS_ENDED_CPU.append(cpu_end)
    return result


#: the process CPU time at the end of each search this process ran (a multirun runs its jobs in one process)
_JOBS_ENDED_CPU: list[float] = []


def _peak_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, ImportError):
        return False


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float:
    if _in_multirun():  # a failing job is recorded, the sweep goes on (and exits 2 at its end)
        failed = _output_dir() / "failed.json"
        try:
            same = _check_own_folder(cfg)
            if same is not None:
                from hydra.core.hydra_config import HydraConfig

                log.info(f"sweep job #{int(HydraConfig.get().job.num)} has the same settings as job #{same}: the same search, "
                         f"in {_output_dir()}; nothing more to do (random repeats need seeds: search.seed=0,1,2)")
                return float("nan")
            failed.unlink(missing_ok=True)  # an earlier sweep's failure of this job: this run decides again
            result = run_from_config(cfg)
        except Exception as exc:  # noqa: BLE001 - every failure of one job, recorded in its folder
            from .results import atomic_write

            line = error_line(PROG, exc)
            log.error(line, exc_info=not isinstance(exc, (UserError, OSError)))
            atomic_write(failed, json.dumps({"error": line, "type": type(exc).__name__}) + "\n")
            return float("nan")
        return float("nan") if result is None else float(result.hypervolume)
    with run_errors(PROG, _output_dir()):
        result = run_from_config(cfg)
    return float("nan") if result is None else float(result.hypervolume)  # sweepers (e.g. optuna) maximise it


@contextmanager
def run_errors(prog: str, run_dir: str | os.PathLike) -> Iterator[None]:
    """:func:`~hwnas.spaces.errors.cli_errors` of a hydra command's run: a run refused on its settings (exit 2)
    also removes the run folder hydra made for it, when nothing but hydra's own files is in it."""
    try:
        with cli_errors(prog):
            yield
    except SystemExit as exc:
        if exc.code == 2:
            remove_bare_run_dir(Path(run_dir))
        raise


#: run folder (absolute) -> the folders of its path that did not exist before hydra made them (deepest first)
_NEW_RUN_DIRS: dict[str, list[Path]] = {}


def note_run_dir(config: Any) -> None:
    """Before hydra makes the run folder: remember whether it (and which of its parents) is new."""
    try:
        run_dir = OmegaConf.select(config, "hydra.run.dir")
    except Exception:  # noqa: BLE001 - hydra reports an unresolvable folder itself
        return
    if not run_dir:
        return
    d = Path(str(run_dir))
    new = [p for p in (d, *d.parents) if not p.exists()]
    if new and new[0] == d:
        _NEW_RUN_DIRS[os.path.abspath(d)] = new


def remove_bare_run_dir(out: Path) -> bool:
    """Remove the run folder ``out`` if this command made it and it holds nothing but hydra's own files
    (``.hydra/`` and the log), and the parents made with it that are empty; a folder that existed before
    is never touched. Returns whether it was removed."""
    new = _NEW_RUN_DIRS.pop(os.path.abspath(out), None)
    if not new or not out.is_dir():
        return False
    hydra_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    for p in out.iterdir():
        if p.name == ".hydra" and p.is_dir() and not p.is_symlink() and all(q.name in hydra_files and q.is_file() for q in p.iterdir()):
            continue
        if p.suffix == ".log" and p.is_file() and not p.is_symlink():
            continue
        return False
    shutil.rmtree(out, ignore_errors=True)
    for p in new[1:]:  # (only empty ones go; a path with ".." may name one that is not empty yet)
        try:
            p.rmdir()
        except OSError:
            pass
    return not out.exists()


def main() -> None:
    """Console-script entry point (``hwnas-search``)."""
    run_hydra(PROG, _hydra_main)


# ============================================================================ sweeps
#: the list of a sweep's jobs, in its folder: each job's number, folder and overrides
JOBS_FILE = "jobs.json"


class RunDirNote(Callback):
    """Hydra callback: before a single run, note whether its folder is new (:func:`note_run_dir`), so that a
    run refused on its settings removes it again (:func:`remove_bare_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        note_run_dir(config)


class SweepSummary(RunDirNote):
    """Hydra callback. Before a single run it notes whether the run folder is new (:func:`note_run_dir`), so
    that a refused run removes it again. Under ``--multirun`` each job runs in the folder a single run of its
    settings uses (``outputs/search/<space>-<key>``; ``hydra.sweep.subdir`` in ``conf/config.yaml``), so the
    same sweep run again finds its finished jobs done and resumes the unfinished ones from their
    checkpoints. The sweep folder (``hydra.sweep.dir``) lists the jobs' folders in ``jobs.json`` as they
    start; after the sweep it gets ``summary.md`` + ``summary.csv`` (one row per job: its folder, overrides,
    status, evaluations, hypervolume, best accuracy at each budget) and ``fronts.png`` (every job's front on
    one plot). A sweep in which a job failed then exits with status 2, naming the jobs' ``failed.json``."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            from hydra.types import RunMode

            if config.hydra.mode != RunMode.MULTIRUN:
                return
            sweep, job = Path(str(config.hydra.sweep.dir)), Path(str(config.hydra.runtime.output_dir))
            num = int(config.hydra.job.num)
            overrides = [str(o) for o in config.hydra.overrides.task]
        except Exception:  # noqa: BLE001 - not a sweep job hydra describes as usual: nothing to record
            return
        record_sweep_job(sweep, num, job, overrides)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        (sweep / ".jobs.lock").unlink(missing_ok=True)
        write_sweep_summary(sweep)
        failed = [p for p in sweep_jobs(sweep) if (p / "failed.json").is_file()]  # (removed when a job starts)
        if not failed:
            print(f"{PROG}: sweep summary: {_shown(sweep / 'summary.md')} (and summary.csv, fronts.png beside it)", file=sys.stderr)
        if failed:
            names = ", ".join(_shown(p / "failed.json") for p in failed)
            n_jobs = len(_read_jobs(sweep / JOBS_FILE) or sweep_jobs(sweep))
            print(f"{PROG}: error: {len(failed)} of {n_jobs} sweep jobs failed ({names}; summary in "
                  f"{_shown(sweep / 'summary.md')}); fix them and run the same command again (finished jobs are not "
                  "redone)", file=sys.stderr)
            raise SystemExit(2)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it, else absolute."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


def _check_own_folder(cfg: Any) -> int | None:
    """The earlier job of the sweep whose folder this job's is, when it is the same search (the same settings
    key: ``search.seed=null,null``, or overrides that change no result): that job's number. A job of other
    settings in an earlier job's folder (a fixed ``hydra.run.dir``) is refused, naming both: it would replace or
    resume the other's results."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    me, num = os.path.abspath(str(hc.runtime.output_dir)), int(hc.job.num)
    for j in _read_jobs(Path(str(hc.sweep.dir)) / JOBS_FILE) or []:
        if j.get("num", num) < num and os.path.abspath(j["dir"]) == me:
            if Path(me).name.endswith("-" + settings_key(cfg)[:10]):  # the settings' own folder: the same settings
                return int(j["num"])
            raise ConfigError(f"sweep jobs #{j['num']} and #{num} run in the same folder {me} (hydra.run.dir is the same for "
                              "both); leave hydra.run.dir out (each job gets its settings' folder) or put ${hydra.job.num} in it")
    return None


def record_sweep_job(sweep: Path, num: int, job: Path, overrides: list[str]) -> Path:
    """Add job ``num`` (its folder ``job`` and its ``overrides``) to the sweep's ``jobs.json`` (read, updated
    and replaced atomically under a lock: launchers may start jobs in parallel)."""
    import fcntl

    from .results import atomic_write

    sweep.mkdir(parents=True, exist_ok=True)
    path = sweep / JOBS_FILE
    with open(sweep / ".jobs.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jobs = _read_jobs(path) or []
        jobs = [j for j in jobs if j.get("num") != num]
        jobs.append({"num": num, "dir": os.path.abspath(job), "overrides": overrides})
        jobs.sort(key=lambda j: j.get("num", 0))
        atomic_write(path, json.dumps({"jobs": jobs}, indent=1) + "\n")
    return path


def _read_jobs(path: Path) -> list[dict] | None:
    """The jobs a sweep's ``jobs.json`` lists (None: no such file, or not readable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        jobs = data["jobs"]
        return [j for j in jobs if isinstance(j, dict) and isinstance(j.get("dir"), str)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sweep_jobs(sweep: str | os.PathLike) -> list[Path]:
    """The job folders of a sweep: as its ``jobs.json`` lists them, in job order (a sweep written before
    jobs ran in their own folders: the folders under it holding a ``pareto.json`` or a ``failed.json``)."""
    sweep = Path(sweep)
    jobs = _read_jobs(sweep / JOBS_FILE)
    if jobs is not None:
        return list(dict.fromkeys(Path(j["dir"]) for j in jobs))
    return sorted({p.parent for p in sweep.rglob("pareto.json")} | {p.parent for p in sweep.rglob("failed.json")})


def write_sweep_summary(sweep: str | os.PathLike) -> dict[str, Path]:
    """The sweep summary of the jobs of ``sweep`` (see :class:`SweepSummary`, :func:`sweep_jobs`)."""
    import yaml

    from .results import _csv, atomic_write

    sweep = Path(sweep)
    listed: dict[str, list[dict]] = {}
    for j in _read_jobs(sweep / JOBS_FILE) or []:  # jobs of the same settings share a folder: one row, every job named
        listed.setdefault(os.path.abspath(j["dir"]), []).append(j)
    rows, fronts, budgets = [], [], []
    for job in sweep_jobs(sweep):
        jobs = listed.get(os.path.abspath(job)) or []
        overrides = jobs[0].get("overrides") if jobs else None
        if isinstance(overrides, list):
            overrides = " ".join(str(o) for o in overrides)
            if len(jobs) > 1:
                overrides += f" (jobs {', '.join('#' + str(j.get('num')) for j in jobs)}: the same settings, one search)"
        else:
            ov_file = job / ".hydra" / "overrides.yaml"
            try:
                overrides = " ".join(yaml.safe_load(ov_file.read_text()) or []) if ov_file.is_file() else ""
            except (OSError, yaml.YAMLError):
                overrides = "?"
        try:  # a job folder under the sweep's: relative to it; the settings' own folder: as the user sees it
            name = Path(os.path.abspath(job)).relative_to(Path(os.path.abspath(sweep))).as_posix()
        except ValueError:
            name = _shown(job)
        row: dict[str, Any] = {"job": name, "overrides": overrides}
        if (job / "failed.json").is_file():  # the last job run there failed (a job starts by removing it)
            try:
                row["status"] = "failed: " + json.loads((job / "failed.json").read_text())["error"]
            except (OSError, ValueError, KeyError, TypeError):
                row["status"] = "failed"
            rows.append(row)
            continue
        if not (job / "pareto.json").is_file():
            row["status"] = "not finished (no pareto.json): run the same command again to resume it"
            rows.append(row)
            continue
        try:
            data = json.loads((job / "pareto.json").read_text())
            front = [(float(r["latency"]), float(r["accuracy"])) for r in data["front"]]
        except (OSError, ValueError, KeyError, TypeError):
            row["status"] = "unreadable pareto.json"
            rows.append(row)
            continue
        row.update(status="partial" if data.get("partial") else "ok", n_evals=data.get("n_evals"),
                   hypervolume=f"{data.get('hypervolume', float('nan')):.5g}")
        for b, best in (data.get("best") or {}).items():
            if b not in budgets:
                budgets.append(b)
            row[f"best@{b}"] = "" if best is None else f"{best['accuracy']:.4f} ({best['latency']:.4g})"
        rows.append(row)
        fronts.append((row["job"] + (" " + overrides if overrides else ""), front))
    fields = ["job", "overrides", "status", "n_evals", "hypervolume"] + [f"best@{b}" for b in budgets]
    paths = {"summary.csv": atomic_write(sweep / "summary.csv", _csv(rows, fields))}
    md = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    md += ["| " + " | ".join(str(r.get(f, "")) for f in fields) + " |" for r in rows]
    paths["summary.md"] = atomic_write(sweep / "summary.md", "\n".join(md) + "\n")
    if fronts:
        paths["fronts.png"] = _plot_fronts(fronts, sweep / "fronts.png")
    return paths


def _plot_fronts(fronts: list, path: Path) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .results import atomic_write

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.add_subplot()
    scale = 100.0 if all(abs(a) <= 1.0 for _, f in fronts for _, a in f) else 1.0
    for name, f in fronts:
        if f:
            lat, acc = zip(*sorted(f))
            ax.step(lat, [a * scale for a in acc], where="post", marker="o", ms=2, lw=1, label=name[:60])
    ax.set_xlabel("latency")
    ax.set_ylabel("predicted top-1 (%)" if scale == 100 else "accuracy")
    ax.set_title(f"{len(fronts)} searches")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return atomic_write(path, buf.getvalue())


if __name__ == "__main__":
    main()
