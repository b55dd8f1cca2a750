"""Read tensors from a PyTorch ``.pth`` file into numpy arrays, without torch and without running code.

A ``.pth`` file is a pickle, and a plain unpickle runs whatever the file names. This reader unpickles
with a restricted :class:`pickle.Unpickler` whose ``find_class`` knows a fixed table of names -- the
tensor-rebuild functions, the storage types and ``OrderedDict`` -- and maps each to a local stand-in;
any other name is refused before anything is imported or called (the same rule as
``torch.load(weights_only=True)``). Both of torch's layouts are read: the zip archive
(``torch.save`` since 1.6: ``*/data.pkl`` + ``*/data/<key>``) and the legacy stream (magic number,
protocol, system info, the pickle, the storage keys, then each storage's bytes).

``read_tensors(path)`` returns the pickled object with every tensor replaced by a ``numpy.ndarray``
(a copy, C-contiguous): for a state dict, ``{name: array}``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.spaces.errors import CraftedFileError, UserError

__all__ = ["TensorFileError", "read_tensors", "torch_load_weights"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

#: storage type name -> numpy dtype (little-endian, as torch writes them)
_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TensorFileError(UserError, ValueError):
    """A tensor file cannot be read safely: ``"<file>: <reason>"``."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class CraftedTensorFileError(TensorFileError, CraftedFileError):
    """A tensor file names a callable to run (see :class:`~hwnas.spaces.errors.CraftedFileError`)."""


#: why a file that ``torch.load(weights_only=True)`` refuses is not read (torch's own message advises
#: loading it with ``weights_only=False``, which runs whatever the file names)
NOT_WEIGHTS = ("not a weights-only torch file (tensors and plain data written by torch.save): it is a pickle that may "
               "contain code, or another kind of file, and hwnas never loads such files; re-save the weights with "
               "torch.save(model.state_dict(), path)")


def torch_load_weights(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings; a file it cannot read
    is one :class:`TensorFileError` with our own reason (:data:`NOT_WEIGHTS` for one it refuses to unpickle)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 in the checkpoint ..."
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code, truncated archive, not a torch file
        if isinstance(exc, pickle.UnpicklingError):  # (torch's message advises weights_only=False: never)
            raise TensorFileError(str(path), NOT_WEIGHTS) from None
        if isinstance(exc, OSError) and exc.filename is not None:  # missing, unreadable: an OS error's one line
            raise
        raise TensorFileError(str(path), f"{type(exc).__name__}: {_first_sentence(str(exc))}; is the file complete "
                                         "and written by torch.save?") from None


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an error message (its first line up to the first ``". "``), without its full stop;
    one still longer than ``limit`` characters is cut at a word and ends with ``...``. (torch's message for a
    truncated file goes on for three sentences; a cut at a fixed length ended mid-sentence: "... your
    checkpoint file is; is the file complete ...".)"""
    import re

    line = (text.strip().splitlines() or [""])[0].strip()
    m = re.match(r"(.*?[.!?])(?:\s|$)", line)
    sentence = (m.group(1) if m else line).rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return sentence


class _Storage:
    """One storage of the file: its dtype and, once read, its bytes."""

    def __init__(self, dtype: str, numel: int) -> None:
        self.dtype = np.dtype(dtype)
        self.numel = int(numel)
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor waiting for its storage's bytes (legacy files store them after the pickle)."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self, source: str) -> np.ndarray:
        st = self.storage
        if isinstance(st, tuple) and len(st) == 3 and isinstance(st[0], _Storage):  # a view: (root, offset, numel)
            root, off, n = st
            data = None if root.data is None else root.data[off : off + n]
        elif isinstance(st, _Storage):
            data = st.data
        else:
            raise TensorFileError(source, "a tensor has no storage; the file is corrupt")
        if data is None:
            raise TensorFileError(source, "a tensor's data is missing; the file is truncated or corrupt")
        ints = all(isinstance(v, int) and v >= 0 for v in (self.offset, *self.size, *self.stride))
        if not ints or len(self.size) != len(self.stride):
            raise TensorFileError(source, "a tensor has an invalid shape; the file is corrupt")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= len(data):
            raise TensorFileError(source, "a tensor points outside its storage; the file is corrupt")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * data.itemsize for s in self.stride], writeable=False
        )
        return np.array(view, order="C")  # a writable copy


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


