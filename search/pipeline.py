"""``hwnas-pipeline``: one resumable run from a proxy device to a new target device.

    hwnas-pipeline target_device=titan_rtx_1                     # NAS-Bench-201, proxy pixel3, K=20
    hwnas-pipeline space_name=fbnet dataset=fbnet target_device=raspi4 measure.mode=predictor ...
    hwnas-pipeline --multirun target_device=titan_rtx_1,eyeriss measure.k=10,20

Stages (each writes into ``<run_dir>/<NN_stage>/`` and a ``stage.json`` with the hash of the config
that produced it; a rerun skips every stage whose ``stage.json`` matches, so measurements are never
repeated and a killed run continues where it stopped):

1. ``proxy``    linear latency predictor fitted on the proxy device's data (``dataset``/``proxy_device``).
2. ``samples``  K target archs picked by k-means diversity sampling from a candidate pool and measured:
                ``measure.mode=dataset`` looks the target's true latency up in the dataset column
                ``target_device`` (simulated measurement, each lookup counted); ``measure.mode=predictor``
                calls ``measure.device`` (any latency predictor by ``_target_``, e.g.
                :class:`hwnas.predictors.measure.MeasuredLatency` for real on-device timing).
3. ``adapt``    monotonicity check: SRCC(proxy, target) on the K samples; when its lower confidence
                bound (``adapt.confidence``) is >= ``adapt.threshold`` the proxy is reused as is
                (scale + bias only); else it is adapted
                (:func:`hwnas.predictors.adapt.adapt`, ``adapt.method``).
4. ``reduce``   the space is profiled with the adapted latency and the accuracy source and reduced:
                MBConv spaces through :mod:`hwnas.search.profile` / :mod:`hwnas.search.reduce`;
                categorical spaces (NAS-Bench-201, FBNet) per position: an op is dropped at a position
                when another op there is both faster and at least as accurate by the tolerances.
5. ``search``   NSGA-II (+ refinement) in the reduced space, checkpointed every generation.
6. ``remeasure`` the final front is measured on the target; what is not Pareto-optimal on the
                measured latency is dropped (One-Proxy's last step).
7. ``export``   ``archs.json`` (every space); MBConv spaces also get networks with weights (``export.*``).

Then ``report.md`` + PNGs (:mod:`hwnas.search.report`).

Accuracy. For NAS-Bench-201 / FBNet the reference data hold no accuracy, so the default accuracy source
is :class:`CapacityAccuracy`: a documented *capacity proxy* (log of the trainable parameter count of the
cell/network, higher = larger model), not an accuracy estimate; plug a real predictor with
``accuracy._target_=...``. MBConv spaces use the OFA accuracy predictor (``accuracy=ofa_predictor``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwnas.predictors.base import Predictor

from .checkpoint import SearchCheckpoint, fingerprint
from .problem import hypervolume, pareto_mask
from .results import atomic_write
from hwnas.spaces.errors import UserError

log = logging.getLogger("hwnas.pipeline")


class PipelineError(UserError, ValueError):
    """A pipeline config value is wrong; the message names the key and the fix."""


# ============================================================================ accuracy proxy
NB201_PARAMS = {"none": 0.0, "skip_connect": 0.0, "avg_pool_3x3": 0.0, "nor_conv_1x1": 1.0, "nor_conv_3x3": 9.0}


class CapacityAccuracy(Predictor):
    """Capacity proxy for spaces without accuracy data: ``log1p(relative parameter count)``.

    NAS-Bench-201: conv 3x3 = 9, conv 1x1 = 1, pooling/skip/none = 0 units per edge; a cell whose
    output is cut off from its input (every path through a ``none``) scores 0. FBNet: per block
    ``e * (2 / groups) + e * k^2 / 64`` (the two 1x1 convs and the depthwise conv at 64 channels),
    ``skip`` = 0. Monotone in model size, which tends to rank accuracy in these spaces; it is NOT an
    accuracy estimate and reports say so.
    """

    metric = "capacity"

    def __init__(self, space: Any) -> None:
        self.space = space
        self.name = getattr(space, "base", space).name

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        archs = list(archs)
        if self.name == "nasbench201":
            out = []
            for a in archs:
                ops = a.ops  # edges (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2)
                p = sum(NB201_PARAMS[o] for o in ops)
                r1 = ops[0] != "none"
                r2 = ops[1] != "none" or (r1 and ops[2] != "none")
                r3 = ops[3] != "none" or (r1 and ops[4] != "none") or (r2 and ops[5] != "none")
                out.append(math.log1p(p) + 0.1 * float(r3) if r3 else 0.0)
            return np.asarray(out, dtype=float)
        if self.name == "fbnet":
            out = []
            for a in archs:
                p = 0.0
                for o in a.ops:
                    if o == "skip":
                        continue
                    k, e = int(o[1]), int(o.split("_")[1][1:])
                    g = 2 if o.endswith("_g2") else 1
                    p += e * 2.0 / g + e * k * k / 64.0
                out.append(math.log1p(p))
            return np.asarray(out, dtype=float)
        raise PipelineError(f"accuracy: CapacityAccuracy knows nasbench201 and fbnet, not {self.name!r}; set accuracy._target_")


# ============================================================================ reduced categorical space
class RestrictedSpace:
    """A categorical space (NAS-Bench-201, FBNet) with an allowed subset of ops per position.

    Genome gene ``p`` indexes ``allowed[p]``; archs, features and predictors are the base space's
    (``batch`` hands predictors an ``ArchBatch`` of the base space, so their fast paths still apply).
    """

    def __init__(self, base: Any, allowed: Sequence[Sequence[str]]) -> None:
        from hwnas.spaces import create_space

        self.base = create_space(base) if isinstance(base, str) else base
        allowed = [list(a) for a in allowed]
        if len(allowed) != self.base.n_positions:
            raise PipelineError(f"allowed: {len(allowed)} positions given, space {self.base.name} has {self.base.n_positions}")
        for p, a in enumerate(allowed):
            bad = [o for o in a if o not in self.base.choices]
            if bad or not a:
                raise PipelineError(f"allowed[{p}]={a}: each position needs >= 1 op from {list(self.base.choices)}")
        self.allowed = allowed
        self.name = f"{self.base.name}_reduced"
        self.arch_type = self.base.arch_type
        self._map = [np.array([self.base.choices.index(o) for o in a]) for a in allowed]
        self._inv = []
        for m in self._map:
            inv = np.full(len(self.base.choices), -1)
            inv[m] = np.arange(len(m))
            self._inv.append(inv)
        self.genome_sizes = np.array([len(a) for a in allowed], dtype=int)

    n_var = property(lambda self: int(len(self.genome_sizes)))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.n_var, dtype=int), self.genome_sizes - 1

    def to_base(self, genomes: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(np.asarray(genomes)).astype(int)
        return np.stack([self._map[p][g[:, p]] for p in range(self.n_var)], axis=1)

    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        gb = self.base.encode(archs)
        g = np.stack([self._inv[p][gb[:, p]] for p in range(self.n_var)], axis=1)
        if (g < 0).any():
            i, p = np.argwhere(g < 0)[0]
            raise PipelineError(f"arch {self.base.decode(gb[i:i + 1])[0]}: op at position {p} is not in the reduced space ({self.allowed[p]})")
        return g

    def decode(self, genomes: np.ndarray) -> list:
        return self.base.decode(self.to_base(genomes))

    def decode_arrays(self, genomes: np.ndarray) -> Any:
        return self.base.decode_arrays(self.to_base(genomes))

    def batch(self, genomes: np.ndarray) -> Any:
        return self.base.batch(self.to_base(genomes))

    def canonical_genome(self, genomes: np.ndarray) -> np.ndarray:
        return np.atleast_2d(np.asarray(genomes)).astype(int)

    def validate(self, arch: Any) -> Any:
        a = self.base.validate(arch)
        self.encode([a])
        return a

    def features(self, archs: Sequence[Any]) -> np.ndarray:
        return self.base.features(archs)

    def sample_genomes(self, n: int, rng: Any = None) -> np.ndarray:
        rng = np.random.default_rng(rng)
        return (rng.random((n, self.n_var)) * self.genome_sizes).astype(int)

    def sample(self, n: int, rng: Any = None) -> list:
        return self.decode(self.sample_genomes(n, rng))

    def to_config(self) -> dict:
        return {"_target_": "hwnas.search.pipeline.RestrictedSpace", "base": self.base.name, "allowed": self.allowed}

    def __repr__(self) -> str:
        return f"RestrictedSpace({self.base.name}, sizes={self.genome_sizes.tolist()})"


def reduce_categorical(space: Any, latency: Any, accuracy: Any, n_samples: int = 256, seed: int = 0,
                       latency_tol: float = 0.01, accuracy_tol: float = 0.0, min_choices: int = 2) -> tuple[RestrictedSpace, list[dict]]:
    """Per position ``p`` and op ``o``: mean latency and accuracy of ``n_samples`` random archs with
    ``p`` fixed to ``o`` (common random numbers: the same background archs for every cell). ``o`` is
    dropped at ``p`` when another op ``o'`` is not slower by more than ``latency_tol`` x mean latency,
    not less accurate by more than ``accuracy_tol``, and strictly better in one of them. At least
    ``min_choices`` ops are kept (fastest-first among the dominated)."""
    from hwnas.predictors.base import predict_array

    rng = np.random.default_rng(seed)
    sizes = np.asarray(space.genome_sizes)
    G0 = space.sample_genomes(n_samples, rng)
    rows, cells = [], []
    for p in range(space.n_var):
        for v in range(int(sizes[p])):
            G = G0.copy()
            G[:, p] = v
            cells.append((p, v, G))
    G_all = np.concatenate([c[2] for c in cells])
    batch = space.batch(G_all)
    L = predict_array(latency, batch, "latency").reshape(len(cells), n_samples)
    A = predict_array(accuracy, batch, "accuracy").reshape(len(cells), n_samples)
    tau_L = latency_tol * float(L.mean())
    allowed = []
    k = 0
    for p in range(space.n_var):
        n = int(sizes[p])
        lm, am = L[k:k + n].mean(1), A[k:k + n].mean(1)
        ops = [space.choices[v] for v in range(n)]
        dominated = np.zeros(n, dtype=bool)
        for i in range(n):
            for j in range(n):
                if i != j and lm[j] <= lm[i] + tau_L and am[j] >= am[i] - accuracy_tol and (lm[j] < lm[i] - tau_L or am[j] > am[i] + accuracy_tol):
                    dominated[i] = True
        keep = list(np.flatnonzero(~dominated))
        for i in np.argsort(lm):
            if len(keep) >= min_choices:
                break
            if i not in keep:
                keep.append(int(i))
        keep = sorted(keep)
        allowed.append([ops[i] for i in keep])
        for i in range(n):
            rows.append({"position": p, "op": ops[i], "latency_mean": float(lm[i]), "accuracy_mean": float(am[i]),
                         "kept": int(i in keep)})
        k += n
    return RestrictedSpace(space, allowed), rows


# ============================================================================ measurement
class DatasetMeasurer:
    """Simulated target measurement: the target's true latency looked up in a dataset column.
    ``count`` is the number of distinct archs looked up (what a real device would have timed)."""

    def __init__(self, dataset: Any, device: str) -> None:
        self.dataset, self.device = dataset, device
        self.y = dataset[device]
        self.seen: set = set()

    def measure(self, archs: Sequence[Any]) -> np.ndarray:
        out = []
        for a in archs:
            try:
                i = self.dataset.position(a)
            except ValueError:
                raise PipelineError(
                    f"measure.mode=dataset: arch {a} is not in dataset {self.dataset.name!r}, so its {self.device} "
                    "latency is unknown; use a space the dataset covers completely (nasbench201) or measure.mode=predictor"
                ) from None
            self.seen.add(a)
            out.append(self.y[i])
        return np.asarray(out, dtype=float)

    @property
    def count(self) -> int:
        return len(self.seen)


class PredictorMeasurer:
    """Target measurement through any latency predictor (e.g. ``MeasuredLatency``, which caches in SQLite)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.seen: set = set()

    def measure(self, archs: Sequence[Any]) -> np.ndarray:
        archs = list(archs)
        self.seen.update(archs)
        return np.asarray(self.predictor.predict(archs), dtype=float)

    @property
    def count(self) -> int:
        return len(self.seen)


