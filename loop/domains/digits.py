"""The embedded default task: scikit-learn's bundled 8x8 handwritten digits (no download).
Sample order stands in for acquisition time (later index = newer).

The file is read where scikit-learn installed it, as its `load_digits` reads it, without importing
scikit-learn (1.2 CPU-s of every run's start; tests/test_split.py checks the same pixels and labels)."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain
from loop.errors import DomainError


class DigitsDomain(SpicaDomain):
    name = "digits"

    def load_all(self) -> tuple[SampleSet, list[str]]:
        with gzip.open(digits_file()) as f:
            rows = np.loadtxt(f, delimiter=",")
        images = np.clip(np.round(rows[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        n = len(images)
        return (SampleSet(labels=rows[:, -1].astype(np.int64), ids=np.array([f"digits-{i}" for i in range(n)]),
                          ages=np.arange(n, dtype=np.float64), channels=1, array=images[..., None]),
                [str(c) for c in range(10)])


def digits_file() -> Path:
    """scikit-learn's digits.csv.gz (64 pixel columns 0-16, then the label), found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():
        raise DomainError("digits: scikit-learn's bundled digits.csv.gz is not installed (pip install scikit-learn)")
    return path