#: the only names a tensor file may use: (module, name) -> local stand-in
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): name for name in _STORAGES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: Any, source: str, persistent: Any = None) -> None:
        super().__init__(f)
        self.source = source
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CraftedTensorFileError(
                self.source,
                f"names {module}.{name}, which a tensor file has no need of; it was refused and nothing was run "
                "(only tensors, storages and OrderedDict are read)",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise TensorFileError(self.source, "unexpected storage reference; the file is corrupt")
        return self._persistent(pid)


def _storage_of(pid: Any, source: str) -> tuple[str, str, int]:
    """``('storage', type, key, location, numel[, view])`` -> (dtype, key, numel)."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
        raise TensorFileError(source, f"unexpected storage reference {str(pid)[:60]}; the file is corrupt")
    kind, key, numel = pid[1], pid[2], pid[4]
    if kind not in _STORAGES or not isinstance(numel, int) or numel < 0:
        raise TensorFileError(source, f"unsupported storage {kind!r}; only plain numeric tensors are read")
    return _STORAGES[kind], str(key), numel


def _materialise(obj: Any, source: str) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array(source)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, source)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, source) for v in obj)
    return obj


def _read_zip(zf: zipfile.ZipFile, source: str) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise TensorFileError(source, "a zip archive without one */data.pkl, so not a torch.save file")
    prefix = pkl[0][: -len("data.pkl")]
    order = "<"
    if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() == b"big":
        order = ">"
    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> _Storage:
        dtype, key, numel = _storage_of(pid, source)
        if key not in storages:
            st = _Storage(dtype, numel)
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TensorFileError(source, f"storage {key} is missing from the archive; the file is corrupt")
            raw = zf.read(name)
            dt = st.dtype.newbyteorder(order) if st.dtype.itemsize > 1 else st.dtype
            if len(raw) < numel * dt.itemsize:
                raise TensorFileError(source, f"storage {key} is truncated; the file is corrupt")
            st.data = np.frombuffer(raw, dtype=dt, count=numel).astype(st.dtype.newbyteorder("="))
            storages[key] = st
        return storages[key]

    return _Unpickler(io.BytesIO(zf.read(pkl[0])), source, persistent).load()


def _read_legacy(f: Any, source: str) -> Any:
    def small() -> Any:
        return _Unpickler(f, source).load()

    if small() != _LEGACY_MAGIC:
        raise TensorFileError(source, "not a PyTorch file (no torch.save magic number)")
    if small() != _LEGACY_PROTOCOL:
        raise TensorFileError(source, "unknown torch.save protocol version")
    info = small()
    if not isinstance(info, dict) or info.get("little_endian", True) is not True:
        raise TensorFileError(source, "only little-endian legacy torch files are read")
    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> Any:
        dtype, key, numel = _storage_of(pid, source)
        st = storages.setdefault(key, _Storage(dtype, numel))
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            _view_key, off, n = view
            return (st, int(off), int(n))
        return st

    result = _Unpickler(f, source, persistent).load()
    keys = small()
    if not isinstance(keys, list):
        raise TensorFileError(source, "the storage list is missing; the file is truncated or corrupt")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise TensorFileError(source, f"storage {key} is not referenced by any tensor; the file is corrupt")
        head = f.read(8)
        if len(head) != 8:
            raise TensorFileError(source, f"truncated (storage {key} has no data)")
        (n,) = struct.unpack("<q", head)
        raw = f.read(n * st.dtype.itemsize)
        if n < 0 or len(raw) != n * st.dtype.itemsize:
            raise TensorFileError(source, f"truncated (storage {key} is incomplete)")
        st.data = np.frombuffer(raw, dtype=st.dtype).copy()
    return result


def read_tensors(path: str | os.PathLike) -> Any:
    """The object saved in the torch file ``path`` with its tensors as numpy arrays (see the module doc).
    Raises :class:`TensorFileError` naming the file for anything it will not or cannot read."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            if zipfile.is_zipfile(f):
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    obj = _read_zip(zf, source)
            else:
                f.seek(0)
                obj = _read_legacy(f, source)
        return _materialise(obj, source)
    except TensorFileError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, IndexError, KeyError,
            struct.error, AttributeError, MemoryError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise TensorFileError(source, f"not a readable PyTorch tensor file ({type(exc).__name__}: {detail})") from None
