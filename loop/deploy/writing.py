"""What prediction writes: the submission CSV, the probabilities CSV (both atomically: a kill
leaves the old file or the new one, never half a submission) and the accuracy estimate."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loop.errors import ConfigError
from loop.util.fsutil import atomic_write_text
from loop.verdict.noise import wilson


@dataclass(frozen=True)
class AccuracyEstimate:
    """Test accuracy and its 95% Wilson score interval (sound near 0 and 1 and on small sets,
    where the normal approximation's interval leaves [0, 1])."""

    correct: int
    total: int
    accuracy: float
    low: float
    high: float


def accuracy_estimate(correct: int, total: int) -> AccuracyEstimate:
    """`correct` of `total` test images, with the one Wilson interval (loop/verdict/noise.py)."""
    low, high = wilson(correct / total, total)
    return AccuracyEstimate(correct=correct, total=total, accuracy=correct / total, low=low, high=high)


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def check_columns(id_column: str, label_column: str, class_names: list[str]) -> None:
    """Refuse output column names that would make an ambiguous CSV, before anything is written."""
    if not id_column or not label_column:
        raise ConfigError("--out-id-column and --out-label-column must not be empty")
    if id_column == label_column:
        raise ConfigError(f"--out-id-column and --out-label-column are both {id_column!r}")
    if id_column in class_names:
        raise ConfigError(f"--out-id-column {id_column!r} is also a class name: the probabilities CSV would have "
                          "two columns of that name; choose another id column name")


def write_submission(path: Path, ids: list[str], labels: list[str], id_column: str, label_column: str) -> None:
    atomic_write_text(path, _csv_text([id_column, label_column], zip(ids, labels)))


def write_probabilities(path: Path, ids: list[str], probs: np.ndarray, class_names: list[str],
                        id_column: str) -> None:
    """id, then one column per class in the model's class order; 8 significant digits."""
    rows = ([sid, *(f"{p:.8g}" for p in row)] for sid, row in zip(ids, probs.tolist()))
    atomic_write_text(path, _csv_text([id_column, *class_names], rows))
