"""Which runs are kept as the best: each finished run is judged once, against the incumbent of its
time, with the noise band of loop/verdict/noise.py, and its verdict lands in the runs index.

  first    the first full-fidelity success: the incumbent
  gain     beat the incumbent outside the noise: the new incumbent
  tie      within the noise of the incumbent (higher or lower): recorded, not kept
  below    worse than the incumbent by more than the noise
  replica  the incumbent's recipe with another seed: measures the seed spread
  screen   a lower-fidelity run: never compared with full-fidelity scores
  failed   no score
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loop.journal.fingerprint import recipe
from loop.journal.history import RunRecord
from loop.journal.metrics import RunMetrics, metrics_or_none
from loop.verdict.noise import (
    KEEPS,
    Comparison,
    Score,
    Verdict,
    compare,
    median_sd,
    pooled_seed_sd,
    pooled_seed_spread,
    seed_band,
    unpack_correct,
    wilson,
)


def recipe_key(config: dict) -> str:
    """A run's recipe: its config without what does not shape its result's expectation (seed,
    label, where it stops, ...; loop/journal/fingerprint.py)."""
    return recipe(config)


def incumbent(history: list[RunRecord]) -> RunRecord | None:
    """The best run: the last one kept (first or gain). Rows written before verdicts existed fall
    back to the highest full-fidelity score."""
    kept = [r for r in history if r.verdict in KEEPS]
    if kept:
        return kept[-1]
    legacy = [r for r in history if r.ok and r.verdict is None and r.full]
    return max(legacy, key=lambda r: (r.score, -r.cycle)) if legacy else None


def seed_groups(history: list[RunRecord]) -> list[list[float]]:
    """Full-fidelity scores grouped by recipe (groups of two or more are seed replicas)."""
    groups: dict[str, list[float]] = {}
    for r in history:
        if r.ok and r.full and r.config:
            groups.setdefault(recipe_key(r.config), []).append(r.score)
    return [g for g in groups.values() if len(g) > 1]


def seed_sd(history: list[RunRecord]) -> float | None:
    return pooled_seed_sd(seed_groups(history))


def load_score(record: RunRecord) -> Score:
    """A run's validation score with its per-image record from its metrics.json (when readable)."""
    out = Path(record.run_dir)                 # run-written: no link followed below its run folder
    return score_of(record, metrics_or_none(out, within=out.parent) if record.run_dir else None)


def score_of(record: RunRecord, metrics: RunMetrics | None) -> Score:
    """A run's validation score with its per-image record from metrics already read."""
    count, correct = record.val_count, None
    if metrics is not None and metrics.eval is not None:
        count = metrics.eval.count or count
        correct = unpack_correct(metrics.eval.correct, count)
    return Score(record.score, count, correct)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    margin: float | None = None
    band: float | None = None
    test: str = ""


def verdict_against_best(history: list[RunRecord], new: RunRecord, score: Score | None = None,
                         best_score: Score | None = None) -> Judgement:
    """The verdict of a finished run against the incumbent of `history` (the runs before it)."""
    if not new.ok:
        return Judgement("failed")
    if not new.full:
        return Judgement("screen", test=f"fidelity {new.fidelity:.2f}: not compared with full runs")
    best = incumbent(history)
    if best is None:
        return Judgement("first")
    if new.config and recipe_key(new.config) == recipe_key(best.config):
        return Judgement("replica", round(new.score - best.score, 6), test=f"seed replica of {best.label}")
    old = best_score or load_score(best)
    sd, basis = judging_sd(history, old)
    result: Comparison = compare(score or load_score(new), old, sd)
    return Judgement(result.verdict, round(float(result.margin), 6), round(float(result.band), 6),
                     f"vs {best.label}: {result.test}" + (f" ({basis})" if basis else ""))


def judging_sd(history: list[RunRecord], old: Score) -> tuple[float | None, str]:
    """The seed spread a gain over `old` must clear, with how it was reached: the replicas' pooled
    sd scaled to its median (few replicas understate it), and never below the binomial sd of the
    incumbent's validation split, which stands in before any replica exists. Measured spreads were
    below that floor on digits (0.0021 vs 0.0048) and above it on shapes (0.0367 vs 0.029;
    bench/RESULTS.md), where gains kept with no floor at all lay inside the noise 2 times of 3."""
    floor = sampling_sd(old.accuracy, old.count) if old.count else None
    spread = pooled_seed_spread(seed_groups(history))
    if spread is None:
        return floor, "seed spread not measured yet: assumed the sampling sd" if floor else ""
    measured, dof = median_sd(*spread), spread[1]
    if floor is not None and floor > measured:
        return floor, f"measured seed sd {measured:.4f} ({dof} dof) is below the sampling sd {floor:.4f}: used that"
    return measured, f"measured seed sd, {dof} dof, median-scaled"


def sampling_sd(accuracy: float, n: int) -> float:
    """The binomial sd of an accuracy on n images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-4) / n)


def inside_noise(history: list[RunRecord], loader=None) -> list[RunRecord]:
    """Kept improvements (gains) that the noise band known now would call a tie: the target is none.
    Each gain is re-judged against the incumbent before it with today's seed spread (judging_sd):
    image by image when both runs' per-image records are still on disk, else its recorded margin
    against its recorded band and today's seed band."""
    out, load = [], loader or load_score
    for i, r in enumerate(history):
        if r.verdict != "gain":
            continue
        before = incumbent(history[:i])
        if before is None:
            continue
        new, old = load(r), load(before)
        sd, _ = judging_sd(history, old)
        if new.correct is not None and old.correct is not None:
            still = compare(new, old, sd).verdict == "gain"
        else:
            margin = r.margin if r.margin is not None else r.score - before.score
            still = margin > max(r.band or 0.0, seed_band(sd))
        if not still:
            out.append(r)
    return out


def ranked(history: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """Full-fidelity successes, and the lower-fidelity ones apart (never ranked with them). The kept
    best heads the full ones: a run that scored higher inside the noise (a tie, a seed replica)
    follows it with its verdict, so no leaderboard shows a tie as the new best. The rest by score."""
    ok = sorted((r for r in history if r.ok), key=lambda r: (-r.score, r.cycle))
    best = incumbent(history)
    full = [r for r in ok if r.full]
    if best is not None and best in full:
        full = [best, *(r for r in full if r is not best)]
    return full, [r for r in ok if not r.full]


def interval_text(record: RunRecord) -> str:
    """A score with its 95% interval on its validation images, e.g. '0.9815 [0.9574, 0.9921]'."""
    ci = wilson(record.score, record.val_count)
    return f"{record.score:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def noise_text(history: list[RunRecord]) -> str:
    """The noise band as the Builder, the reports and the dashboard state it."""
    best = incumbent(history)
    if best is None:
        return "no full-fidelity best yet"
    sd, basis = judging_sd(history, Score(best.score, best.val_count))
    seeds = (f"seed spread sd {sd:.4f} ({basis}; a gain must exceed {seed_band(sd):.4f})" if sd is not None
             else "seed spread not measured yet (no seed replica)")
    n = f" on {best.val_count} validation images (one image = {1 / best.val_count:.4f})" if best.val_count else ""
    return (f"best {best.label} {interval_text(best)}{n}; {seeds}. A new best must beat it outside the noise "
            "(paired McNemar test on the same images, p < 0.05, and above the seed band); otherwise it is a tie.")
