"""One PNG per tracked run: its loss and accuracy per epoch (curves.png), logged beside EVAL.md so
the tracker's artifact view shows the run without opening the workspace. matplotlib's Agg canvas,
no pyplot (no global state, no screen), as the reports draw theirs."""
from __future__ import annotations

import io
from pathlib import Path

from loop.journal.metrics import EpochRecord
from loop.util.fsutil import atomic_write_bytes

FIGSIZE, DPI = (8.0, 3.6), 100


def curves_png(name: str, curve: list[EpochRecord], path: Path) -> Path | None:
    """Loss (train, val) and accuracy (train, val) over epochs; None when the run has no epoch."""
    if not curve:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    epochs = [r.epoch for r in curve]
    loss, accuracy = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    loss.plot(epochs, [r.train_loss for r in curve], marker="o", label="train")
    loss.plot(epochs, [r.val_loss for r in curve], marker="o", label="val")
    accuracy.plot(epochs, [r.train_accuracy for r in curve], marker="o", label="train")
    accuracy.plot(epochs, [r.val_accuracy for r in curve], marker="o", label="val")
    for ax, title in ((loss, "loss"), (accuracy, "accuracy")):
        ax.set_title(f"{name}: {title}" if ax is loss else title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    atomic_write_bytes(path, png.getvalue())
    return path
