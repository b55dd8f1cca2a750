"""Content fingerprints of the local files a run's settings name.

A run folder, a cache or an export is keyed by the settings that decide its results. A setting that
names a local file (a trained predictor, a supernet checkpoint, a filled plan, a lookup table folder)
decides them through the file's *contents*: retrained or re-measured into the same path, the same
string would find the old results and call them current. These keys therefore carry a fingerprint of
the contents as well as the name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

#: files up to this size are fingerprinted by their contents (sha256), larger ones (supernet
#: checkpoints) by size and modification time (reading gigabytes at every start is too slow; a file
#: rewritten in place gets a new mtime); a folder's files are hashed up to this many bytes in all
HASH_BYTES = 64 * 2**20
#: at most this many files of a folder are looked at (a dataset folder is never walked whole); a larger
#: folder adds its own modification time
MAX_FILES = 2000


def fingerprint_paths(paths: Iterable[str | os.PathLike]) -> str:
    """``sha256:<hex>`` over the names and contents of ``paths`` (files, or folders walked in sorted
    order; hidden and temporary ``*.tmp*`` files inside folders left out)."""
    h = hashlib.sha256()
    budget = [HASH_BYTES]
    for p in map(Path, paths):
        h.update(b"\0" + p.name.encode(errors="replace"))
        if p.is_dir():
            files: list[Path] = []
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root) / n for n in sorted(names) if not n.startswith(".") and ".tmp" not in n]
                if len(files) > MAX_FILES:
                    break
            for f in files[:MAX_FILES]:
                h.update(b"\0" + f.relative_to(p).as_posix().encode(errors="replace"))
                _hash_file(h, f, budget)
            if len(files) > MAX_FILES:
                h.update(f"\0more:{p.stat().st_mtime_ns}".encode())
        else:
            _hash_file(h, p, budget)
    return "sha256:" + h.hexdigest()[:32]


#: contents digests of files already read in this process, by (path, size, mtime, inode): a settings key
#: is computed many times per command (hydra resolves the run folder's interpolation at every access)
_DIGESTS: dict[tuple, bytes] = {}


def _hash_file(h: Any, f: Path, budget: list[int]) -> None:
    try:
        st = f.stat()
    except OSError:  # a dangling link in a folder: its name counts, it has no contents
        h.update(b"\0missing")
        return
    if st.st_size > min(HASH_BYTES, budget[0]):
        h.update(f"\0stat:{st.st_size}:{st.st_mtime_ns}".encode())
        return
    budget[0] -= st.st_size
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        d = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                d.update(chunk)
        _DIGESTS[key] = d.digest()
    h.update(_DIGESTS[key])


def file_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of one file or folder (:func:`fingerprint_paths`)."""
    return fingerprint_paths([path])


def local_file_fingerprint(value: object) -> str | None:
    """The fingerprint of ``value`` when it is a string naming an existing local file or folder
    (relative to the working directory, ``~`` expanded), else ``None`` (asset names, numbers, ...)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        return None
    p = Path(os.fspath(value)).expanduser()
    try:
        return file_fingerprint(p) if p.exists() else None
    except OSError:
        return None


def differences(saved: Any, now: Any, where: str = "") -> list[str]:
    """The dotted names of the settings that differ between two plain JSON trees (what a refusal to
    resume or to reuse a folder names)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        diff: list[str] = []
        for k in sorted(set(saved) | set(now), key=str):
            diff += differences(saved.get(k), now.get(k), f"{where}.{k}" if where else str(k))
        return diff
    return [] if saved == now else [where or "settings"]


__all__ = ["HASH_BYTES", "MAX_FILES", "differences", "file_fingerprint", "fingerprint_paths", "local_file_fingerprint"]
