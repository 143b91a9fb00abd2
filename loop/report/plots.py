"""The 800x450 PNG plots linked from the paper report: best accuracy over cycles, every run over
cycles, per-class accuracy of the best run, cumulative LLM tokens per role. matplotlib's Agg
canvas only, no pyplot."""
from __future__ import annotations

import io
from pathlib import Path

from loop.report.data import ReportData
from loop.report.helpers import (
    accuracy_limits,
    best_steps,
    improvements,
    noise_half_width,
    per_class,
    val_count,
)
from loop.util.fsutil import atomic_write_bytes

FIGSIZE, DPI = (8.0, 4.5), 100          # 800x450 pixels: the PNG size is known to readers and tests


def new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)     # no pyplot: no global state, no screen needed
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)    # no bbox_inches="tight": keeps 800x450 exactly
    atomic_write_bytes(path, png.getvalue())   # a full disk leaves the previous plot whole
    return path


def empty_note(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def integer_cycles(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))     # cycles are whole numbers


def mark_failures(ax, cycles: list[int]) -> None:
    """Failed runs as red marks on the bottom axis (they have no score to plot)."""
    if cycles:
        ax.scatter(cycles, [0.0] * len(cycles), transform=ax.get_xaxis_transform(), marker="x", color="red",
                   s=60, clip_on=False, zorder=4, label=f"failed ({len(cycles)}, on the axis)")


def plot_best_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Best validation accuracy so far", xlabel="cycle", ylabel="val accuracy")
    last_cycle = max((c.cycle for c in data.cycles), default=0)
    if data.ok_runs:
        steps = best_steps(data) or [(data.ok_runs[0].cycle, data.ok_runs[0].score)]
        xs, ys = [c for c, _ in steps], [b for _, b in steps]     # the kept best: ties never move it
        best = ys[-1]
        xs.append(max(last_cycle, xs[-1]))
        ys.append(best)
        ax.step(xs, ys, where="post", color="tab:blue")
        ax.scatter([r.cycle for r, _ in improvements(data)], [r.score for r, _ in improvements(data)],
                   color="tab:blue", zorder=3, label="new best (outside the noise)")
        half = noise_half_width(best, val_count(data))
        if half is not None:     # the binomial 95% band of the current best on this validation set
            ax.fill_between(xs, [y - half for y in ys], [y + half for y in ys], step="post", color="tab:blue",
                            alpha=0.15, label=f"95% interval (n={val_count(data)})")
        lo, hi = accuracy_limits([r.score for r in data.ok_runs] + [b + (half or 0) for b in ys])
        ax.set_ylim(lo, hi)
        mark_failures(ax, [r.cycle for r in data.runs if not r.ok])
        ax.legend(loc="lower right")
    else:
        empty_note(ax, "no runs yet")
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_runs_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Every training run", xlabel="cycle", ylabel="val accuracy")
    dims = sorted({r.dimension or "unknown" for r in data.ok_runs})
    for dim in dims:
        members = [r for r in data.ok_runs if (r.dimension or "unknown") == dim]
        ax.scatter([r.cycle for r in members], [r.score for r in members], label=dim, alpha=0.8)
    mark_failures(ax, [r.cycle for r in data.runs if not r.ok])
    if data.runs:
        ax.legend(loc="best", fontsize="small")
    else:
        empty_note(ax, "no runs yet")
    ax.set_ylim(*accuracy_limits([r.score for r in data.ok_runs]))
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_per_class_best(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    best, classes = data.best, per_class(data.best)
    ax.set(title=f"Per-class accuracy of the best run{': ' + best.label if best else ''}",
           xlabel="class", ylabel="accuracy")
    if classes:
        ax.bar(list(classes), list(classes.values()), color="tab:green")
        ax.set_ylim(0, 1.05)
    else:
        empty_note(ax, "no runs yet" if best is None else "per-class accuracy unavailable (metrics.json missing)")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_tokens_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Cumulative LLM tokens per role", xlabel="cycle", ylabel="total tokens")
    points = [(c.cycle, c.tokens_total) for c in data.cycles if c.tokens_total]
    roles = sorted({role for _, t in points for role in t})
    for role in roles:
        ax.plot([c for c, _ in points], [t[role].total_tokens if role in t else 0 for _, t in points],
                marker=".", label=role)
    if roles:
        ax.legend(loc="upper left")
    if not points:
        empty_note(ax, "no cycles yet")
    elif not any(u.total_tokens for _, t in points for u in t.values()):
        ax.set_ylim(-1, 10)
        empty_note(ax, "no LLM tokens used (offline policy)", y=0.6)
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
