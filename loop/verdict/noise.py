"""The noise band: when a higher validation accuracy is a real gain and when it is a tie.

Two sources of noise, both measured:
  - the validation split's sampling error: two runs scored on the same images are compared image
    by image (an exact one-sided McNemar test on the images one got right and the other wrong);
    without the per-image record, their 95% Wilson intervals must not overlap;
  - the seed spread: seed replicas of one config (same config, another `run.seed`) give a pooled
    standard deviation s; a gain must also exceed 1.96 * sqrt(2) * s (a difference of two runs).
A new best must clear both; otherwise it is a tie and the incumbent stays. One definition, used by
the cycle when it records a run, the offline policy, the context, the reports, the leaderboard,
the dashboard and the generalize gate; `wilson` is also the test-set estimate of `llmloop predict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ALPHA = 0.05                    # one-sided: the new run is better
Z95 = 1.959964

Verdict = Literal["first", "gain", "tie", "below", "screen", "replica", "failed"]
KEEPS = ("first", "gain")       # verdicts that make a run the incumbent (the best)


@dataclass(frozen=True)
class Score:
    """One run's validation result, as the comparison needs it."""

    accuracy: float
    count: int | None = None              # validation images
    correct: np.ndarray | None = None     # per image right/wrong, in the split's order


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    margin: float                  # new - incumbent
    band: float                    # the smallest margin that would have been a gain (approximate)
    test: str                      # how it was decided, for the record


def wilson(accuracy: float, n: int | None) -> tuple[float, float] | None:
    """The 95% Wilson interval of an accuracy measured on n images (None without a count)."""
    if not n:
        return None
    denom = 1 + Z95 ** 2 / n
    centre = (accuracy + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(accuracy * (1 - accuracy) / n + Z95 ** 2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(new: np.ndarray, old: np.ndarray) -> float:
    """One-sided exact McNemar: the chance of the new run winning at least this many of the
    discordant images if both were equally good."""
    wins, losses = int(np.sum(new & ~old)), int(np.sum(~new & old))
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest  # here, not at the top: the trainer imports this module (0.5 CPU-s)

    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def seed_band(sd: float | None) -> float:
    """The margin a difference of two single runs needs to clear the seed spread."""
    return Z95 * math.sqrt(2) * sd if sd else 0.0


def sampling_band(score: float, n: int | None) -> float:
    """Roughly the margin the paired test needs on n images (for display and the policy)."""
    return Z95 * math.sqrt(2 * score * (1 - score) / n) if n else 0.0


def compare(new: Score, old: Score, seed_sd: float | None = None) -> Comparison:
    """Is `new` a real gain over `old`? Both must have been scored on the same validation images."""
    margin = new.accuracy - old.accuracy
    s_band = seed_band(seed_sd)
    if new.correct is not None and old.correct is not None and len(new.correct) == len(old.correct):
        p = mcnemar_p(new.correct, old.correct)
        significant, test = p < ALPHA, f"paired McNemar p={p:.3g}"
        band = sampling_band(old.accuracy, len(old.correct))
    elif new.count and old.count:
        lo_new, hi_old = wilson(new.accuracy, new.count)[0], wilson(old.accuracy, old.count)[1]
        significant, test = lo_new > hi_old, f"95% intervals {'apart' if lo_new > hi_old else 'overlap'}"
        band = hi_old - old.accuracy + (new.accuracy - lo_new)
    else:
        significant, test, band = margin > 0, "no validation count: raw scores", 0.0
    if s_band:
        test += f"; seed band {s_band:.4f}"
    if margin > 0 and significant and margin > s_band:
        return Comparison("gain", margin, max(band, s_band), test)
    verdict: Verdict = "tie" if margin > -max(band, s_band) else "below"
    return Comparison(verdict, margin, max(band, s_band), test)


def pooled_seed_sd(groups: list[list[float]]) -> float | None:
    """The pooled standard deviation of seed replicas (each group: one config's scores over seeds);
    None until some config has two seeds."""
    spread = pooled_seed_spread(groups)
    return spread[0] if spread else None


def pooled_seed_spread(groups: list[list[float]]) -> tuple[float, int] | None:
    """(pooled sd, degrees of freedom) of seed replicas; None until some config has two seeds."""
    num, dof = 0.0, 0
    for scores in groups:
        if len(scores) > 1:
            mean = sum(scores) / len(scores)
            num += sum((s - mean) ** 2 for s in scores)
            dof += len(scores) - 1
    return (math.sqrt(num / dof), dof) if dof else None


def median_sd(sd: float, dof: int) -> float:
    """A sample sd from few replicas is usually below the true one (with one degree of freedom, half
    the time below 0.67 of it): scaled so it is as likely above as below (the chi-square median)."""
    from scipy.stats import chi2

    return sd * math.sqrt(dof / chi2.ppf(0.5, dof))


def beats_by(new: Score, old: Score, delta: float) -> tuple[bool, str]:
    """The generalize gate's rule: `new` must beat `old` by `delta`, and with delta > 0 the gain must
    also lie outside the noise (a delta met inside the noise is a tie, not a pass). delta == 0 keeps
    the plain `new >= old`."""
    margin = new.accuracy - old.accuracy
    if delta <= 0:
        return margin >= delta, f"margin {margin:+.4f} >= {delta}"
    if margin < delta:
        return False, f"margin {margin:+.4f} < delta {delta}"
    result = compare(new, old)
    return result.verdict == "gain", f"margin {margin:+.4f} >= delta {delta}; {result.test}: {result.verdict}"


def pack_correct(correct: np.ndarray) -> str:
    """A per-image right/wrong vector as text for metrics.json (np.packbits, hex)."""
    return np.packbits(np.asarray(correct).astype(bool)).tobytes().hex()


def unpack_correct(text: str, count: int | None) -> np.ndarray | None:
    """The vector pack_correct wrote (None when it was not recorded or is unreadable)."""
    if not text or not count:
        return None
    try:
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))
    except ValueError:
        return None
    return bits[:count].astype(bool) if len(bits) >= count else None
