"""The data report as plain-text lines, for the workpad's Data Exploration section (one entry each).
What would mislead a reader of the scores (ages that pick probes by class) comes first. Callers pass
a DataReport (loop/domains/datareport.py); that module does not import this one, so no circle."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loop.domains.datareport import DataReport


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _class_counts(counts: dict[str, int], each_end: int = 3) -> str:
    """Every class when there are few (up to 12); else the smallest and largest few."""
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if len(ranked) <= 12:
        return ", ".join(f"{c} {n}" for c, n in counts.items())
    small = ", ".join(f"{c} {n}" for c, n in ranked[:each_end])
    large = ", ".join(f"{c} {n}" for c, n in ranked[-each_end:])
    return f"smallest {small}; largest {large}"


def summary_lines(r: DataReport) -> list[str]:
    """Plain-text lines for the workpad's Data Exploration section; a warning about the ages first."""
    s = r.sizes
    small, small_n = r.smallest_class
    lines = [f"WARNING {r.age_warning()}"] if r.age_warning() else []
    lines += [f"Data report ({r.domain}, fingerprint {r.fingerprint[:12]}): {r.images} images, "
              f"{len(r.class_names)} classes, {r.channels} channel(s); read in {r.seconds:.1f}s.",
              "Images per split: " + ", ".join(f"{n} {c.images}" for n, c in r.splits.items()) + ".",
              f"Train images per class: {_class_counts(r.splits['train'].per_class)}; imbalance max/min "
              f"{r.imbalance if r.imbalance is not None else 'n/a'}, smallest class {small} ({small_n}).",
              f"Native image sizes (HxW): min {_hw(s.min_hw)}, median {_hw(s.median_hw)}, max {_hw(s.max_hw)}; "
              f"most common {_hw(s.most_common_hw)} ({s.most_common_share:.0%}), {s.distinct} distinct; "
              f"median shorter side {s.median_side} px."]
    if r.unreadable_count:
        shown = "; ".join(f"{u.split}/{u.id}: {u.error}" for u in r.unreadable[:3])
        lines.append(f"Unreadable files: {r.unreadable_count} (left out of the figures), e.g. {shown}.")
    else:
        lines.append("Unreadable files: none.")
    for o in r.leaks:
        pairs = ", ".join(f"{a} = {b}" for a, b in o.examples[:3])
        lines.append(f"LEAK train->{o.b}: {o.images} {o.b} image(s) are exact pixel copies of train images "
                     f"(e.g. {pairs}); {o.b} scores are inflated by them.")
    if not r.leaks:
        lines.append("Exact duplicates across train and val/recall/delta/drift: none (no leak).")
    within = [o for o in r.within_split if o.images]
    if within:
        lines.append("Exact duplicates within a split (no leak): "
                     + ", ".join(f"{o.a} {o.images}" for o in within) + ".")
    other = [o for o in r.overlaps if o.a != o.b and not o.is_leak]
    if other:
        lines.append("Exact copies between held-out sets: " + ", ".join(f"{o.a}/{o.b} {o.images}" for o in other) + ".")
    if r.label_conflicts:
        pairs = ", ".join(f"{a} / {b}" for a, b in r.label_conflict_examples[:3])
        lines.append(f"Identical images with different labels: {r.label_conflicts} (e.g. {pairs}).")
    return lines
