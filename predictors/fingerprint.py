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

#: files larger than this are fingerprinted by size and modification time instead of their contents
#: (a multi-GB checkpoint would otherwise be read whole at every start); any rewrite changes the time
FULL_HASH_MAX_BYTES = 256 * 1024 * 1024


def file_fingerprint(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's contents (``stat:<size>:<mtime_ns>`` above
    :data:`FULL_HASH_MAX_BYTES`); for a folder, one digest over its files' relative names and
    fingerprints (hidden files and temporary ``*.tmp*`` files left out)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            rel = f.relative_to(p).as_posix()
            if any(part.startswith(".") for part in rel.split("/")) or ".tmp" in f.name:
                continue
            h.update(f"{rel}\0{file_fingerprint(f)}\n".encode())
        return "dir-sha256:" + h.hexdigest()
    st = p.stat()
    if st.st_size > FULL_HASH_MAX_BYTES:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def local_file_fingerprint(value: object) -> str | None:
    """The fingerprint of ``value`` when it is a string naming an existing local file or folder
    (relative to the working directory, ``~`` expanded), else ``None`` (asset names, numbers, ...)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        return None
    p = Path(os.fspath(value)).expanduser()
    try:
        if p.is_file() or p.is_dir():
            return file_fingerprint(p)
    except OSError:
        return None
    return None


__all__ = ["FULL_HASH_MAX_BYTES", "file_fingerprint", "local_file_fingerprint"]
