"""One error style for every hwnas command.

A user-facing error is one line: what is wrong, which field or file, and the fix, printed as
``<prog>: error: <message>`` with exit status 2 (Ctrl-C: ``<prog>: interrupted`` and 130). Library code
raises a :class:`UserError` subclass (``SpaceError``, ``AssetError``, ``ConfigError`` ...); every console
script runs its body inside :func:`cli_errors`, which turns those, and the operating-system errors a
user causes (a read-only folder, a full disk, a missing file), into that line. Anything else is a bug
and keeps its traceback.

This module sits in ``hwnas.spaces`` because every other sub-package already depends on it (no cycle).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence


class UserError(Exception):
    """Bad input or environment, explained in one line that names the field or file and the fix."""


class PluginFailed(Exception):
    """A user's plug-in (a class outside hwnas, named by a ``_target_``) raised inside one of its methods.
    Not a :class:`UserError`: its own traceback is what its author needs, so the commands print that
    traceback and then one line naming the plug-in and the method (exit status 1). The plug-in's
    exception is ``__cause__``."""


def plugin_failed(prog: str, exc: PluginFailed) -> SystemExit:
    """Print the plug-in's own traceback (without hwnas's frames above its call) and one line naming it."""
    import traceback

    cause = exc.__cause__ or exc
    traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
    print(f"{prog}: error: {exc} (the plug-in's traceback is above)", file=sys.stderr)
    return SystemExit(1)


def is_plugin(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a class from outside hwnas (a user's plug-in)."""
    return not str(getattr(type(obj), "__module__", "")).startswith("hwnas.")


