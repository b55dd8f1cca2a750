"""Spaces and archs as *data*: what run folders, checkpoints, stores and saved predictors hold.

A file never says which class to build. A space is saved as a spec, ``{"space": <registered name>,
"options": {plain keyword values}}``, and rebuilt through the space registry
(:func:`hwnas.spaces.create_space`); nothing named in a file is imported or instantiated. An arch is
identified everywhere by one key, :func:`arch_key` (the space's canonical JSON: inactive slots
normalised, keys sorted), so equal networks have equal keys in every ledger, store and checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .base import SearchSpace, SpaceError, list_spaces, space_factory
from .errors import CraftedFileError


class CraftedSpecError(SpaceError, CraftedFileError):
    """A saved space names a class to build (see :class:`~hwnas.spaces.errors.CraftedFileError`)."""

#: hwnas's own space classes -> a registry name whose factory builds that class from the options that
#: ``to_config`` lists (width included). Spaces built from a config ``_target_`` (reduced spaces) are
#: saved under these names; older hwnas versions wrote these class paths into files, which are read
#: through this table only (never imported from the file's text).
_CLASS_KEYS = {
    "hwnas.spaces.mbconv.OFAMobileNetV3Space": "ofa_mbv3_w12",
    "hwnas.spaces.mbconv.OFAProxylessSpace": "ofa_proxyless_w13",
    "hwnas.spaces.mbconv.ProxylessMobileSpace": "proxyless_mobile",
    "hwnas.spaces.nasbench201.NASBench201Space": "nasbench201",
    "hwnas.spaces.fbnet.FBNetSpace": "fbnet",
}


def arch_key(space: SearchSpace, arch: Any) -> str:
    """The one identity of an arch in ``space``: canonical JSON (validated, inactive slots normalised)."""
    return space.to_json(arch)


def space_spec(space: SearchSpace) -> dict:
    """``{"space": name, "options": {...}}``: plain data that :func:`space_from_spec` rebuilds."""
    name = (getattr(space, "registry_name", None) or _registered_class(type(space))
            or _CLASS_KEYS.get(f"{type(space).__module__}.{type(space).__name__}"))
    if name not in list_spaces():
        raise SpaceError(
            f"space {space.name!r} is not registered, so files cannot name it; register its factory with "
            "hwnas.spaces.register_space(name) before saving"
        )
    options = {k: v for k, v in space.to_config().items() if k != "_target_"}
    _check_plain(options, "options", "space")
    return {"space": name, "options": options}


def _registered_class(cls: type) -> str | None:
    """The name a space class was registered under with ``@register_space`` (built e.g. from a
    ``space._target_`` config, so without ``create_space`` naming it)."""
    return next((name for name in list_spaces() if space_factory(name) is cls), None)


def _check_plain(value: Any, where: str, source: str) -> None:
    """JSON scalars, lists and string-keyed dicts only; no ``_target_`` anywhere."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpaceError(f"{source}: {where} is {value!r}; space options must be finite numbers")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", source)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("_"):
                raise SpaceError(
                    f"{source}: {where} has the key {k!r}; a saved space is plain data (a registered name and "
                    "options), never a class to build"
                )
            _check_plain(v, f"{where}.{k}", source)
        return
    raise SpaceError(f"{source}: {where} has a {type(value).__name__}; space options must be plain JSON values")