# ============================================================================ stages
class Stages:
    """Stage folders of a run dir with config-hash markers (``<dir>/stage.json``)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def dir(self, name: str) -> Path:
        d = self.run_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, name: str, key: str) -> dict | None:
        f = self.run_dir / name / "stage.json"
        if not f.exists():
            return None
        try:
            meta = json.loads(f.read_text())
        except json.JSONDecodeError:
            return None
        if meta.get("key") != key:
            return None
        self.skipped.append(name)
        return meta

    def finish(self, name: str, key: str, info: dict) -> dict:
        meta = {"stage": name, "key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        atomic_write(self.run_dir / name / "stage.json", json.dumps(meta, indent=1, default=_json_default) + "\n")
        self.ran.append(name)
        return meta


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def srcc_lower_bound(r: float, n: int, confidence: float | None = 0.95) -> float:
    """One-sided lower confidence bound of a Spearman correlation from ``n`` samples (Fisher z with the
    Bonett-Wright standard error ``sqrt((1 + r^2 / 2) / (n - 3))``). ``confidence=None``: ``r`` itself.
    K diverse samples span the latency range, where ranking is easy, so the point estimate is
    optimistic; the bound keeps the proxy only when the evidence is strong."""
    if confidence in (None, 0) or math.isnan(r):
        return r
    if n <= 3:
        return -1.0
    from scipy.stats import norm

    r = max(min(r, 0.999999), -0.999999)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    return float(math.tanh(math.atanh(r) - norm.ppf(float(confidence)) * se))


def _plain(cfg: Any) -> dict:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _instantiate(node: Any, key: str, **kw: Any) -> Any:
    from hydra.utils import instantiate

    if not node or "_target_" not in node:
        raise PipelineError(f"{key}._target_ is not set; give a class path ({key}._target_=mypkg.MyPredictor)")
    node = {k: v for k, v in dict(node).items() if v is not None}
    try:
        return instantiate(node, _convert_="all", **kw)
    except Exception as exc:  # noqa: BLE001
        inner = exc.__cause__ or exc
        raise PipelineError(f"{key} ({node.get('_target_')}): {type(inner).__name__}: {inner}") from inner


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write(path, buf.getvalue())


def _read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ============================================================================ the pipeline
def _export_models(space: Any, items: list[dict], out_dir: Path, formats: list[str], ex: dict) -> list[str]:
    """Networks with weights (state dict, TorchScript, ONNX, timm) for the best ``ex['max_archs']``
    kept archs, highest accuracy first, through :mod:`hwnas.supernet.export`."""
    from hwnas.supernet.export import ExportItem, export_many, load_weights_source

    ranked = sorted(items, key=lambda r: -r["accuracy"])
    if ex.get("max_archs") is not None:
        ranked = ranked[: int(ex["max_archs"])]
    weights = load_weights_source(space, ex.get("checkpoint"))
    todo = [ExportItem(space.validate(r["arch"]), accuracy=r["accuracy"], latency=r["latency_measured"],
                       latency_kind="measured", extra={"target_device": r["target_device"]}) for r in ranked]
    paths = export_many(space, todo, out_dir, weights=weights, formats=formats, overwrite=True)
    return [str(Path(p).relative_to(out_dir.parent)) for p in paths]


def run_pipeline(cfg: Any, run_dir: str | os.PathLike) -> dict:
    """Run (or resume) every stage of ``cfg`` in ``run_dir``; returns the summary dict (also in
    ``summary.json``)."""
    from hwnas.predictors.adapt import adapt, select_samples
    from hwnas.predictors.data import load_dataset
    from hwnas.predictors.linear import LinearLatencyPredictor
    from hwnas.spaces import create_space

    from .cli import apply_assets, search_kwargs
    from .evaluators import make_runner, wrap_predictors
    from .nsga import run_search

    c = _plain(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    st = Stages(run_dir)
    apply_assets(cfg)
    for key in ("space_name", "dataset", "proxy_device", "target_device"):
        if c.get(key) in (None, "", "???"):
            raise PipelineError(f"{key} is not set; e.g. {key}=" + {"space_name": "nasbench201", "dataset": "nasbench201",
                                                                     "proxy_device": "pixel3", "target_device": "titan_rtx_1"}[key])
    space = create_space(c["space_name"])
    ds = load_dataset(c["dataset"], space=space)
    for dev in (c["proxy_device"], c["target_device"]):
        if dev not in ds.devices and not (dev == c["target_device"] and c["measure"].get("mode") == "predictor"):
            raise PipelineError(f"device {dev!r} is not a column of dataset {c['dataset']!r}; devices: {ds.devices}")
    mcfg, acfg, rcfg = c["measure"], c["adapt"], c.get("reduce") or {}
    seed = int(c.get("seed", 0))
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"space": c["space_name"], "dataset": c["dataset"], "proxy_device": c["proxy_device"],
                               "target_device": c["target_device"]}

    # measurement ledger: every target measurement of the run (kept across reruns)
    ledger_path = run_dir / "measurements.csv"
    ledger: dict[str, float] = {}
    if ledger_path.exists():
        ledger = {r["arch"]: float(r["latency"]) for r in _read_csv(ledger_path)}
    if mcfg.get("mode", "dataset") == "dataset":
        if c["target_device"] not in ds.devices:
            raise PipelineError(f"target_device={c['target_device']!r} is not in dataset {c['dataset']!r}")
        measurer: Any = DatasetMeasurer(ds, c["target_device"])
    elif mcfg.get("mode") == "predictor":
        measurer = PredictorMeasurer(_instantiate(mcfg.get("device"), "measure.device", space=space))
    else:
        raise PipelineError(f"measure.mode={mcfg.get('mode')!r} is unknown; allowed values: ['dataset', 'predictor']")
    new_measurements = 0

    def measure(archs: list) -> np.ndarray:
        nonlocal new_measurements
        todo = [a for a in dict.fromkeys(archs) if str(a) not in ledger]
        if todo:
            y = measurer.measure(todo)
            for a, v in zip(todo, y):
                ledger[str(a)] = float(v)
            new_measurements += len(todo)
            _write_csv(ledger_path, [{"arch": k, "latency": repr(v)} for k, v in ledger.items()])
        return np.array([ledger[str(a)] for a in archs], dtype=float)

    # ---------------------------------------------------------------- 1 proxy
    k1 = fingerprint([c["space_name"], c["dataset"], c["proxy_device"]])
    y_proxy = ds[c["proxy_device"]]
    ok = np.isfinite(y_proxy)
    proxy = LinearLatencyPredictor(space).fit([a for a, o in zip(ds.archs, ok) if o], y_proxy[ok])  # cheap, deterministic
    if not st.done("01_proxy", k1):
        d = st.dir("01_proxy")
        atomic_write(d / "weights.json", json.dumps({"weights": proxy.weights.tolist(), "bias": float(proxy.bias)}) + "\n")
        fit_srcc = _srcc(proxy.predict(ds.archs)[ok], y_proxy[ok])
        st.finish("01_proxy", k1, {"n_train": int(ok.sum()), "fit_srcc_on_proxy": fit_srcc})

    # ---------------------------------------------------------------- 2 samples
    k2 = fingerprint([k1, c["target_device"], mcfg, seed])
    d2 = run_dir / "02_samples"
    if not st.done("02_samples", k2):
        rng = np.random.default_rng(seed)
        pool_n = min(int(mcfg.get("pool", 2000)), len(ds))
        pool_idx = np.sort(rng.choice(len(ds), pool_n, replace=False))
        pool = [ds.archs[i] for i in pool_idx]
        K = int(mcfg.get("k", 20))
        pick = select_samples(space, pool, K, mcfg.get("selection", "kmeans"), rng)
        archs = [pool[i] for i in pick]
        y = measure(archs)
        _write_csv(st.dir("02_samples") / "samples.csv",
                   [{"arch": str(a), "target_latency": repr(float(v)), "proxy_pred": repr(float(p))}
                    for a, v, p in zip(archs, y, proxy.predict(archs))])
        st.finish("02_samples", k2, {"k": K, "selection": mcfg.get("selection", "kmeans"), "pool": pool_n})
    rows = _read_csv(d2 / "samples.csv")
    s_archs = [space.validate(r["arch"]) for r in rows]
    s_y = np.array([float(r["target_latency"]) for r in rows])

    # ---------------------------------------------------------------- 3 adapt (cheap, rebuilt from the samples)
    k3 = fingerprint([k2, acfg])
    p_s = proxy.predict(s_archs)
    srcc_samples = _srcc(p_s, s_y)
    thr = float(acfg.get("threshold", 0.9))
    srcc_low = srcc_lower_bound(srcc_samples, len(s_y), acfg.get("confidence", 0.95))
    method = "proxy" if (not math.isnan(srcc_low) and srcc_low >= thr) else acfg.get("method", "bayes")
    adapted = adapt(proxy, s_archs, s_y, method=method, **(acfg.get("kwargs") or {}))
    if not st.done("03_adapt", k3):
        info: dict[str, Any] = {"srcc_proxy_on_samples": srcc_samples, "srcc_lower_bound": srcc_low,
                                "confidence": acfg.get("confidence", 0.95), "threshold": thr, "method": method,
                                "decision": "reuse proxy (scaled)" if method == "proxy" else f"adapt ({method})"}
        if c["target_device"] in ds.devices:  # evaluation only: never used by the pipeline's decisions
            yt = ds[c["target_device"]]
            m = np.isfinite(yt)
            info["eval_srcc_proxy_full"] = _srcc(proxy.predict(ds.archs)[m], yt[m])
            info["eval_srcc_adapted_full"] = _srcc(adapted.predict(ds.archs)[m], yt[m])
        st.finish("03_adapt", k3, info)
    adapt_meta = json.loads((run_dir / "03_adapt" / "stage.json").read_text())

    # ---------------------------------------------------------------- accuracy
    accuracy = _instantiate(c.get("accuracy"), "accuracy", space=space)

    # ---------------------------------------------------------------- 4 reduce
    k4 = fingerprint([k3, rcfg, c.get("accuracy")])
    d4 = run_dir / "04_reduce"
    if not rcfg.get("enabled", True):
        search_space = space
        if not st.done("04_reduce", k4):
            st.dir("04_reduce")
            st.finish("04_reduce", k4, {"space": space.to_config(), "dropped": []})
    else:
        if hasattr(space, "n_positions"):
            red, prow = reduce_categorical(space, adapted, accuracy, n_samples=int(rcfg.get("n_samples", 256)), seed=seed,
                                           latency_tol=float(rcfg.get("latency_tol", 0.01)),
                                           accuracy_tol=float(rcfg.get("accuracy_tol", 0.0)),
                                           min_choices=int(rcfg.get("min_choices", 2)))
            search_space = red
            if not st.done("04_reduce", k4):
                _write_csv(st.dir("04_reduce") / "profile.csv", prow)
                dropped = [{"position": r["position"], "op": r["op"]} for r in prow if not r["kept"]]
                st.finish("04_reduce", k4, {"space": red.to_config(), "dropped": dropped})
        else:
            from .profile import profile_space
            from .reduce import instantiate_space, reduce_space

            meta = st.done("04_reduce", k4)
            if meta is None:
                prof = profile_space(space, latency={"target": adapted}, accuracy={"accuracy": accuracy},
                                     n_samples=int(rcfg.get("n_samples", 256)), seed=seed)
                d = st.dir("04_reduce")
                prof.to_csv(d / "profile.csv")
                red = reduce_space(prof, "target", "accuracy", rules=rcfg.get("rules"))
                st.finish("04_reduce", k4, {"space": red.config, "dropped": red.dropped, "describe": red.describe()})
                meta = json.loads((d / "stage.json").read_text())
            search_space = instantiate_space(meta["space"])
    red_meta = json.loads((d4 / "stage.json").read_text())

    # ---------------------------------------------------------------- 5 search
    skw = search_kwargs(c["search"])
    k5 = fingerprint([k4, skw])
    d5 = run_dir / "05_search"
    if not st.done("05_search", k5):
        from .results import write_results

        runner = make_runner(c.get("evaluator"))
        try:
            preds = wrap_predictors(c.get("evaluator"), runner, accuracy=accuracy, latency=adapted)
            ck = SearchCheckpoint(st.dir("05_search") / "checkpoint.pkl", settings=k5)
            old = ck.archive_if_stale()  # the search settings changed since that checkpoint
            if old is not None:
                log.warning(f"search checkpoint of other settings moved to {old}; searching from scratch")
            res = run_search(search_space, preds["accuracy"], preds["latency"], log=log.info, checkpoint=ck, **skw)
        finally:
            runner.close()
        write_results(res, d5, plot=bool(c["search"].get("plot", True)))
        st.finish("05_search", k5, {"n_evals": res.n_evals, "front_size": len(res), "resumed_from_gen": ck.resumed_from,
                                    "wall_s": res.wall_time})
    front = json.loads((d5 / "pareto.json").read_text())["front"]
    f_archs = [space.validate(r["arch"]) for r in front]
    f_acc = np.array([r["accuracy"] for r in front])
    f_pred = np.array([r["latency"] for r in front])

    # ---------------------------------------------------------------- 6 remeasure
    k6 = fingerprint([k5])
    d6 = run_dir / "06_remeasure"
    if not st.done("06_remeasure", k6):
        y_true = measure(f_archs)
        keep = pareto_mask(f_acc, y_true)
        _write_csv(st.dir("06_remeasure") / "front.csv",
                   [{"arch": str(a), "accuracy": repr(float(acc)), "predicted_latency": repr(float(p)),
                     "measured_latency": repr(float(t)), "pareto_on_target": int(k)}
                    for a, acc, p, t, k in zip(f_archs, f_acc, f_pred, y_true, keep)])
        st.finish("06_remeasure", k6, {"front_size": len(f_archs), "kept": int(keep.sum()),
                                        "srcc_pred_vs_measured_on_front": _srcc(f_pred, y_true)})
    rm = _read_csv(d6 / "front.csv")
    final = [r for r in rm if int(r["pareto_on_target"])]

    # ---------------------------------------------------------------- 7 export
    ex = c.get("export") or {}
    k7 = fingerprint([k6, ex])
    if not st.done("07_export", k7):
        d = st.dir("07_export")
        items = [{"arch": space.validate(r["arch"]).to_dict(), "arch_str": r["arch"], "accuracy": float(r["accuracy"]),
                  "latency_measured": float(r["measured_latency"]), "latency_predicted": float(r["predicted_latency"]),
                  "target_device": c["target_device"]} for r in final]
        atomic_write(d / "archs.json", json.dumps({"space": space.to_config(), "archs": items}, indent=1) + "\n")
        info: dict[str, Any] = {"n": len(items), "format": "archs.json"}
        formats = list(ex.get("formats") or [])
        from hwnas.spaces.mbconv import MBConvSpace

        if formats and isinstance(space, MBConvSpace) and items:
            info["models"] = _export_models(space, items, d / "models", formats, ex)
        st.finish("07_export", k7, info)

    # ---------------------------------------------------------------- evaluation vs full target data
    ev: dict[str, Any] = {}
    if c["target_device"] in ds.devices and hasattr(space, "n_positions") and len(ds) == getattr(space, "size", -1):
        ev = evaluate_against_full(space, ds, c["target_device"], accuracy, final, c["search"])
    summary.update({
        "k": len(s_archs),
        "target_measurements": len(ledger),
        "new_measurements_this_run": new_measurements,
        "adapt": {k: adapt_meta.get(k) for k in adapt_meta if k not in ("key", "stage", "finished")},
        "reduced_space": red_meta.get("space"),
        "dropped": red_meta.get("dropped"),
        "front_size": len(front),
        "final_size": len(final),
        "stages_ran": st.ran,
        "stages_skipped": st.skipped,
        "wall_s": time.perf_counter() - t0,
        "evaluation": ev,
    })
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
    if c.get("report", True):
        from .report import write_report

        write_report(run_dir, summary)
    return summary


def evaluate_against_full(space: Any, ds: Any, device: str, accuracy: Any, final: list[dict], search_cfg: dict) -> dict:
    """Hypervolume of the final front on the target's true latency vs the true front of the whole
    dataset (every arch, true target latency, same accuracy source). Reference point: the lowest
    accuracy of the dataset and the latency bound of the search (or the dataset's max latency)."""
    y = ds[device]
    acc_all = np.asarray(accuracy.predict(ds.archs), dtype=float)
    m = np.isfinite(y)
    lat_ref = search_cfg.get("max_latency") or (max(search_cfg.get("budgets") or [0]) or None)
    lat_ref = float(lat_ref) if lat_ref else float(y[m].max())
    acc_ref = float(acc_all[m].min())
    tm = pareto_mask(acc_all[m], y[m])
    true_front = np.flatnonzero(m)[tm]
    hv_true = hypervolume(acc_all[true_front], y[true_front], acc_ref, lat_ref)
    fa = np.array([float(r["accuracy"]) for r in final])
    fl = np.array([float(r["measured_latency"]) for r in final])
    hv_ours = hypervolume(fa, fl, acc_ref, lat_ref)
    return {"hv_ref": [acc_ref, lat_ref], "hv_final": hv_ours, "hv_true_front": hv_true,
            "hv_ratio": hv_ours / hv_true if hv_true > 0 else float("nan"),
            "true_front": [{"arch": str(ds.archs[i]), "accuracy": float(acc_all[i]), "latency": float(y[i])}
                           for i in true_front[np.argsort(y[true_front])]]}


# ============================================================================ hydra entry
def _hydra_main_factory():
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://hwnas.conf", config_name="pipeline")
    def _main(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig

        try:
            out = HydraConfig.get().runtime.output_dir
            s = run_pipeline(cfg, out)
        except (PipelineError, ValueError) as exc:
            print(f"hwnas-pipeline: error: {exc}", file=sys.stderr)
            sys.exit(2)
        ev = s.get("evaluation") or {}
        print(f"hwnas-pipeline: {out}: {s['target_measurements']} target measurements, final front {s['final_size']}"
              + (f", HV ratio vs true front {ev['hv_ratio']:.4f}" if ev else "")
              + f"; stages ran {s['stages_ran']}, skipped {s['stages_skipped']}")
        return float(ev.get("hv_ratio", 0.0)) if ev else 0.0

    return _main


def main() -> None:
    """Console-script entry point (``hwnas-pipeline``)."""
    _hydra_main_factory()()


if __name__ == "__main__":  # python -m: run the package module, so pickled classes resolve by their package path
    from hwnas.search.pipeline import main as _main

    _main()
