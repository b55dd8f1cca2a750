"""Block-friendliness profiling of an elastic MobileNet space (after Mills et al. 2021, "Profiling
Neural Blocks and Design Spaces for Mobile Neural Architecture Search").

For every position (unit ``u``, layer ``j``) and every block choice ``(k, e)`` allowed there, the layer
is fixed to that choice and ``n_samples`` architectures are drawn for everything else, with the depth of
unit ``u`` conditioned on ``d[u] >= j + 1`` so that the fixed layer is active. The latency (any
predictor, or a measured device behind the predictor protocol) and accuracy (any accuracy source) of
these samples give the *response* of the block at that position: mean, std and quantiles.

Common random numbers: one background sample ``G0`` is drawn once; every (position, choice) cell uses
the same rows of ``G0`` (only the fixed gene, and the depth of the unit where it is too shallow,
change). Differences between choices are therefore paired per sample and have far lower variance than
independent draws, which is what makes a few hundred samples per cell enough to rank choices.

Depth profiles fix ``d[u]`` to each allowed value, resolution profiles fix the input resolution to each
allowed value (rest from ``G0``); the random baseline is ``G0``.

Everything is evaluated in a few large batches through ``space.batch(genomes)``, so vectorised
predictors (the OFA MLP, lookup tables, linear models) take their fast path.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.predictors.assets import atomic_path, atomic_write
from hwnas.predictors.base import as_predictor
from hwnas.spaces.checks import check_int
from hwnas.spaces.errors import UserError

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
KINDS = ("latency", "accuracy")


class ProfileError(UserError, ValueError):
    """A profiling argument is invalid, or a predictor returned values a profile cannot use; the message
    names it and the fix."""


def check_profile_args(n_samples: Any, seed: Any = 0, batch_size: Any = 16384, prefix: str = "") -> None:
    """``n_samples`` an integer >= 2, ``seed`` an integer >= 0 (or a numpy Generator), ``batch_size`` an
    integer >= 1; else one :class:`ProfileError` naming the argument (``prefix`` + its name)."""
    check_int(n_samples, f"{prefix}n_samples", 2, what="statistics need at least two samples", example=256,
              error=ProfileError)
    if not isinstance(seed, np.random.Generator):
        check_int(seed, f"{prefix}seed", 0, example=0, error=ProfileError)
    check_int(batch_size, f"{prefix}batch_size", 1, what="archs per predictor call", example=16384, error=ProfileError)


def block_name(k: int, e: int) -> str:
    return f"k{k}e{e}"


class ProfileSpaceError(UserError, TypeError):
    """The space has no blocks and depths to profile (a cell space, a space of your own)."""


def _check_space(space: Any) -> None:
    for attr in ("block_choices", "depth_choices", "all_block_choices", "slot_unit", "slot_pos", "n_slots"):
        if not hasattr(space, attr):
            raise ProfileSpaceError(
                f"space={getattr(space, 'name', type(space).__name__)}: hwnas-profile profiles the blocks and depths of "
                "MBConv spaces (OFA-MobileNetV3, ProxylessNAS); this one has none to profile "
                f"({type(space).__name__} has no {attr!r}); e.g. space=ofa_mbv3_w12"
            )


@dataclass
class MetricSpec:
    """One profiled quantity: ``name`` (device or accuracy source), ``kind`` latency|accuracy."""

    name: str
    kind: str
    predictor: Any

    @property
    def sign(self) -> float:
        """+1 when larger is better (accuracy), -1 when smaller is better (latency)."""
        return 1.0 if self.kind == "accuracy" else -1.0


@dataclass
class SpaceProfile:
    """Raw responses of a profiled space (see :func:`profile_space`).

    ``blocks[m]``: array ``(n_units, max_layers, n_pairs, N)`` of metric ``m`` with the layer fixed to
    ``space.all_block_choices[c]``; NaN where the choice is not allowed or the position never active.
    ``depths[m]``: ``(n_units, max_layers, N)`` with ``d[u] = index + 1``; NaN for depths not allowed.
    ``baseline[m]``: ``(N,)`` unconstrained random samples. ``resolutions[m]``: ``(n_resolutions, N)`` with
    the input resolution fixed to ``space.resolutions[i]`` (empty dict when not profiled). Row ``i`` of
    every cell shares the background draw ``i`` (common random numbers), so paired differences are
    meaningful.
    """

    space: Any
    metrics: list[MetricSpec]
    n_samples: int
    seed: int
    blocks: dict[str, np.ndarray]
    depths: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray]
    n_evaluations: int
    seconds: dict[str, float] = field(default_factory=dict)
    resolutions: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    @property
    def pairs(self) -> list[tuple[int, int]]:
        return list(self.space.all_block_choices)

    @property
    def pair_names(self) -> list[str]:
        return [block_name(k, e) for k, e in self.pairs]

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"metric {name!r} was not profiled; profiled metrics: {[m.name for m in self.metrics]}")

    def names(self, kind: str) -> list[str]:
        return [m.name for m in self.metrics if m.kind == kind]

    @property
    def layout(self) -> tuple[int, ...]:
        return tuple(self.space.arch_type.LAYOUT)

    def positions(self) -> list[tuple[int, int]]:
        """(unit, layer) positions that can be active (some allowed depth of the unit reaches them)."""
        out = []
        for u, m in enumerate(self.layout):
            for j in range(m):
                if max(self.space.depth_choices[u]) >= j + 1:
                    out.append((u, j))
        return out

    def paired_deltas(self, name: str) -> np.ndarray:
        """``(n_units, max_layers, n_pairs, N)``: each sample's value minus the mean over the allowed
        choices at that position for the same background sample (NaN where not allowed)."""
        v = self.blocks[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN positions (never active)
            ref = np.nanmean(v, axis=2, keepdims=True)
        return v - ref

    # ------------------------------------------------------------------ statistics
    def stats(self) -> "Any":
        """Long-format ``pandas.DataFrame`` of every statistic (one row per metric and cell): level
        ``baseline``/``block``/``depth``, n, mean, std, quantiles, ``delta`` (paired change vs the
        position's mean over choices, or the unit's mean over depths), its standard error, ``rel_delta``
        (delta / that mean) and ``friendliness`` (delta signed so that higher = friendlier, scaled by the
        metric's largest |delta| to [-1, 1]). Computed once and cached."""
        import pandas as pd

        cached = self.__dict__.get("_stats_df")
        if cached is not None:
            return cached.copy()

        rows: list[dict] = []
        qn = [f"q{int(round(q * 100)):02d}" for q in QUANTILES]
        space = self.space

        for m in self.metrics:
            base = self.baseline[m.name]
            rows.append(dict(metric=m.name, kind=m.kind, level="baseline", unit=-1, layer=-1, slot=-1, choice="random",
                             **describe(base), delta=0.0, delta_se=0.0, rel_delta=0.0, friendliness=0.0))
            # ---- blocks
            v = self.blocks[m.name]
            dev = self.paired_deltas(m.name)
            block_rows = []
            for u, j in self.positions():
                slot = int(space.unit_starts[u] + j)
                ref_mean = float(np.nanmean(v[u, j]))
                for c, (k, e) in enumerate(self.pairs):
                    x = v[u, j, c]
                    if np.isnan(x).all():
                        continue
                    block_rows.append(_stat_row(m, "block", u, j, slot, block_name(k, e), x, dev[u, j, c], ref_mean))
            rows.extend(_with_friendliness(block_rows, m.sign))
            # ---- depths
            dv = self.depths[m.name]
            depth_rows = []
            for u in range(len(self.layout)):
                allowed = [d for d in space.depth_choices[u]]
                if len(allowed) == 0:
                    continue
                ref = np.mean([dv[u, d - 1] for d in allowed], axis=0)
                ref_mean = float(ref.mean())
                for d in allowed:
                    x = dv[u, d - 1]
                    depth_rows.append(_stat_row(m, "depth", u, -1, -1, f"d{d}", x, x - ref, ref_mean))
            rows.extend(_with_friendliness(depth_rows, m.sign))
            # ---- resolutions
            rv = self.resolutions.get(m.name)
            if rv is not None and len(rv):
                ref = rv.mean(axis=0)
                ref_mean = float(ref.mean())
                res_rows = [_stat_row(m, "resolution", -1, -1, -1, f"r{r}", rv[i], rv[i] - ref, ref_mean)
                            for i, r in enumerate(space.resolutions)]
                rows.extend(_with_friendliness(res_rows, m.sign))
        cols = ["metric", "kind", "level", "unit", "layer", "slot", "choice", "n", "mean", "std", *qn,
                "delta", "delta_se", "rel_delta", "friendliness"]
        df = pd.DataFrame(rows, columns=cols)
        df.attrs["baseline_mean"] = {m.name: float(self.baseline[m.name].mean()) for m in self.metrics}
        self.__dict__["_stats_df"] = df
        return df.copy()

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`stats` atomically; returns the path."""
        df = self.stats()
        return atomic_write(path, df.to_csv(index=False, float_format="%.6g"))

    def summary(self) -> dict:
        return {
            "space": getattr(self.space, "name", type(self.space).__name__),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "metrics": {m.name: m.kind for m in self.metrics},
            "n_evaluations": self.n_evaluations,
            "seconds": dict(self.seconds),
        }

    # ------------------------------------------------------------------ plots
    def heatmap(self, latency: str, accuracy: str | None = None, path: str | os.PathLike | None = None,
                title: str | None = None, reduction: Any = None):
        """Block-response heatmaps (choice x position) like Mills et al.: latency change in % of the
        position's mean (green = faster) and, if given, accuracy change in points (green = better),
        plus per-unit depth responses. With a ``reduction`` (:class:`hwnas.search.reduce.Reduction`)
        the cells of dropped block choices and depths are hatched, and choices dropped everywhere are
        labelled. Saves a PNG atomically when ``path`` is given; returns the figure."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        df = self.stats()
        panels = [(latency, "latency")] + ([(accuracy, "accuracy")] if accuracy else [])
        pos = self.positions()
        xlabels = [f"u{u}.{j}" for u, j in pos]
        names = self.pair_names
        dropped = [set(d) for d in reduction.dropped] if reduction is not None else [set() for _ in self.layout]
        everywhere = set(reduction.dropped_global) if reduction is not None else set()
        ylabels = [f"{c} (dropped)" if c in everywhere else c for c in names]
        max_depths = list(reduction.max_depths) if reduction is not None else list(self.layout)
        fig, axes = plt.subplots(len(panels), 2, figsize=(15, 3.4 * len(panels) + 0.6),
                                 gridspec_kw={"width_ratios": [5, 1]}, squeeze=False)
        for row, (name, kind) in enumerate(panels):
            m = self.metric(name)
            sub = df[(df.metric == name) & (df.level == "block")]
            M = np.full((len(names), len(pos)), np.nan)
            pidx = {p: i for i, p in enumerate(pos)}
            cidx = {c: i for i, c in enumerate(names)}
            if kind == "latency":
                vals, unit_label = sub.rel_delta * 100.0, "% of position mean"
            else:
                vals, unit_label = sub.delta * 100.0, "top-1 points"
            for (u, j, c), val in zip(zip(sub.unit, sub.layer, sub.choice), vals):
                M[cidx[c], pidx[(u, j)]] = val
            lim = np.nanmax(np.abs(M)) if np.isfinite(M).any() else 1.0
            cmap = "RdYlGn_r" if m.sign < 0 else "RdYlGn"
            ax = axes[row, 0]
            im = ax.imshow(M, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(len(pos)), xlabels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), ylabels, fontsize=8)
            for i in range(M.shape[0]):
                for jx in range(M.shape[1]):
                    if np.isfinite(M[i, jx]):
                        ax.text(jx, i, f"{M[i, jx]:.1f}", ha="center", va="center", fontsize=5.5)
                    if names[i] in dropped[pos[jx][0]]:
                        _hatch(ax, jx, i)
            marks = " — hatched: dropped by the reduction" if reduction is not None else ""
            ax.set_title(f"{kind} response: {name} (delta vs position mean, {unit_label}){marks}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
            # depth panel
            dsub = df[(df.metric == name) & (df.level == "depth")]
            nu = len(self.layout)
            maxd = max(self.layout)
            D = np.full((maxd, nu), np.nan)
            for u, c, rd, dd in zip(dsub.unit, dsub.choice, dsub.rel_delta, dsub.delta):
                D[int(c[1:]) - 1, u] = rd * 100.0 if kind == "latency" else dd * 100.0
            dl = np.nanmax(np.abs(D)) if np.isfinite(D).any() else 1.0
            ax2 = axes[row, 1]
            ax2.imshow(D, cmap=cmap, vmin=-dl, vmax=dl, aspect="auto")
            ax2.set_xticks(range(nu), [f"u{u}" for u in range(nu)], fontsize=7)
            ax2.set_yticks(range(maxd), [f"d{d + 1}" for d in range(maxd)], fontsize=7)
            for i in range(maxd):
                for jx in range(nu):
                    if np.isfinite(D[i, jx]):
                        ax2.text(jx, i, f"{D[i, jx]:.1f}", ha="center", va="center", fontsize=6)
                    if i + 1 > max_depths[jx] and i + 1 <= self.layout[jx]:
                        _hatch(ax2, jx, i)
            ax2.set_title("unit depth", fontsize=9)
        fig.suptitle(title or f"Block friendliness of {getattr(self.space, 'name', '')}", fontsize=10)
        fig.tight_layout()
        if path is not None:
            save_figure_atomic(fig, path)
        return fig


def _hatch(ax: Any, x: int, y: int) -> None:
    """Mark one heatmap cell as dropped (hatched, grey edge)."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="xxx", edgecolor=(0, 0, 0, 0.45), lw=0.0, label="dropped"))


# ============================================================================ profiling
def _metric_specs(latency: Mapping[str, Any] | None, accuracy: Mapping[str, Any] | None) -> list[MetricSpec]:
    specs: list[MetricSpec] = []
    for kind, group in (("latency", latency), ("accuracy", accuracy)):
        if group is None:
            continue
        if not isinstance(group, Mapping):
            raise TypeError(f"{kind}: expected a mapping name -> predictor (e.g. {{'note10': lut}}); got {type(group).__name__}")
        for name, pred in group.items():
            as_predictor(pred, f"{kind}[{name!r}]")
            if any(s.name == name for s in specs):
                raise ValueError(f"metric name {name!r} is used twice; give latency and accuracy sources distinct names")
            specs.append(MetricSpec(str(name), kind, pred))
    if not specs:
        raise ValueError("nothing to profile: pass latency={'device': predictor} and/or accuracy={'source': predictor}")
    return specs


def profile_genomes(space: Any, n_samples: int, seed: int | np.random.Generator | None = 0,
                    depth_profiles: bool = True, resolution_profiles: bool = True) -> tuple[np.ndarray, list[tuple]]:
    """All genomes of a profile, stacked, and their cells ``(level, u, j_or_d, pair_index, row_slice)``.

    Rows ``[0, N)`` are the baseline ``G0``; block cell ``(u, j, c)`` is ``G0`` with slot gene set to
    choice ``c`` and, where ``d[u] < j + 1``, the depth gene redrawn uniformly among the allowed depths
    ``>= j + 1`` (keeping depths that already qualify keeps it uniform over that set). Depth cells are
    ``("depth", u, d, -1, rows)``, resolution cells ``("resolution", -1, index, -1, rows)`` (only when
    the space has more than one resolution)."""
    _check_space(space)
    check_profile_args(n_samples, 0 if seed is None else seed)
    n = int(n_samples)
    rng = np.random.default_rng(seed)
    ns, nu = int(space.n_slots), int(space.n_units)
    G0 = space.sample_genomes(n, rng)
    U = rng.random((n, nu))
    pairs = list(space.all_block_choices)
    pidx = {p: i for i, p in enumerate(pairs)}
    layout = space.arch_type.LAYOUT
    blocks = [G0]
    cells: list[tuple] = [("baseline", -1, -1, -1, slice(0, n))]
    row = n
    for u, m in enumerate(layout):
        dch = list(space.depth_choices[u])
        gd = G0[:, ns + u]
        for j in range(m):
            ok = [i for i, d in enumerate(dch) if d >= j + 1]
            if not ok:
                continue
            ok_arr = np.asarray(ok)
            keep = np.isin(gd, ok_arr)
            new_d = np.where(keep, gd, ok_arr[np.minimum((U[:, u] * len(ok)).astype(int), len(ok) - 1)])
            base = G0.copy()
            base[:, ns + u] = new_d
            slot = int(space.unit_starts[u] + j)
            for ci, b in enumerate(space.block_choices[u]):
                G = base.copy()
                G[:, slot] = ci
                blocks.append(G)
                cells.append(("block", u, j, pidx[tuple(b)], slice(row, row + n)))
                row += n
    if depth_profiles:
        for u in range(nu):
            for di, d in enumerate(space.depth_choices[u]):
                G = G0.copy()
                G[:, ns + u] = di
                blocks.append(G)
                cells.append(("depth", u, int(d), -1, slice(row, row + n)))
                row += n
    if resolution_profiles and len(space.resolutions) > 1:
        for ri in range(len(space.resolutions)):
            G = G0.copy()
            G[:, ns + nu] = ri
            blocks.append(G)
            cells.append(("resolution", -1, ri, -1, slice(row, row + n)))
            row += n
    return np.concatenate(blocks, axis=0), cells


def _predict(predictor: Any, batch: Any, field: str) -> np.ndarray:
    """``predictor.predict(batch)`` as a float vector of one value per arch, checked by the one checker
    of predictions (:func:`~hwnas.predictors.base.check_values`), its error a :class:`ProfileError`
    (what a plug-in itself raises is its traceback and a line naming it: a bug to fix there)."""
    from hwnas.predictors.base import PredictionError, call_predict, check_values

    try:
        return check_values(call_predict(predictor, batch, field), batch, f"{field} ({type(predictor).__name__})")
    except PredictionError as exc:
        raise ProfileError(str(exc)) from None


def evaluate(space: Any, predictor: Any, genomes: np.ndarray, batch_size: int = 16384, field: str = "predictor",
             progress: bool = False, positive: bool = False) -> np.ndarray:
    """Predict every genome row in batches of ``space.batch`` (vectorised fast paths apply). A predictor
    that returns the wrong number of values, a non-finite value or (``positive``: a latency) a value
    <= 0 is one :class:`ProfileError` naming ``field``, the number of bad values and an example arch."""
    who = f"{field} ({type(predictor).__name__})"  # the errors name a plug-in's class too, for its author
    out = np.empty(len(genomes), dtype=float)
    starts = range(0, len(genomes), batch_size)
    it = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, desc=field, unit="batch")
    for s in it:
        batch = space.batch(genomes[s : s + batch_size])
        out[s : s + len(batch)] = _predict(predictor, batch, field)
    checks = [(~np.isfinite(out), "a non-finite value")]
    if positive:
        with np.errstate(invalid="ignore"):
            checks.append((np.isfinite(out) & (out <= 0), "a latency <= 0"))
    for bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            fix = ("a latency must be a positive number (e.g. milliseconds)" if positive and what != "a non-finite value"
                   else "every value must be a finite number")
            raise ProfileError(f"{who}: predicted {what} for {int(bad.sum())} of {len(out)} archs, e.g. {float(out[i]):.6g} "
                               f"for arch {_arch_text(space, genomes[i : i + 1])}; {fix}: check the predictor")
    return out


def _arch_text(space: Any, genome: np.ndarray) -> str:
    """One genome row as its arch (for messages); the genome itself where the space cannot decode it."""
    try:
        return str(space.decode(genome)[0])
    except Exception:  # a message helper: never hide the error being reported
        return str(genome[0].tolist())


def profile_space(
    space: Any,
    latency: Mapping[str, Any] | None = None,
    accuracy: Mapping[str, Any] | None = None,
    n_samples: int = 256,
    seed: int = 0,
    depth_profiles: bool = True,
    batch_size: int = 16384,
    progress: bool = False,
    resolution_profiles: bool = True,
) -> SpaceProfile:
    """Profile every (unit, layer, block choice) and every unit depth of ``space``.

    ``latency``/``accuracy``: mappings name -> predictor (``predict(archs) -> (n,)``); e.g.
    ``latency={"note10": LookupTableLatency(space)}, accuracy={"ofa": OFAAccuracyPredictor()}``.
    Costs ``n_samples * (1 + sum_positions n_choices + sum_units n_depths + n_resolutions)`` evaluations
    per metric (reported in ``profile.n_evaluations``; no resolution cells for a single resolution).
    """
    check_profile_args(n_samples, seed, batch_size)
    specs = _metric_specs(latency, accuracy)
    G, cells = profile_genomes(space, n_samples, seed, depth_profiles, resolution_profiles)
    n = int(n_samples)
    layout = space.arch_type.LAYOUT
    nu, ml, npairs = len(layout), max(layout), len(space.all_block_choices)
    blocks, depths, baseline, seconds, res = {}, {}, {}, {}, {}
    n_res = sum(1 for c in cells if c[0] == "resolution")
    for m in specs:
        t0 = time.perf_counter()
        vals = evaluate(space, m.predictor, G, batch_size, f"{m.kind}[{m.name!r}]", progress, positive=m.kind == "latency")
        seconds[m.name] = time.perf_counter() - t0
        B = np.full((nu, ml, npairs, n), np.nan)
        D = np.full((nu, ml, n), np.nan)
        R = np.full((n_res, n), np.nan)
        for level, u, j, c, sl in cells:
            if level == "baseline":
                baseline[m.name] = vals[sl]
            elif level == "block":
                B[u, j, c] = vals[sl]
            elif level == "depth":
                D[u, j - 1] = vals[sl]
            else:
                R[j] = vals[sl]
        blocks[m.name], depths[m.name] = B, D
        if n_res:
            res[m.name] = R
    return SpaceProfile(space=space, metrics=specs, n_samples=n, seed=int(seed), blocks=blocks, depths=depths,
                        baseline=baseline, n_evaluations=int(len(G)), seconds=seconds, resolutions=res)


def describe(x: np.ndarray) -> dict:
    """n, mean, std and the quantiles ``q10 .. q90`` of a sample."""
    qs = np.quantile(x, QUANTILES)
    out = {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0}
    out.update({f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs)})
    return out


def _stat_row(m: Any, level: str, unit: int, layer: int, slot: int, choice: str, x: np.ndarray,
              dx: np.ndarray, ref_mean: float) -> dict:
    """One statistics row: the distribution of ``x`` and the paired change ``dx`` vs the reference."""
    row = dict(metric=m.name, kind=m.kind, level=level, unit=unit, layer=layer, slot=slot, choice=choice, **describe(x))
    row["delta"] = float(dx.mean())
    row["delta_se"] = float(dx.std(ddof=1) / math.sqrt(dx.size)) if dx.size > 1 else 0.0
    row["rel_delta"] = row["delta"] / ref_mean if ref_mean else 0.0
    return row


def _with_friendliness(rows: list[dict], sign: float) -> list[dict]:
    """Friendliness in [-1, 1]: the signed change, normalised by the largest change in ``rows``."""
    scale = max([abs(r["delta"]) for r in rows] + [1e-12])
    for r in rows:
        r["friendliness"] = sign * r["delta"] / scale
    return rows


# ============================================================================ io helpers
def save_figure_atomic(fig: Any, path: str | os.PathLike, dpi: int = 130) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=(Path(path).suffix.lstrip(".") or "png"))
    return Path(path)