class CraftedFileError(UserError):
    """A data file names code to run (a class to build, a pickled callable): refused, nothing run. A
    caller that would otherwise rebuild an unreadable file's contents must not: the file was tampered
    with, and replacing it would hide that."""


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError`` a user can fix: the file, what happened, what to do."""
    path = exc.filename if exc.filename is not None else ""
    where = f"{os.fspath(path)}: " if path != "" else ""
    reason = exc.strerror or str(exc)
    fix = {
        errno.EROFS: "the file system is read-only; choose a writable output folder",
        errno.EACCES: "permission denied; choose a folder you can write to (or fix its permissions)",
        errno.EPERM: "operation not permitted; choose a folder you can write to",
        errno.ENOSPC: "no space left on the device; free some space (finished work is kept) and run the same command again",
        errno.EDQUOT: "disk quota exceeded; free some space and run the same command again",
        errno.ENOENT: "no such file or folder; check the path",
        errno.EISDIR: "is a folder, a file was expected; give a file path",
        errno.ENOTDIR: "a part of the path is a file, a folder was expected; give a folder path",
        errno.EEXIST: "already exists; choose another path or remove it",
    }.get(exc.errno or -1, reason)
    return f"{where}{fix}"


def one_line(text: str) -> str:
    """``text`` as one line: its non-empty lines stripped and joined (a line repeating the one before,
    as wrapped import errors do, is dropped)."""
    lines: list[str] = []
    for ln in str(text).splitlines():
        ln = ln.strip()
        if ln and (not lines or ln != lines[-1]):
            lines.append(ln)
    return " ".join(lines)


def error_line(prog: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, UserError):
        msg = os_error_message(exc)
    else:
        msg = one_line(str(exc)) or type(exc).__name__
    return f"{prog}: error: {msg}"


def hydra_error_message(exc: BaseException) -> str:
    """One line for an error hydra raises while composing the config (an unknown group value, a
    misspelt key, bad override syntax): its own message, without the search-path listing, with the
    available options on one line, and with the cause hydra chains (omegaconf's "Key 'x' is not in
    struct")."""
    text = str(exc).split("Config search path:")[0]
    text = text.replace("set env var HYDRA_FULL_ERROR=1 to see chained exception.", "")
    parts: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        ln = raw.strip()
        if not ln:
            continue
        if raw.startswith(("\t", "    ")) and parts and parts[-1].endswith(":"):
            options.append(ln)  # the list under "Available options in 'space':"
            continue
        if options:
            parts[-1] += " " + ", ".join(options)
            options = []
        parts.append(ln)
    if options:
        parts[-1] += " " + ", ".join(options)
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf"):
        first = one_line(str(cause).split("full_key:")[0])
        if first and first not in parts:
            parts.append(f"({first})")
    import re

    missing = re.search(r"Could not find '([\w.-]+)/([\w.-]+)'", text)
    if missing:  # a preset of the user's folder, which a primary config of the user's own does not put on the search path
        from hwnas.conf import user_config_dir

        mine = user_config_dir() / missing.group(1) / f"{missing.group(2)}.yaml"
        if mine.is_file():
            parts.append(f"({mine} is in your user config folder: a primary config of your own needs it on hydra's search "
                         "path, with `hydra: {searchpath: ['${hwnas_user_conf:}']}` in it)")
    return " ".join(parts) or type(exc).__name__


def run_hydra(prog: str, app: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` app so that hydra's own errors -- an unknown config group value, a
    misspelt key, bad override syntax, a run folder that is a file -- are one line and exit status 2,
    like every other bad input (hydra prints them as several lines or a traceback, exit 1). With
    ``HYDRA_FULL_ERROR=1`` set by the user, hydra's full reports are left as they are."""
    if os.environ.get("HYDRA_FULL_ERROR"):
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # hydra then raises instead of printing: the errors come here
    try:
        return app()
    except _ENDINGS as exc:
        raise _ending(prog, exc) from None
    except Exception as exc:
        mod = type(exc).__module__
        if mod.startswith(("hydra", "omegaconf")):  # (hydra's MissingConfigException is an OSError too)
            print(f"{prog}: error: {hydra_error_message(exc)}", file=sys.stderr)
        elif mod.startswith("yaml"):  # a config file (a preset of the user's) that is not YAML: its file, line and problem
            print(f"{prog}: error: a config file is not valid YAML: {one_line(str(exc))}", file=sys.stderr)
        elif isinstance(exc, (UserError, OSError)):  # e.g. hydra.run.dir names a file
            print(error_line(prog, exc), file=sys.stderr)
        else:
            raise  # a bug: its traceback
        raise SystemExit(2) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that the same clean-up runs (timing processes
    stopped, temporary files removed, the checkpoint kept) and the command says so in one line."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` -- unless a handler of the command's
    own is installed already (``hwnas-search``, ``hwnas-measure``), or this is not the main thread."""
    try:
        own = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        old = None if own else signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals are not ours to set
        old, own = None, True
    try:
        yield
    finally:
        if not own:
            signal.signal(signal.SIGTERM, old)


def _broken_pipe() -> SystemExit:
    """The reader of our output went away (``hwnas-search --help | head``): end quietly, as a command killed by
    SIGPIPE does (status 141), not with an error line about it; stdout goes to /dev/null so that flushing it
    at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return SystemExit(141)


def _interrupted(prog: str, exc: KeyboardInterrupt) -> SystemExit:
    """Say in one line that Ctrl-C (exit 130) or SIGTERM (:class:`Terminated`, 143) stopped ``prog``."""
    if isinstance(exc, Terminated) or getattr(exc, "signal", None) == "SIGTERM":  # (a search stopped by it: SearchInterrupted)
        print(f"{prog}: terminated (SIGTERM); run the same command again to go on", file=sys.stderr)
        return SystemExit(143)
    print(f"{prog}: interrupted", file=sys.stderr)
    return SystemExit(130)


#: what ends a command in its own way rather than as an error line: a signal, a plug-in's bug, a closed pipe
_ENDINGS = (KeyboardInterrupt, PluginFailed, BrokenPipeError)


def _ending(prog: str, exc: BaseException) -> SystemExit:
    """The exit for one of :data:`_ENDINGS` (the same in every command, hydra's or not)."""
    if isinstance(exc, KeyboardInterrupt):
        return _interrupted(prog, exc)
    if isinstance(exc, PluginFailed):
        return plugin_failed(prog, exc)
    return _broken_pipe()


@contextmanager
def cli_errors(prog: str, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a command's body; user errors become one line on stderr and exit status 2; Ctrl-C and
    SIGTERM one line too (exit 130 and 143), after the body's own clean-up has run."""
    try:
        with _sigterm_raises():
            yield
    except _ENDINGS as exc:
        raise _ending(prog, exc) from None
    except (UserError, OSError, *extra) as exc:
        print(error_line(prog, exc), file=sys.stderr)
        raise SystemExit(2) from None


def check_section(node: Any, field: str, known: Sequence[str], error: type = UserError) -> dict:
    """A settings block ``field`` checked for typos: ``{}`` for null, else the mapping, whose keys must all
    be in ``known``; anything else is one ``error`` naming the key and the known ones."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise error(f"{field}={node!r} is not a mapping; write e.g. {field}.{known[0]}=<value>")
    unknown = sorted(str(k) for k in node if k not in known)
    if unknown:
        raise error(f"{field}.{unknown[0]} is not a setting of {field} (a typo?); known keys: {list(known)}")
    return node


def writable_dir(path: str | os.PathLike, what: str = "output folder") -> "os.PathLike":
    """Create the folder ``path`` if missing and check that files can be created in it, before any work
    is done; a file in the way, a read-only or a full file system is one :class:`UserError` naming it."""
    import tempfile
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file; give a folder (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".hwnas-write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be written: {os_error_message(exc)}") from None
    return p
