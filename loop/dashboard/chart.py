"""The best-over-cycles chart as server-made SVG (no chart library, nothing to fetch): the best
validation accuracy so far as a step line and every run as a point coloured by its strategy
dimension, with a native tooltip (label, score, trace, config diff from the best).

The y axis spans the successful runs only, padded a little, so runs at 0.975 and 0.984 do not sit
on one line; a failed run has no score and is marked as a red cross along the bottom axis instead
of being drawn at 0, where it would set the scale."""
from __future__ import annotations

from html import escape

from loop.dashboard.data import RunPoint, RunsView
from loop.report.helpers import accuracy_limits

WIDTH, HEIGHT = 960, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 20, 56      # margins: the legend sits on the right
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
FAILED = "#d62728"


def colours(runs: list[RunPoint]) -> dict[str, str]:
    dims = sorted({r.dimension for r in runs if r.ok})
    return {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(dims)}


def tooltip(r: RunPoint) -> str:
    head = f"{r.label} (cycle {r.cycle}, trace {r.trace})"
    what = f"val acc {r.score:.4f}, {r.dimension}" if r.ok else f"{r.status}: {r.error or 'no score'}"
    diff = "; ".join(f"{k}={v}" for k, v in r.diff_from_best.items())
    return escape(f"{head}\n{what}" + (f"\nvs best: {diff}" if diff else ""))


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def svg_chart(view: RunsView) -> str:
    if not view.runs:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} 80" class="chart">'
                f'<text x="{WIDTH // 2}" y="44" text-anchor="middle" fill="#888">no runs yet</text></svg>')
    ok = [r for r in view.runs if r.ok]
    half = view.noise_half_width or 0.0
    band = [s + d for _, s in view.best_series for d in (-half, half)]
    lo, hi = accuracy_limits([r.score for r in ok] + band) if ok else (0.0, 1.0)
    x_max = max(view.cycles, max(r.cycle for r in view.runs), 1)
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(cycle: float) -> float:
        return LEFT + w * cycle / x_max

    def y(score: float) -> float:
        return TOP + h * (1 - (score - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" '
             f'role="img" aria-label="best validation accuracy over cycles">',
             f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    decimals = 3 if hi - lo > 0.02 else 4
    for v in ticks(lo, hi):
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:.{decimals}f}</text>')
    step = max(1, round(x_max / 10))
    for c in range(0, x_max + 1, step):
        parts.append(f'<text x="{x(c):.1f}" y="{TOP + h + 16}" text-anchor="middle" class="tick">{c}</text>')
    parts.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">cycle</text>'
                 f'<text x="14" y="{TOP + h / 2}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {TOP + h / 2})">val accuracy (zoomed)</text>')
    if len(view.best_series) > 1:
        steps, prev = [], None
        for cycle, score in view.best_series:          # a step line: flat until the next new best
            if prev is not None:
                steps.append((cycle, prev))
            steps.append((cycle, score))
            prev = score
        if half:                                       # the best's 95% binomial band on the validation set
            outline = [(c, min(s + half, hi)) for c, s in steps] + [(c, max(s - half, lo)) for c, s in reversed(steps)]
            parts.append(f'<polygon points="{" ".join(f"{x(c):.1f},{y(s):.1f}" for c, s in outline)}" '
                         f'fill="#1f77b4" fill-opacity="0.12"><title>95% interval of the best '
                         f'(n={view.val_images} validation images): +-{half:.4f}</title></polygon>')
        parts.append(f'<polyline points="{" ".join(f"{x(c):.1f},{y(s):.1f}" for c, s in steps)}" fill="none" '
                     f'stroke="#1f77b4" stroke-width="2" stroke-opacity="0.5"/>')
    palette = colours(view.runs)
    for r in ok:
        ring = ' stroke="#000" stroke-width="1.5"' if r.label == view.best_label else ' stroke="#fff"'
        parts.append(f'<circle cx="{x(r.cycle):.1f}" cy="{y(r.score):.1f}" r="5" fill="{palette[r.dimension]}"'
                     f'{ring} data-label="{escape(r.label)}"><title>{tooltip(r)}</title></circle>')
    base = TOP + h + 30                                 # failures: crosses under the axis, not at 0
    for r in view.runs:
        if not r.ok:
            cx = x(r.cycle)
            parts.append(f'<g class="failed"><title>{tooltip(r)}</title>'
                         f'<path d="M{cx - 4:.1f},{base - 4} L{cx + 4:.1f},{base + 4} M{cx - 4:.1f},{base + 4} '
                         f'L{cx + 4:.1f},{base - 4}" stroke="{FAILED}" stroke-width="2"/></g>')
    parts.extend(legend(palette, any(not r.ok for r in view.runs)))
    parts.append("</svg>")
    return "".join(parts)


