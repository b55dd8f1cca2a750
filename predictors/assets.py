"""Reference assets (predictor weights, lookup tables, checkpoints, benchmark data).

Files are identified by their path below the official base URL
``https://raw.githubusercontent.com/han-cai/files/master/`` (e.g. ``ofa/acc_predictor.pth``).
:func:`fetch` looks, in order, in

1. a mirror directory with the same layout (``assets.mirror=...`` in configs, ``mirror=`` here, or
   the ``HWNAS_ASSETS_MIRROR`` environment variable) — tests use ``../shared/data``;
2. the user cache (``$HWNAS_CACHE`` or ``~/.cache/hwnas``);
3. the base URL, downloaded into the cache (atomically: temp file, checksum, rename); the latency
   datasets ``latency/*.csv`` have no such URL and are converted from HELP's published files instead
   (:mod:`hwnas.predictors.data.sources`).

Known files carry a SHA-256 that is checked wherever the file comes from.
Offline with no mirror, one error says which file to put where.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from hwnas.spaces.errors import UserError

BASE_URL = "https://raw.githubusercontent.com/han-cai/files/master/"

#: SHA-256 of the known official files (path below BASE_URL -> digest)
CHECKSUMS: dict[str, str] = {
    "ofa/acc_predictor.pth": "48685122a3540636b06699af66cd816456b25f29b69563e2fda9bed4018eeba0",
    "ofa/ofa_resnet50_acc_predictor.pth": "68912b4b4be38feb504c5b773dc847af23a637984d5eaabf548de72cd0f79529",
    "ofa/note10/160_lookup_table.yaml": "a2671a45e9400542679ed03de946b45d6a35010f9ab21834af3e7ba8341d36d1",
    "ofa/note10/176_lookup_table.yaml": "34223ae037d5719a5f33261bdfd9341f590a2999edf520f174309605dc06307c",
    "ofa/note10/192_lookup_table.yaml": "0ff5ca0649e56ad34a42d6a8a6f20adb5121c8d12d135299397b310472db79e2",
    "ofa/note10/208_lookup_table.yaml": "41aa63af766a8298354e6aa5ae69d512ac68656a6e7d0a4fa5dc725c8d438633",
    "ofa/note10/224_lookup_table.yaml": "c13a9bcb3f4becae844bce4897129c4e42975984c1029cbd5acb48c970136530",
    "proxylessnas/mobile_trim.yaml": "087e855ea77f9b257e72f3637333a3e0938f6df77f579520f16d057ac45380aa",
    "proxylessnas/proxyless_cpu.config": "ba47cbd51bcd85ef5963e9098c44bf14b5a606e9dd15e5a3dba7cf4915ddded0",
    "proxylessnas/proxyless_gpu.config": "e0bb0cd9166c4e713464b0373ac06af422d3e10560c9797286418f5f6fe6f3af",
    "proxylessnas/proxyless_mobile.config": "eacb4259c46d97e8d47cd7920efe95b99e3004f3e97902c9b3ba80b2a414d8a6",
    # converted from HELP's files by hwnas.predictors.data.sources (the same bytes as a mirror's copy)
    "latency/nasbench201.csv": "52cd321e5e75c0d3231476d23269d56632c1df7c3e95973fd43fc52114f49744",
    "latency/fbnet.csv": "7c8c747533b7e581e535d85b7e6916d85a48799b40f2740808b9179635d46859",
    "latency/ofa_mbv3.csv": "d403785b554eca2107d5391973d2fcb7179a5cd9822b62b9ea3524bb1758cb11",
}

#: files that have no public URL in that layout (derived benchmark data): mirror or cache only
NO_URL_PREFIXES = ("latency/", "accuracy/")


class AssetError(UserError, FileNotFoundError):
    """An asset could not be found, downloaded or verified; the message says what to do."""


_DEFAULT_MIRROR: str | None = None


def set_default_mirror(path: str | os.PathLike | None) -> None:
    """Set the mirror used when ``fetch`` gets none (hydra configs call this from ``assets.mirror``)."""
    global _DEFAULT_MIRROR
    _DEFAULT_MIRROR = None if path in (None, "") else str(path)


def temp_prefix(path: str | os.PathLike) -> str:
    """The name start of a temporary file or folder for ``path`` (``.<name>.<pid>.``): a later run
    recognises what a killed process left (:func:`remove_stale_temps`)."""
    return f".{Path(path).name}.{os.getpid()}."


#: ``.<name>.<pid>.<random>.tmp[.<ext>]`` (or ``.old``): temporary files and folders of hwnas writers
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?:tmp|old)(?:\.[^.]+)?$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and runs (another user's process counts as alive; a killed one
    that its parent has not reaped yet, a zombie, does not: it writes nothing more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (macOS): os.kill said it exists
        return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed processes left in ``folder`` (named by
    :func:`temp_prefix`; their process is gone); returns them."""
    folder, gone = Path(folder), []
    if not folder.is_dir():
        return gone
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension) to write to; when the block ends
    without error it atomically replaces ``path``, otherwise it is removed. Readers never see a
    half-written file, and a crash leaves the old file (if any) as it was; what a killed process
    leaves, :func:`remove_stale_temps` removes.

    The temporary file is flushed to the disk (``fsync``) before the rename, and the folder after it:
    without that, a power loss shortly after the rename can leave ``path`` empty or truncated (the
    rename reached the disk, the data not yet), e.g. an empty ``pareto.json`` beside a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp" + path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual permissions
    try:
        yield Path(tmp)
        _fsync(tmp, required=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, required=False)  # the rename itself; best effort (not every system opens folders)


