"""Where the builtin latency datasets come from: HELP's published files, converted into the cache.

``latency/{nasbench201,fbnet,ofa_mbv3}.csv`` are not files anyone publishes. HELP (Lee et al., NeurIPS
2021; github.com/HayeonLee/HELP, MIT) publishes the measurements they hold: per search space, one
``data/<space>/latency/<device>.pt`` per device (a list with one latency in ms per arch) and one file
with the archs (``str_arch2idx.pt``: NAS-Bench-201 string -> index; ``metainfo.pt``: FBNet's
``op_idx_list``/``arch_str`` per arch; ``ofa_archs.pt``: OFA's ``{ks, e, d, r}`` dicts). Their pixel3,
raspi4, eyeriss and fpga columns are HW-NAS-Bench's published values. The ``help_sources.json`` beside
this file pins the commit and the SHA-256 of every file.

:func:`build` downloads those files (each checked against its SHA-256) and writes the CSV into the
cache, atomically; the CSV is then checked against the reference file's own SHA-256
(``hwnas.predictors.assets.CHECKSUMS``), so a mirror's copy and a converted one are the same bytes.
Nothing is unpickled blindly: every file goes through ``torch.load(weights_only=True)``, which builds
only plain containers, numbers and strings; the OFA archs also hold numpy integers, allowed by name
(``numpy.core.multiarray.scalar`` as numpy 1 wrote it, ``numpy._core...`` as numpy 2 does, and the
integer dtypes) and nothing else. A torch without that
option gets one line saying where to get the file and where to put it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from hwnas.predictors.assets import AssetError, atomic_write, cache_dir, download, file_sha256


@lru_cache(maxsize=1)
def catalogue() -> dict:
    """``help_sources.json``: the commit, the URL pattern and, per CSV, its layout, files and checksums."""
    return json.loads((Path(__file__).with_name("help_sources.json")).read_text())


def where_to_put(rel: str) -> str:
    return f"{cache_dir() / rel} (or <dir>/{rel} with assets.mirror=<dir>)"


def download_sources(rel: str, dest: Path) -> Path:
    """Download the HELP files of ``rel`` into ``dest`` (kept between attempts), each checked."""
    cat = catalogue()
    entry = cat["datasets"][rel]
    for path, digest in entry["sha256"].items():
        target = dest / path
        if target.is_file() and file_sha256(target) == digest:
            continue
        url = cat["url"].format(commit=cat["commit"], path=path)
        download(url, target, digest, f"it is one of the files {rel} is converted from, so nothing was converted; put "
                                      f"HELP's data/ folder under {dest} or the converted CSV at {where_to_put(rel)}")
    return dest


def _load(path: Path, numpy_scalars: bool = False) -> Any:
    """One HELP file through ``torch.load(weights_only=True)`` (plain data only)."""
    import torch

    if not path.is_file():
        raise AssetError(f"{path} is missing; HELP's data/ folder must hold it")
    try:
        if not numpy_scalars:
            return torch.load(path, map_location="cpu", weights_only=True)
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed = [(core.multiarray.scalar, "numpy.core.multiarray.scalar"), core.multiarray.scalar, np.dtype,
                   *(getattr(np.dtypes, n) for n in ("Int64DType", "Int32DType") if hasattr(np, "dtypes"))]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (AttributeError, TypeError) as exc:  # a torch without safe_globals([(obj, name)])
        raise AssetError(f"this torch ({torch.__version__}) cannot read {path.name} without unpickling it ({exc}); "
                         f"use torch >= 2.6, or take the converted CSV from a machine that has it") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and damaged files
        raise AssetError(f"{path} is not the plain data hwnas expects ({str(exc).splitlines()[-1][:200]}); nothing in it "
                         "was run. Download it again") from None


def _latencies(root: Path, space: str, devices: list[str], n: int) -> dict[str, list]:
    out = {}
    for d in devices:
        v = _load(root / "data" / space / "latency" / f"{d}.pt")
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) for x in v):
            raise AssetError(f"{root / 'data' / space / 'latency' / (d + '.pt')}: expected a list of {n} latencies")
        out[d] = v
    return out


def convert(rel: str, root: str | Path) -> str:
    """The CSV text of ``rel`` from HELP's ``data/`` folder under ``root``."""
    entry = catalogue()["datasets"][rel]
    root = Path(root)
    devices, layout = list(entry["devices"]), entry["layout"]
    buf = io.StringIO()
    w = csv.writer(buf)  # the csv module's CRLF line ends, as in the reference files
    if layout == "nasbench201":
        idx = _load(root / entry["archs"])
        if not isinstance(idx, dict):
            raise AssetError(f"{root / entry['archs']}: expected a dict arch string -> index")
        names = {int(i): s for s, i in idx.items()}
        lat = _latencies(root, layout, devices, len(names))
        w.writerow(["index", "arch_str", *devices])
        for i in range(len(names)):
            w.writerow([i, names[i], *(f"{lat[d][i]:g}" for d in devices)])
    elif layout == "fbnet":
        meta = _load(root / entry["archs"])
        archs = meta.get("arch") if isinstance(meta, dict) else None
        if not isinstance(archs, list):
            raise AssetError(f"{root / entry['archs']}: expected a dict with an 'arch' list")
        lat = _latencies(root, layout, devices, len(archs))
        w.writerow(["op_idx", "ops", *devices])
        for i, a in enumerate(archs):
            w.writerow([" ".join(map(str, a["op_idx_list"])), " ".join(a["arch_str"]), *(f"{lat[d][i]:g}" for d in devices)])
    elif layout == "ofa":
        meta = _load(root / entry["archs"], numpy_scalars=True)
        archs = meta.get("arch") if isinstance(meta, dict) else None
        if not isinstance(archs, list):
            raise AssetError(f"{root / entry['archs']}: expected a dict with an 'arch' list")
        lat = _latencies(root, layout, devices, len(archs))
        w.writerow(["arch", *devices])
        for i, a in enumerate(archs):
            arch = {k: ([int(x) for x in a[k]] if k != "r" else int(a[k])) for k in ("ks", "e", "d", "r")}
            w.writerow([json.dumps(arch, separators=(",", ":")), *(f"{lat[d][i]:g}" for d in devices)])
    else:  # pragma: no cover - the catalogue's layouts are the three above
        raise AssetError(f"{rel}: unknown layout {layout!r}")
    return buf.getvalue()


def build(rel: str, out: Path, sha256: str | None = None) -> Path:
    """Download, convert and write ``rel`` to ``out`` (atomically), checked against ``sha256``."""
    if rel not in catalogue()["datasets"]:
        raise AssetError(f"asset {rel} has no public source; put the file at {where_to_put(rel)}")
    src = cache_dir() / "help" / catalogue()["commit"]
    text = convert(rel, download_sources(rel, src))
    digest = hashlib.sha256(text.encode()).hexdigest()
    if sha256 and digest != sha256:
        raise AssetError(f"{rel} converted from HELP's files differs from the reference (sha256 {digest[:12]}... vs "
                         f"{sha256[:12]}...); put the reference file at {where_to_put(rel)}")
    atomic_write(out, text.encode())
    return out