def space_from_spec(spec: Any, source: str | os.PathLike = "space") -> SearchSpace:
    """Rebuild a space from :func:`space_spec` data read from ``source`` (a file, named in errors).

    Also reads the ``{"_target_": <hwnas space class>, ...}`` blocks that older versions wrote, but only
    for hwnas's own space classes, mapped to registry names here; any other ``_target_`` is refused.
    """
    src = os.fspath(source)
    if isinstance(spec, str):
        spec = {"space": spec, "options": {}}
    if not isinstance(spec, dict):
        raise SpaceError(f"{src}: the space must be an object {{\"space\": name, \"options\": {{...}}}}, not {type(spec).__name__}")
    if "_target_" in spec:
        target = spec.get("_target_")
        if target not in _CLASS_KEYS:
            raise CraftedSpecError(
                f"{src}: the space names a class to build ({target!r}); files are data and may only name a "
                f"registered space ({list_spaces()}); nothing was run"
            )
        options = {k: v for k, v in spec.items() if k != "_target_"}
        spec = {"space": _CLASS_KEYS[target], "options": options}
    if spec.get("space") is None and isinstance(spec.get("name"), str) and set(spec) == {"space", "name"}:
        raise SpaceError(f"{src}: its space {spec['name']!r} was not registered when the file was written, so the file "
                         "cannot name it; register the space (@hwnas.spaces.register_space) and give it by name (--space)")
    extra = sorted(set(spec) - {"space", "options"})
    if extra:
        raise SpaceError(f"{src}: unknown space keys {extra}; a space is {{\"space\": name, \"options\": {{...}}}}")
    name, options = spec.get("space"), spec.get("options") or {}
    if not isinstance(name, str) or name not in list_spaces():
        raise SpaceError(f"{src}: space={name!r} is not a registered space; registered: {list_spaces()} (a space of "
                         "your own is registered when its module, with @register_space, is imported: import it first)")
    if not isinstance(options, dict):
        raise SpaceError(f"{src}: space options must be an object, not {type(options).__name__}")
    _check_plain(options, "options", src)
    try:
        space = space_factory(name)(**options)
    except SpaceError as exc:
        raise SpaceError(f"{src}: {exc}") from None
    except TypeError as exc:
        raise SpaceError(f"{src}: space {name!r} does not take these options ({exc})") from None
    space.registry_name = name
    return space


def dumps_spec(space: SearchSpace) -> str:
    return json.dumps(space_spec(space), sort_keys=True)


# ============================================================================ arch lists in files
#: keys of a JSON object that hold a list of archs (or of rows with an ``arch`` field)
_LIST_KEYS = ("front", "archs", "pareto", "population", "results")



def space_cache_key(space: Any) -> str:
    """A key for caches of things computed per space: its spec as JSON (equal spaces share it), or the
    object's id for a space that is not registered."""
    try:
        return dumps_spec(space)
    except Exception:  # noqa: BLE001 - an unregistered space: one entry per object
        return f"id:{id(space)}"

