"""PHASE's statistics: the Student-t interval of a QTIME mean.

Per model PHASE reports the mean, the sample std and a `phase.confidence` confidence interval of
the mean accuracy over its n evaluations: mean +- t(1 - alpha/2, n - 1) * std / sqrt(n), the
Student-t quantile from scipy, clipped to [0, 1]; with n = 1 the interval is the mean itself. It
is the interval of the QTIME mean, so it narrows as evaluations are added; the std is the spread a
single evaluation has.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import t as student_t


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t_p with `df` degrees of freedom, for 0.5 < p < 1."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1 (got p={p}, df={df})")
    return float(student_t.ppf(p, df))


def mean_ci(values: list[float], confidence: float) -> tuple[float, float, float, float]:
    """(mean, sample std, ci_low, ci_high) of `values`: a Student-t interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, 0.0, mean, mean
    std = float(x.std(ddof=1))
    half = t_quantile((1 + confidence) / 2, len(x) - 1) * std / math.sqrt(len(x))
    return mean, std, max(0.0, mean - half), min(1.0, mean + half)


def r6(value: float) -> float:
    """`value` rounded to 6 decimals, as phase_results.json stores statistics."""
    return round(float(value), 6)
