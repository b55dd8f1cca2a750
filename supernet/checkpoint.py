"""Loading and saving supernet / subnet weights.

``load_checkpoint(net, src)`` takes a local file, an official OFA checkpoint name
(``ofa_mbv3_d234_e346_k357_w1.2`` … fetched as asset ``ofa/ofa_nets/<name>`` from the mirror, the cache or
https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/<name>), or an asset path. Files
may hold the state dict itself or ``{"state_dict": ...}`` (OFA's format and ours); they are read with
``torch.load(weights_only=True)``. Legacy names (``mobile_inverted_conv``, a ``module.`` prefix) are
mapped. Any missing, unexpected or mis-shaped tensor refuses the whole file with the tensors named —
except ``num_batches_tracked`` counters, and the kernel-transformation matrices when a checkpoint has
none of them (a supernet trained without kernel transformation: identity matrices = plain centre crop).

``save_checkpoint(path, obj)`` writes atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.predictors.assets import atomic_path, fetch

from .ofa_keys import canonical_key
from hwnas.spaces.errors import UserError

OFA_NETS_PREFIX = "ofa/ofa_nets/"
_MAX_LISTED = 8


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read or does not match the network; the message names the tensors."""


def resolve_checkpoint(src: str | os.PathLike, mirror: str | os.PathLike | None = None) -> Path:
    """Local path of ``src``: an existing file, an official OFA net name, or an asset path."""
    p = Path(src).expanduser()
    if p.is_file():
        return p
    s = str(src)
    if "/" not in s and s.startswith("ofa_"):
        return fetch(OFA_NETS_PREFIX + s, mirror=mirror)
    if s.startswith(OFA_NETS_PREFIX):  # an asset path; any other missing name is a local path (a
        return fetch(s, mirror=mirror)   # typo in runs/x/supernet.pth must not become a download)
    where = "is a folder, not a file" if p.is_dir() else f"does not exist (looked for {p.resolve()})"
    raise CheckpointError(f"checkpoint={s!r} {where}; give the path of a checkpoint file, an official name "
                          "such as 'ofa_mbv3_d234_e346_k357_w1.2', or an asset path like 'ofa/ofa_nets/<name>'")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (``{"state_dict": ...}`` or a raw state dict), names canonical."""
    from hwnas.predictors.tensorfile import TensorFileError, torch_load_weights

    try:
        obj = torch_load_weights(path)
    except TensorFileError as exc:  # truncated / not a torch file / pickled code
        raise CheckpointError(f"checkpoint {exc.source} could not be read: {exc.reason}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected a dict of tensors or "
                              "{'state_dict': {...}})")
    return {canonical_key(k): v for k, v in obj.items()}


def _saved_dict(src: str | os.PathLike) -> dict | None:
    """The top-level dict of a local checkpoint file, read as weights only (memory-mapped: its tensors are not
    read); None for an official name, a missing or unreadable file (the loading itself reports that) or another
    kind of object."""
    import warnings

    p = Path(src).expanduser()
    if not p.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not readable so: the loading itself reports it
        return None
    return obj if isinstance(obj, dict) else None


def recorded_space(src: str | os.PathLike) -> dict | None:
    """The space a local checkpoint file says it was trained for (``hwnas-train``'s ``supernet.pth``: its
    ``"hwnas_space"``; a ``last.pth``: its settings' space), as :func:`hwnas.spaces.io.space_spec` data to
    rebuild with ``space_from_spec``; None for an official name, another file or one that records none. The
    file is read as weights only (memory-mapped: its tensors are not read)."""
    import json

    obj = _saved_dict(src)
    if obj is None:
        return None
    try:
        if isinstance(obj.get("hwnas_space"), str):
            spec = json.loads(obj["hwnas_space"])
        elif isinstance(obj.get("settings"), str):
            spec = json.loads(obj["settings"]).get("space")
        else:
            return None
    except (ValueError, AttributeError):
        return None
    return spec if isinstance(spec, dict) and isinstance(spec.get("space"), str) else None


def recorded_classes(src: str | os.PathLike) -> list[str] | None:
    """The class folder names a local ``supernet.pth`` of ``hwnas-train`` was trained on (``"hwnas_classes"``, in
    label order); None for another file or one that records none (official checkpoints, synthetic data)."""
    import json

    obj = _saved_dict(src)
    try:
        names = json.loads(obj["hwnas_classes"]) if obj is not None and isinstance(obj.get("hwnas_classes"), str) else None
    except ValueError:
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def describe_spec(spec: dict) -> str:
    """``ofa_proxyless_w13 (width_mult=0.25, resolutions=[32, 40])``: what tells a trained space apart."""
    opts = spec.get("options") or {}
    shown = ", ".join(f"{k}={opts[k]}" for k in ("width_mult", "resolutions") if k in opts)
    return f"{spec['space']} ({shown})" if shown else str(spec["space"])


def spec_overrides(spec: dict) -> str:
    """The command-line settings that select a recorded space in a hydra command."""
    opts = spec.get("options") or {}
    parts = [f"space={spec['space']}"] + [f"space.{k}={str(opts[k]).replace(' ', '')}" for k in ("width_mult", "resolutions")
                                          if k in opts]
    return " ".join(parts)


def _listing(title: str, items: list[str]) -> str:
    head = ", ".join(items[:_MAX_LISTED])
    more = f" … (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {title}: {head}{more}"


def match_state_dict(net: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Check ``state`` against ``net``; return the complete dict to load or raise :class:`CheckpointError`."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    matrices = [k for k in own if k.endswith("_matrix")]
    if matrices and not any(k in state for k in matrices):
        tolerated += matrices  # no kernel transformation in the file: keep the identity matrices
    missing = [k for k in missing if k not in set(tolerated)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(_listing("missing tensors", missing))
        if unexpected:
            parts.append(_listing("unexpected tensors", unexpected))
        if mismatched:
            parts.append(_listing("tensors with wrong shapes (file vs network)", mismatched))
        raise CheckpointError(
            f"{source} does not match {type(net).__name__}"
            f"{' of space ' + net.space.name if hasattr(net, 'space') else ''}: " + "; ".join(parts)
            + ". Use the checkpoint made for this network (e.g. ofa_mbv3_d234_e346_k357_w1.2 for space ofa_mbv3_w12)."
        )
    full = dict(own)
    for k, v in state.items():
        full[k] = v.to(own[k].dtype)
    for k in tolerated:
        if k.endswith("_matrix"):
            full[k] = torch.eye(own[k].shape[0], dtype=own[k].dtype)
    return full


def load_checkpoint(net: nn.Module, src: str | os.PathLike, mirror: str | os.PathLike | None = None) -> Path:
    """Load ``src`` (path, official name or asset path) into ``net``; returns the file used."""
    path = resolve_checkpoint(src, mirror)
    load_state(net, read_state_dict(path), path)
    return path


def other_classifier(net: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """``(classes of the file, classes of net)`` when the tensors of ``state`` differ from ``net``'s in the
    classifier's number of classes only (each ``classifier.*`` tensor: the same shape but its first size);
    None otherwise (the same classifier, or one that differs in its input width too: another network)."""
    own = net.state_dict()
    head = [k for k in own if k.startswith("classifier.")]
    if not head or not all(k in state for k in head):
        return None
    shapes = [(tuple(state[k].shape), tuple(own[k].shape)) for k in head]
    if not all(len(a) == len(b) and a and a[0] != b[0] and a[1:] == b[1:] for a, b in shapes):
        return None
    return shapes[0][0][0], shapes[0][1][0]


def load_state(net: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Load the tensors ``state`` read from ``path`` into ``net``; any missing, unexpected or mis-shaped tensor is
    one :class:`CheckpointError` (naming the space the file was trained for, when it records one)."""
    net.load_state_dict(match_checkpoint(net, state, path), strict=True)


def match_checkpoint(net: nn.Module, state: dict, path: str | os.PathLike) -> dict:
    """:func:`match_state_dict` of the checkpoint file ``path``; one that does not fit ``net`` but records the space it
    was trained for is refused naming that space and the settings that select it."""
    try:
        return match_state_dict(net, state, source=f"checkpoint {path}")
    except CheckpointError as exc:
        spec = recorded_space(path)
        if spec is None:
            raise
        raise CheckpointError(f"checkpoint {path} was trained for space {describe_spec(spec)}, which this network is "
                              f"not; use that space (e.g. {spec_overrides(spec)}). {str(exc).split('. Use the')[0]}") from None


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``; a write that fails in torch's C++ writer (a full disk shows as
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...``) is the ``OSError`` it is, so
    that the commands say it in one line (no space left: free some, finished work is kept)."""
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        text = str(exc)
        if "inline_container" not in text and "PytorchStreamWriter" not in text and "unexpected pos" not in text:
            raise
        import errno
        import shutil

        try:
            full = shutil.disk_usage(Path(path).parent).free < 64 * 2**20
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code) if full else f"writing failed ({text.splitlines()[0][:120]})",
                      os.fspath(path)) from None


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` atomically: a temporary file beside ``path``, then ``os.replace``."""
    with atomic_path(path) as tmp:
        torch_save(obj, tmp)
    return Path(path)


__all__ = ["CheckpointError", "load_checkpoint", "load_state", "other_classifier", "save_checkpoint", "read_state_dict", "match_state_dict", "resolve_checkpoint"]