def _fsync(path: str | os.PathLike, required: bool) -> None:
    """``fsync`` a file (or, when the writer made ``path`` a folder, that folder). Filesystems that
    cannot sync (EINVAL/ENOTSUP: some FUSE and network mounts) are let be; a failing disk (EIO) is
    an error when ``required``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if required and not os.path.isdir(path):
            raise
        return  # e.g. Windows opens no folders: the rename is as durable as the system makes it
    try:
        os.fsync(fd)
    except OSError as exc:
        if required and exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the complete folder ``tmp`` at ``final`` (both in one folder): an existing ``final`` is moved
    out of the way in one rename, then removed, so a reader sees the old folder or the new one, never a
    mix; what a crash in between leaves is a temporary folder :func:`remove_stale_temps` removes."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final), suffix=".old"))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def cache_dir() -> Path:
    return Path(os.environ.get("HWNAS_CACHE", Path.home() / ".cache" / "hwnas"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, hint: str = "") -> Path:
    """Download ``url`` to ``dest`` atomically (a temporary file beside it, checked against ``sha256``
    when given, then renamed); a failed or mismatching download leaves nothing behind and is one
    :class:`AssetError` ending with ``hint`` (where to put the file by hand)."""
    dest = Path(dest)
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest first
    try:
        with atomic_path(dest) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:  # ValueError: not a URL
                raise AssetError(f"could not download {url} ({exc}); {hint}") from None
            if sha256 and file_sha256(tmp) != sha256:
                raise AssetError(f"{url} does not match its checksum (expected sha256 {sha256[:12]}…), so it was not kept; {hint}")
    except BaseException:
        for p in made:  # no empty cache folders for a download that failed
            try:
                p.rmdir()
            except OSError:
                pass
        raise
    return dest


def _check(path: Path, rel: str, sha256: str | None) -> Path:
    want = sha256 or CHECKSUMS.get(rel)
    if want and file_sha256(path) != want:
        raise AssetError(
            f"{path} does not match the checksum of {rel} (expected sha256 {want[:12]}…); "
            f"delete it and fetch the file again from {BASE_URL}{rel}"
        )
    return path


def fetch(rel: str, mirror: str | os.PathLike | None = None, sha256: str | None = None, url: str | None = None) -> Path:
    """Local path of asset ``rel`` (see the module doc for the search order)."""
    rel = rel.lstrip("/")
    mirror = mirror if mirror not in (None, "") else (_DEFAULT_MIRROR or os.environ.get("HWNAS_ASSETS_MIRROR"))
    if mirror:
        p = Path(mirror).expanduser() / rel
        if p.is_file():
            return _check(p, rel, sha256)
    cached = cache_dir() / rel
    if cached.is_file():
        return _check(cached, rel, sha256)
    if url is None and rel.startswith(NO_URL_PREFIXES):
        from hwnas.predictors.data.sources import build, catalogue

        if rel in catalogue()["datasets"]:  # converted from its original public release
            return _check(build(rel, cached, sha256 or CHECKSUMS.get(rel)), rel, sha256)
        where = f"{Path(mirror) / rel}" if mirror else f"{cached} (or <mirror>/{rel} with assets.mirror=<dir>)"
        raise AssetError(f"asset {rel} has no public download URL; put the file at {where}")
    where = f"{Path(mirror) / rel}" if mirror else f"{cached}, or into <dir>/{rel} and pass assets.mirror=<dir>"
    return download(url or BASE_URL + rel, cached, sha256 or CHECKSUMS.get(rel), f"put the file at {where}")


def find_file(name: str | os.PathLike, mirror: str | os.PathLike | None = None, field: str = "path",
              example: str | None = None) -> Path:
    """A local file, or else an asset name for :func:`fetch`. A name written as a local path (absolute,
    ``~``, ``./``, ``../``) is never turned into a download: if it does not exist, the error says so
    and names ``field`` (``example``: an asset name to show)."""
    text = os.fspath(name)
    p = Path(text).expanduser()
    if p.is_file():
        return p
    if p.is_absolute() or text.startswith(("~", "./", "../", ".\\", "..\\")):
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise AssetError(f"{field}={text!r}: {p} {what}; give an existing file or an asset name such as {example or next(iter(CHECKSUMS))}")
    try:
        return fetch(text, mirror=mirror)
    except AssetError:
        if text.lstrip("/") in CHECKSUMS:  # a known asset that could not be had: fetch's own words (where to put it)
            raise
        # a relative path that is not here (luts/local, a typo of acc_mlp.pt): it was "could not download
        # <asset site>/luts/local ...; put the file at <mirror>/luts/local", as if it were an asset
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise AssetError(f"{field}={text!r}: {p.absolute()} {what}, and it is no asset name hwnas knows (nor in the mirror); "
                         f"give an existing file or an asset name such as {example or next(iter(CHECKSUMS))}") from None