def _text_of(path: str | os.PathLike, what: str) -> str:
    """The text of ``path``; a missing, unreadable or binary file is one error naming it."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise SpaceError(f"{what} {p} is a folder; give a JSON, JSON-lines or CSV file")
    if not p.is_file():
        raise SpaceError(f"{what} {p} does not exist; give a JSON, JSON-lines or CSV file of archs")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpaceError(
            f"{what} {p} is not a text file (byte {exc.start} is not UTF-8); give a JSON, JSON-lines or CSV file of archs"
        ) from None


def _row(item: Any, where: str) -> dict:
    """One row ``{"arch": <raw arch>, <other fields>}``: a row with an ``arch`` field, or an arch itself."""
    if isinstance(item, dict):
        return dict(item) if "arch" in item else {"arch": item}
    if isinstance(item, (str, list)):
        return {"arch": item}
    raise SpaceError(f"{where} is a {type(item).__name__}; an entry is an arch (a dict or a string) or a row with an 'arch' field")


def _rows_of(doc: Any, src: str) -> tuple[dict, list[dict]]:
    """``(header, rows)`` of a loaded JSON document: a list of archs/rows, an object whose list key
    (``front``, ``archs`` ...) holds them, or one arch/row."""
    if isinstance(doc, list):
        return {}, [_row(x, f"{src} entry {i}") for i, x in enumerate(doc)]
    keys = [k for k in _LIST_KEYS if isinstance(doc, dict) and k in doc]
    if not keys:
        return {}, [_row(doc, src)]
    key = keys[0]
    if not isinstance(doc[key], list):
        raise SpaceError(f"{src}: '{key}' must be a list of archs (got {type(doc[key]).__name__})")
    header = {k: v for k, v in doc.items() if k != key}
    return header, [_row(x, f"{src} {key}[{i}]") for i, x in enumerate(doc[key])]


def json_digest(data: dict) -> str:
    """The digest a results file of hwnas records of its own content (``"digest"``: of every other key, JSON
    with sorted keys): a file edited by hand is told from the one its command wrote."""
    import hashlib

    body = {k: v for k, v in data.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def check_digest(data: Any, src: str) -> None:
    """Refuse a JSON results file whose recorded ``digest`` does not match its content (edited by hand)."""
    if isinstance(data, dict) and "digest" in data and data["digest"] != json_digest(data):
        raise SpaceError(f"{src} was edited after hwnas wrote it (its content no longer matches its digest); run its command "
                         "again (a search: search.overwrite=true), or remove the \"digest\" line to use the file as an arch list "
                         "of your own")


def read_arch_file(path: str | os.PathLike, what: str = "arch file") -> tuple[dict, list[dict]]:
    """``(header, rows)`` of an arch list file, read as data (nothing in it is imported or run).

    Accepted: JSON (one arch, a list, or an object such as ``pareto.json`` whose ``front`` / ``archs`` list
    holds archs or rows with an ``arch`` field), JSON lines, compact arch strings one per line, or CSV with
    an ``arch`` column. ``rows`` are dicts with the raw ``arch`` and the row's other fields (accuracy,
    latency ...); ``header`` is the top-level JSON object without its list (``space``, ``budgets``,
    ``best`` of a ``pareto.json``), or ``{}``. Errors name ``what`` and the file."""
    import csv

    text = _text_of(path, what)
    src = f"{what} {os.fspath(path)}"
    if os.fspath(path).lower().endswith(".csv"):
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "arch" not in rows[0]:
            raise SpaceError(f"{src}: a CSV needs an 'arch' column (one arch per row)")
        return {}, [dict(r) for r in rows]
    try:
        doc = json.loads(text)
        check_digest(doc, src)
        header, rows = _rows_of(doc, src)
    except json.JSONDecodeError as exc:  # JSON lines or compact arch strings, one per line
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if first.startswith(("{", "[")) and not _parses(first):  # a JSON document, not JSON lines: a broken one
            raise SpaceError(f"{src} is not valid JSON ({exc.msg}, line {exc.lineno}): cut short or edited? A results file "
                             "is rewritten whole by its command: run that again (a search resumes from its checkpoint)") from None
        header, rows = {}, []
        for i, line in enumerate(text.splitlines()):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rows += _rows_of(json.loads(line), f"{src} line {i + 1}")[1]
            except json.JSONDecodeError:
                rows.append({"arch": line})  # a compact arch string (the space validates it)
    if not rows:
        raise SpaceError(f"{src} holds no archs (expected a list, a pareto.json 'front', JSON lines or a CSV 'arch' column)")
    return header, rows


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def check_recorded_space(space: SearchSpace, spec: Any, path: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse ``space`` for a file that records archs of another space (its name, or another ``width_mult``):
    the same arch strings would build other networks. Other options of the same space (a reduced one, other
    resolutions) are allowed. ``fix`` ends the message (how to give the right space)."""
    if not isinstance(spec, dict):
        return
    recorded, options = spec.get("space"), spec.get("options")
    try:
        given = space_spec(space)
    except SpaceError:  # an unregistered space object: the archs are validated against it
        return
    src = f"{what} {os.fspath(path)}"
    if isinstance(recorded, str) and recorded != given["space"]:
        raise SpaceError(f"{src} holds archs of space {recorded}, not {given['space']}; {fix.format(space=recorded)}")
    w_file = options.get("width_mult") if isinstance(options, dict) else None
    w_now = given["options"].get("width_mult")
    if isinstance(w_file, (int, float)) and isinstance(w_now, (int, float)) and abs(w_file - w_now) > 1e-9:
        raise SpaceError(f"{src} holds archs of space {recorded} at width_mult={w_file}, not {w_now}; these would be "
                         "other networks")


def read_archs(path: str | os.PathLike, space: SearchSpace, what: str = "arch file", fix: str = "") -> list:
    """The archs of an arch list file (see :func:`read_arch_file`), validated by ``space``, in order; a file that
    records another space is refused (:func:`check_recorded_space`; ``fix``: how to give its space, with
    ``{space}`` for the recorded name)."""
    header, rows = read_arch_file(path, what)
    check_recorded_space(space, header.get("space"), path, what, fix or "give the space the file was written for")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(space.validate(row["arch"]))
        except SpaceError as exc:
            raise SpaceError(f"{what} {os.fspath(path)} entry {i}: {exc}") from None
    return out
