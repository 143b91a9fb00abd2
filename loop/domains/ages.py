"""Where a task's ages come from, and whether they can pick the recall and delta probes.

recall is drawn from the older part of the data and delta from the newest part (base.make_splits).
That only means something while age is not class in disguise: files copied class by class get
modification times in class order, and then recall lacks the newest classes and delta the oldest.
`check_ages` measures it (a probe that lacks a class; Cramér's V between class and age decile).
File times, which nobody chose as ages, then give way to `stratified_draw` (every class in every
probe). Ages someone stated (a CSV's `age_column`, a task's own sample order) are kept and warned of.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from loop.errors import DomainError

# ---- where ages come from (one definition; a SampleSet carries it) ----
AgeSource = Literal["order", "column", "file_mtime"]
# order        the task's own sample order (digits, shapes, a user's domain): the task says so
# column       a CSV's `age_column`: the user's statement, kept whatever it correlates with
# file_mtime   a file's modification time: an accident of copying, so it gives way when confounded
FALLBACK_SOURCES: tuple[AgeSource, ...] = ("file_mtime",)

# ---- when ages are confounded with class ----
# Measured: shuffled ages <= 0.30 (60 images), digits 0.00, shapes 0.03; class-by-class copies 0.86-1.0.
CONFOUNDED_V = 0.5
AGE_BINS = 10                 # age deciles: coarse enough that a few hundred images fill every cell
MIN_FOR_PROBES = 3            # a class needs one image each for train, recall and delta


class AgeCheck(BaseModel):
    """Whether the ages could pick the recall and delta probes, and what the splits did about it."""

    ages_from: AgeSource = "order"
    cramers_v: float = 0.0                    # class vs age decile, bias-corrected: 0 unrelated, 1 age is class
    missing: dict[str, list[int]] = Field(default_factory=dict)   # probe -> classes its age-based draw lacked
    fell_back: bool = False                   # recall and delta were drawn stratified, not by age
    lacking: dict[str, list[int]] = Field(default_factory=dict)   # probe -> classes it lacks after falling back

    @property
    def confounded(self) -> bool:
        return bool(self.missing) or self.cramers_v >= CONFOUNDED_V

    def warning(self, class_names: list[str]) -> str:
        """One sentence for the top of the data report ('' when the ages are fine)."""
        if not self.confounded:
            return ""
        what = {"file_mtime": "file modification times", "column": "the age column",
                "order": "the sample order"}[self.ages_from]
        v = f"Cramér's V {self.cramers_v:.2f} between class and age decile"
        text = (f"AGES: age ({what}) follows the class ({v}; {CONFOUNDED_V} or more counts as confounded)"
                if self.cramers_v >= CONFOUNDED_V else f"AGES: age ({what}) left probes short of classes ({v})")
        gaps = "; ".join(f"the age-based {p} lacked {_names(cs, class_names)}" for p, cs in self.missing.items())
        text += f"; {gaps}. " if gaps else ". "
        if self.fell_back:
            text += ("Recall and delta fell back to a stratified random draw that keeps every class in both "
                     "(recall no longer means older, delta no longer newer).")
        else:
            text += "The splits keep these ages as stated, so recall and delta probe a skewed mix of classes."
        if self.lacking:
            text += " Still lacking (too few images): " + "; ".join(
                f"{p} {_names(cs, class_names)}" for p, cs in self.lacking.items()) + "."
        return text


def _names(classes: list[int], class_names: list[str], shown: int = 10) -> str:
    """Class names, the first `shown` of them (a 100-class task would fill a screen)."""
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in classes]
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def cramers_v(labels: np.ndarray, ages: np.ndarray) -> float:
    """Bias-corrected Cramér's V (Bergsma 2013) between class and age decile, deciles taken in the
    order the splits use (stable sort: ties keep sample order)."""
    n = len(labels)
    if n < 2:
        return 0.0
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(ages, kind="stable")] = np.arange(n)
    bins = rank * AGE_BINS // n
    _, cls = np.unique(labels, return_inverse=True)
    table = np.zeros((cls.max() + 1, AGE_BINS), dtype=np.float64)
    np.add.at(table, (cls, bins), 1.0)
    table = table[:, table.sum(axis=0) > 0]
    k, r = table.shape
    if k < 2 or r < 2:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    phi2 = float(((table - expected) ** 2 / expected).sum()) / n
    phi2 = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    k_c, r_c = k - (k - 1) ** 2 / (n - 1), r - (r - 1) ** 2 / (n - 1)
    denom = min(k_c - 1, r_c - 1)
    return round(float(np.sqrt(phi2 / denom)), 4) if denom > 0 else 0.0


def probe_gaps(labels: np.ndarray, probes: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Probe -> the classes (with MIN_FOR_PROBES+ images in the data) it lacks, for probes large
    enough to hold one of each; probes with no gap are left out."""
    classes, counts = np.unique(labels, return_counts=True)
    expected = set(classes[counts >= MIN_FOR_PROBES].tolist())
    gaps = {}
    for name, idx in probes.items():
        lack = sorted(expected - set(labels[idx].tolist()))
        if lack and len(idx) >= len(expected):
            gaps[name] = [int(c) for c in lack]
    return gaps


def stratified_draw(pool: np.ndarray, labels: np.ndarray, count: int, seed: int, what: str, domain: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest), both sorted: `count` indices of `pool`, each class in proportion to its share
    and at least one of every class that can spare one (the rest keeps one of each); random within
    a class, the same for the same seed."""
    if count <= 0:
        return pool[:0], pool
    if count >= len(pool):
        raise DomainError(f"{domain}: too few samples to hold out a {what} set of {count}")
    classes, counts = np.unique(labels[pool], return_counts=True)
    share = counts * count / len(pool)
    quota = np.maximum(np.floor(share).astype(np.int64), (counts >= 2).astype(np.int64))
    while quota.sum() < count:            # the largest shortfalls first, keeping one of each class back
        room = quota < counts - 1
        room = room if room.any() else quota < counts
        quota[int(np.argmax(np.where(room, share - quota, -np.inf)))] += 1
    while quota.sum() > count:            # more classes than places: the most over-served classes give way
        keep = 1 if (quota > 1).any() else 0
        quota[int(np.argmax(np.where(quota > keep, quota - share, -np.inf)))] -= 1
    rng = np.random.default_rng(seed)
    pool_labels = labels[pool]
    taken = np.concatenate([rng.choice(pool[pool_labels == c], size=int(q), replace=False)
                            for c, q in zip(classes, quota)])
    return np.sort(taken), np.setdiff1d(pool, taken)
