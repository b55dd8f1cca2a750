"""The latency datasets without a mirror: HELP's published files converted into the cache, on small
synthetic files shaped exactly like the originals (tests cannot download); and the one-line errors."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

from hwnas.predictors.assets import AssetError, CHECKSUMS, fetch
from hwnas.predictors.data import sources


def _save(obj, path, old_numpy_name=False):
    """torch.save, optionally naming numpy's scalar the way numpy 1 did (as HELP's ofa_archs.pt does)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    if old_numpy_name:
        z = zipfile.ZipFile(path)
        items = [(n, z.read(n)) for n in z.namelist()]
        z.close()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
            for n, d in items:
                out.writestr(n, d.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar") if n.endswith("data.pkl") else d)


@pytest.fixture
def help_root(tmp_path):
    """HELP's data/ folder with 3 archs per space and every device the catalogue names."""
    root = tmp_path / "help"
    cat = sources.catalogue()["datasets"]
    nb = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
          "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
          "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]
    _save({s: i for i, s in enumerate(nb)}, root / "data/nasbench201/str_arch2idx.pt")
    ops = ["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"]
    fb = [[(i + j) % 9 for j in range(22)] for i in range(3)]
    _save({"dataset": "cifar100", "num_classes": 100, "arch": [{"op_idx_list": a, "arch_str": [ops[o] for o in a]} for a in fb]},
          root / "data/fbnet/metainfo.pt")
    ofa = [{"ks": [3, 5, 7, 3] * 5, "e": [3, 4, 6, 4] * 5, "d": [2, 3, 4, 2, 3], "r": np.int64(r)} for r in (128, 176, 224)]
    _save({"dataset": "imagenet", "num_classes": 1000, "arch": ofa}, root / "data/ofa/ofa_archs.pt", old_numpy_name=True)
    for rel, entry in cat.items():
        for j, d in enumerate(entry["devices"]):
            phone = d in ("pixel2", "samsung_a50", "samsung_s7", "essential_ph_1")
            vals = [9 + j, 17, 16] if phone else [1.0 / 3 + j, 12.081937789916992, 3.6058499999999998]  # whole ms on phones
            _save(vals, root / "data" / entry["layout"] / "latency" / f"{d}.pt")
    return root


def test_converters_write_the_reference_layout(help_root):
    text = sources.convert("latency/ofa_mbv3.csv", help_root)
    lines = text.split("\r\n")
    assert lines[0] == "arch,2080ti_1,2080ti_32,2080ti_64,titan_rtx_1,titan_rtx_32,titan_rtx_64,titan_xp_1,titan_xp_32,titan_xp_64"
    assert lines[1].startswith('"{""ks"":[3,5,7,3,3,5,7,3,') and lines[1].endswith('""r"":128}",0.333333,1.33333,2.33333,3.33333,4.33333,5.33333,6.33333,7.33333,8.33333')
    assert lines[2].endswith(",12.0819" * 9)
    nb = sources.convert("latency/nasbench201.csv", help_root).split("\r\n")
    assert nb[0].startswith("index,arch_str,1080ti_1,") and nb[1].startswith("0,|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|")
    assert nb[3].split(",")[0:2] == ["2", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]
    hdr = nb[0].split(",")
    assert nb[3].split(",")[hdr.index("pixel2")] == "16" and nb[3].split(",")[hdr.index("pixel3")] == "3.60585"
    fb = sources.convert("latency/fbnet.csv", help_root).split("\r\n")
    assert fb[0].startswith("op_idx,ops,1080ti_1") and "pixel2" not in fb[0]  # the reference file's columns
    assert fb[1].startswith("0 1 2 3 4 5 6 7 8 0 1 2 3 4 5 6 7 8 0 1 2 3,k3_e1 k3_e1_g2 k3_e3 ")
    # every file is read back by the loaders that read the reference files
    from hwnas.predictors.data import LatencyDataset

    p = help_root / "ofa.csv"
    p.write_bytes(sources.convert("latency/ofa_mbv3.csv", help_root).encode())
    ds = LatencyDataset.from_csv(p)
    assert len(ds) == 3 and ds.archs[2].r == 224 and ds["titan_xp_64"][0] == pytest.approx(8.33333)


def test_fetch_without_a_mirror_builds_the_cache_from_the_sources(help_root, tmp_path, monkeypatch):
    """No mirror, no cache: fetch downloads HELP's files (here a file:// copy with its checksums),
    converts them into the cache and checks the result; the second fetch reads the cache."""
    monkeypatch.delenv("HWNAS_ASSETS_MIRROR")
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    entry = dict(sources.catalogue()["datasets"]["latency/ofa_mbv3.csv"])
    entry["sha256"] = {p: hashlib.sha256((help_root / p).read_bytes()).hexdigest() for p in entry["sha256"]}
    cat = dict(sources.catalogue(), url=f"file://{help_root}/{{path}}", datasets={"latency/ofa_mbv3.csv": entry})
    monkeypatch.setattr(sources, "catalogue", lambda: cat)
    want = sources.convert("latency/ofa_mbv3.csv", help_root).encode()
    monkeypatch.setitem(CHECKSUMS, "latency/ofa_mbv3.csv", hashlib.sha256(want).hexdigest())
    path = fetch("latency/ofa_mbv3.csv")
    assert path == tmp_path / "cache" / "latency" / "ofa_mbv3.csv" and path.read_bytes() == want
    assert (tmp_path / "cache" / "help" / cat["commit"] / "data/ofa/ofa_archs.pt").is_file()
    for f in (help_root / "data").rglob("*.pt"):
        f.unlink()  # the sources are gone: the cache answers
    assert fetch("latency/ofa_mbv3.csv").read_bytes() == want
    # a source file that does not match its checksum is refused, nothing converted
    (tmp_path / "cache" / "latency" / "ofa_mbv3.csv").unlink()
    (tmp_path / "cache" / "help" / cat["commit"] / "data/ofa/latency/2080ti_1.pt").unlink()
    _save([5.0, 6.0, 7.0], help_root / "data/ofa/latency/2080ti_1.pt")  # someone else's numbers
    with pytest.raises(AssetError, match="2080ti_1.pt does not match its checksum.*nothing was converted"):
        fetch("latency/ofa_mbv3.csv")
    assert not (tmp_path / "cache" / "latency" / "ofa_mbv3.csv").exists()


def test_offline_is_one_line_naming_the_url_and_the_place(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.delenv("HWNAS_ASSETS_MIRROR")
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(AssetError) as e:
        fetch("latency/nasbench201.csv")
    msg = str(e.value)
    assert "\n" not in msg and "raw.githubusercontent.com/HayeonLee/HELP/" in msg
    assert str(tmp_path / "cache" / "latency" / "nasbench201.csv") in msg
    with pytest.raises(AssetError, match="accuracy/x.csv has no public download URL; put the file at"):
        fetch("accuracy/x.csv")


def test_a_crafted_source_file_runs_nothing(help_root, tmp_path):
    """A HELP file replaced by a pickle that would run a command is refused, naming the file."""
    import pickle

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = help_root / "data/ofa/ofa_archs.pt"
    torch.save({"arch": [Payload()]}, bad, pickle_module=pickle)
    with pytest.raises(AssetError, match="ofa_archs.pt is not the plain data hwnas expects.*nothing in it was run"):
        sources.convert("latency/ofa_mbv3.csv", help_root)
    assert not marker.exists()


def test_reference_files_match_the_conversion_checksums(data_dir):
    """The mirror's reference files are exactly what the conversion of HELP's files gives (checked
    against the same SHA-256)."""
    for rel in sources.catalogue()["datasets"]:
        assert hashlib.sha256((data_dir / rel).read_bytes()).hexdigest() == CHECKSUMS[rel]
    assert json.loads((sources.Path(sources.__file__).with_name("help_sources.json")).read_text())["commit"]


def test_a_relative_path_that_is_not_here_is_not_sent_to_the_asset_mirror(tmp_path, monkeypatch):
    """latency.tables=luts/local (the README's form) before the tables were built said "could not download
    <asset site>/luts/local; put the file at <mirror>/luts/local", as if it were an asset to copy into the mirror."""
    import hwnas.predictors.assets as assets
    from hwnas.predictors.assets import AssetError, find_file

    def offline(url, dest, sha256, hint):
        raise AssetError(f"could not download {url} (offline); {hint}")

    monkeypatch.setattr(assets, "download", offline)
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "_DEFAULT_MIRROR", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssetError) as e:
        find_file("luts/local", mirror=str(tmp_path / "mirror"), field="latency.tables")
    assert str(e.value) == (f"latency.tables='luts/local': {tmp_path / 'luts' / 'local'} does not exist, and it is no asset name "
                            "hwnas knows (nor in the mirror); give an existing file or an asset name such as ofa/acc_predictor.pth")
    with pytest.raises(AssetError, match="could not download .*ofa/acc_predictor.pth"):  # a known asset: fetch's own words
        find_file("ofa/acc_predictor.pth", mirror=str(tmp_path / "mirror"), field="accuracy.path")
