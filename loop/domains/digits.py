"""The embedded default task: scikit-learn's bundled 8x8 handwritten digits (no download).
Sample order stands in for acquisition time (later index = newer)."""
from __future__ import annotations

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain


class DigitsDomain(SpicaDomain):
    name = "digits"

    def load_all(self) -> tuple[SampleSet, list[str]]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
        n = len(images)
        return (SampleSet(labels=bunch.target.astype(np.int64), ids=np.array([f"digits-{i}" for i in range(n)]),
                          ages=np.arange(n, dtype=np.float64), channels=1, array=images),
                [str(c) for c in bunch.target_names])
