"""The search's front as an SVG file, written without a plotting library.

A search that ends in a second should not spend a third of it importing matplotlib to draw one
scatter plot: an SVG is text (a few kB), opens in any browser, scales without blurring, and is
written here in about a millisecond. The figure: the front as dots joined by a step line, each
budget a dashed vertical line with its best arch starred, and a legend naming each star (so no two
labels can overlap, however close the budgets).
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

#: one colour per budget, cycled
COLOURS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
FRONT = "#1f77b4"
W, H = 640, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 48


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:.6g}"


def _star(x: float, y: float, r: float) -> str:
    pts = []
    for i in range(10):
        a = math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append(f"{x + rr * math.cos(a):.1f},{y - rr * math.sin(a):.1f}")
    return " ".join(pts)


def front_svg(result: Any) -> str:
    """The SVG text of ``result``'s front (a :class:`~hwnas.search.nsga.SearchResult`)."""
    acc = np.asarray(result.accuracy, dtype=float)
    lat = np.asarray(result.latency, dtype=float)
    scale = 100.0 if len(acc) and np.abs(acc).max() <= 1.0 else 1.0
    unit = "%" if scale == 100 else ""
    acc = acc * scale
    best = result.best_at_budgets()
    xs = np.concatenate([lat, np.asarray(list(best), dtype=float)])
    ys = acc
    x0, x1 = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
    y0, y1 = (float(ys.min()), float(ys.max())) if len(ys) else (0.0, 1.0)
    padx, pady = 0.04 * (x1 - x0) or 0.5, 0.06 * (y1 - y0) or 0.5
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return TOP + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    # grid and ticks
    for t in nice_ticks(x0, x1):
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 15}" text-anchor="middle">{_label(t)}</text>')
    for t in nice_ticks(y0, y1):
        y = py(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    # the front: a step line through the members, then the members
    if len(lat):
        pts = [(px(lat[0]), py(acc[0]))]
        for i in range(1, len(lat)):
            pts += [(px(lat[i]), py(acc[i - 1])), (px(lat[i]), py(acc[i]))]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{FRONT}" stroke-opacity="0.6"/>')
        out += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="{FRONT}"/>' for a, b in zip(lat, acc)]
    # budgets
    legend = [(FRONT, "dot", f"front ({len(lat)} archs)")]
    for i, (b, item) in enumerate(best.items()):
        c = COLOURS[i % len(COLOURS)]
        x = px(float(b))
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="{c}" stroke-dasharray="5,3"/>')
        if item is None:
            legend.append((c, "star", f"≤ {b:g}: none"))
        else:
            _, a, l = item
            out.append(f'<polygon points="{_star(px(l), py(a * scale), 8)}" fill="{c}"/>')
            legend.append((c, "star", f"≤ {b:g}: {a * scale:.2f}{unit} at {l:.4g}"))
    # legend, lower right
    lw = 12 + 6.2 * max(len(t) for _, _, t in legend) + 24
    lh = 16 * len(legend) + 8
    lx, ly = LEFT + pw - lw - 8, TOP + ph - lh - 8
    out.append(f'<rect x="{lx:.1f}" y="{ly:.1f}" width="{lw:.1f}" height="{lh}" fill="white" fill-opacity="0.85" stroke="#aaa"/>')
    for k, (c, kind, text) in enumerate(legend):
        cy = ly + 14 + 16 * k
        if kind == "dot":
            out.append(f'<circle cx="{lx + 14:.1f}" cy="{cy - 4:.1f}" r="3" fill="{c}"/>')
        else:
            out.append(f'<polygon points="{_star(lx + 14, cy - 4, 6)}" fill="{c}"/>')
        out.append(f'<text x="{lx + 26:.1f}" y="{cy:.1f}">{escape(text)}</text>')
    # title and axis names
    title = f"{getattr(result.space, 'name', 'space')}: {result.n_evals} evals" + (" (partial)" if result.partial else "")
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{TOP - 12}" text-anchor="middle" font-size="13">{escape(title)}</text>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{H - 10}" text-anchor="middle">latency</text>')
    yname = "predicted top-1 (%)" if scale == 100 else "accuracy"
    out.append(f'<text transform="translate(16 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{yname}</text>')
    out.append("</svg>\n")
    return "\n".join(out)