def legend(palette: dict[str, str], failures: bool) -> list[str]:
    out, lx, ly = [], WIDTH - RIGHT + 14, TOP + 8
    for i, (dim, colour) in enumerate(palette.items()):
        out.append(f'<circle cx="{lx}" cy="{ly + 18 * i}" r="5" fill="{colour}"/>'
                   f'<text x="{lx + 10}" y="{ly + 18 * i + 4}" class="tick">{escape(dim[:20])}</text>')
    if failures:
        i = len(palette)
        out.append(f'<text x="{lx - 4}" y="{ly + 18 * i + 4}" fill="{FAILED}" class="tick">x failed (no score)</text>')
    return out


# ------------------------------------------------------- per-run curves ----
PANEL_W, PANEL_H, PAD = 460, 230, 44
CURVES = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")))


def svg_curves(label: str, curve: list[dict]) -> str:
    """One run's per-epoch loss and accuracy (metrics.json `curve`), two panels side by side."""
    if not curve:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {2 * PANEL_W} 60" class="chart">'
                f'<text x="{PANEL_W}" y="34" text-anchor="middle" fill="#888">{escape(label)}: no per-epoch '
                f'curve in its metrics.json</text></svg>')
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {2 * PANEL_W} {PANEL_H}" class="chart" '
             f'role="img" aria-label="per-epoch curves of {escape(label)}">']
    for i, (title, keys) in enumerate(CURVES):
        parts.extend(panel(curve, keys, f"{title}: {label}", i * PANEL_W))
    parts.append("</svg>")
    return "".join(parts)


def panel(curve: list[dict], keys: tuple[str, str], title: str, x0: int) -> list[str]:
    series = {k: [(int(e.get("epoch", i + 1)), float(e[k])) for i, e in enumerate(curve)
                  if isinstance(e.get(k), (int, float))] for k in keys}
    values = [v for pts in series.values() for _, v in pts]
    epochs = [ep for pts in series.values() for ep, _ in pts]
    if not values:
        return [f'<text x="{x0 + PANEL_W / 2}" y="{PANEL_H / 2}" text-anchor="middle" fill="#888">'
                f'no {escape(title)}</text>']
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.1, 1e-3)
    lo, hi = lo - pad, hi + pad
    e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)
    w, h = PANEL_W - PAD - 16, PANEL_H - 2 * PAD + 10

    def px(ep: float) -> float:
        return x0 + PAD + w * (ep - e_lo) / (e_hi - e_lo)

    def py(v: float) -> float:
        return PAD - 10 + h * (1 - (v - lo) / (hi - lo))

    out = [f'<rect x="{x0 + PAD}" y="{PAD - 10}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
           f'<text x="{x0 + PAD}" y="18" class="axis">{escape(title[:60])}</text>']
    for v in ticks(lo, hi, 4):
        out.append(f'<text x="{x0 + PAD - 4}" y="{py(v) + 4:.1f}" text-anchor="end" class="tick">{v:.3f}</text>')
    out.append(f'<text x="{x0 + PAD}" y="{PAD + h + 6}" class="tick">epoch {e_lo}</text>'
               f'<text x="{x0 + PAD + w}" y="{PAD + h + 6}" text-anchor="end" class="tick">epoch {max(epochs)}</text>')
    for j, (key, pts) in enumerate(series.items()):
        colour = PALETTE[j]
        if len(pts) > 1:
            line = " ".join(f"{px(ep):.1f},{py(v):.1f}" for ep, v in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(f'<circle cx="{px(ep):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"><title>{key} epoch {ep}: '
                   f'{v:.4f}</title></circle>' for ep, v in pts)
        out.append(f'<text x="{x0 + PANEL_W - 20}" y="{18 + 14 * j}" text-anchor="end" fill="{colour}" '
                   f'class="tick">{key}</text>')
    return out
