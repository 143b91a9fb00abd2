"""Know the data: a report built from the domain itself, before the first run trains on it.

Per split: images and per-class counts; the train split's class imbalance; the native image sizes
and channels; unreadable files (recorded, never fatal); and exact duplicates, by a digest of the
decoded pixels. An image in val/recall/delta/drift whose pixels also occur in train is a LEAK: the
probes and the validation score would reward memorising it. Copies inside one split are reported
but are no leak. Whether the ages could pick the recall and delta probes (loop/domains/ages.py): when
they mirror the class order, the summary warns of it first.

One pass over the images, one image in memory at a time (only its digest and size are kept), so a
50,000-image folder costs one decode per image. The per-image reader is a seam: one that takes the
`pixel_digest`s and native sizes from the decoded-pixel cache can replace decoding
(`build_data_report(domain, read=...)`).

Saved as JSON (`<workspace>/logs/data_report.json`) with the fingerprint of the data it describes;
`ensure_data_report` reuses it while the fingerprint matches and rebuilds it when the data changes.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from pydantic import BaseModel, Field

from loop.domains.ages import AgeCheck
from loop.domains.base import SPLIT_NAMES, SampleSet, SpicaDomain
from loop.domains.pixels import pixel_digest
from loop.errors import DomainError
from loop.util.fsutil import atomic_write_text

__all__ = ["DataReport", "ImageFacts", "ImageReader", "Overlap", "SizeStats", "SplitCounts", "Unreadable",
           "build_data_report", "decode_facts", "domain_fingerprint", "ensure_data_report", "load_data_report",
           "pixel_digest", "save_data_report"]

REPORT_VERSION = 2          # part of the fingerprint: a new report format rebuilds old reports (2: ages)
EXAMPLES = 5                # example id pairs kept per duplicate kind
UNREADABLE_KEPT = 100       # unreadable files listed by id (all are counted)
LEFT_OUT = "left out"       # the `split` of an entry the domain itself left out as unreadable
READ_THREADS = 8            # PIL decodes with the GIL released: threads overlap file reads and decodes


# ------------------------------------------------------------------ records ----

class SplitCounts(BaseModel):
    images: int
    per_class: dict[str, int]                 # class name -> images, every class listed


class SizeStats(BaseModel):
    """Native (decoded, before any resize) image sizes over every readable image."""

    min_hw: tuple[int, int] = (0, 0)
    median_hw: tuple[int, int] = (0, 0)
    max_hw: tuple[int, int] = (0, 0)
    median_side: int = 0                      # median of the shorter side: what "native size" means here
    most_common_hw: tuple[int, int] = (0, 0)
    most_common_share: float = 0.0
    distinct: int = 0


class Unreadable(BaseModel):
    split: str                                # a split, or LEFT_OUT: never in any split
    id: str
    error: str


class Overlap(BaseModel):
    """Images of split `b` whose exact pixels already occur in split `a` (a == b: extra copies inside
    one split). `examples` are (id in a, id in b) pairs."""

    a: str
    b: str
    images: int
    examples: list[tuple[str, str]] = Field(default_factory=list)

    @property
    def is_leak(self) -> bool:
        return self.a == "train" and self.b != "train"


class DataReport(BaseModel):
    """What the data is, as the loop saw it at `created`, for the data with `fingerprint`."""

    fingerprint: str
    domain: str
    domain_args: dict = Field(default_factory=dict)
    created: str = ""
    seconds: float = 0.0
    class_names: list[str]
    channels: int
    splits: dict[str, SplitCounts]
    sizes: SizeStats = Field(default_factory=SizeStats)
    unreadable_count: int = 0
    unreadable: list[Unreadable] = Field(default_factory=list)     # the first UNREADABLE_KEPT
    overlaps: list[Overlap] = Field(default_factory=list)          # within and across splits
    label_conflicts: int = 0                  # pixel-identical images that carry different labels
    label_conflict_examples: list[tuple[str, str]] = Field(default_factory=list)
    ages: AgeCheck | None = None              # whether ages could pick recall and delta (None: a report before v2)

    # ---- the figures people ask for ----
    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def leaks(self) -> list[Overlap]:
        """Train images repeated in val or a probe set (the score would reward memorising them)."""
        return [o for o in self.overlaps if o.is_leak]

    @property
    def within_split(self) -> list[Overlap]:
        return [o for o in self.overlaps if o.a == o.b]

    @property
    def smallest_class(self) -> tuple[str, int]:
        counts = self.splits["train"].per_class
        name = min(counts, key=lambda c: (counts[c], c)) if counts else ""
        return name, counts.get(name, 0)

    @property
    def imbalance(self) -> float | None:
        """Largest over smallest class count in train; None when a class has no training image."""
        counts = list(self.splits["train"].per_class.values())
        return round(max(counts) / min(counts), 3) if counts and min(counts) > 0 else None

    def figures(self) -> dict:
        """The main figures, flat, for the `data_report` event."""
        small, small_n = self.smallest_class
        return {"fingerprint": self.fingerprint, "domain": self.domain, "images": self.images,
                "classes": len(self.class_names), "channels": self.channels,
                "split_images": {name: s.images for name, s in self.splits.items()},
                "train_imbalance": self.imbalance, "smallest_class": small, "smallest_class_train": small_n,
                "median_hw": list(self.sizes.median_hw), "most_common_hw": list(self.sizes.most_common_hw),
                "median_side": self.sizes.median_side, "unreadable": self.unreadable_count,
                "duplicates_within": {o.a: o.images for o in self.within_split},
                "leaks": {f"{o.a}->{o.b}": o.images for o in self.leaks},
                "label_conflicts": self.label_conflicts, "seconds": self.seconds,
                "ages_from": self.ages.ages_from if self.ages else None,
                "age_class_v": self.ages.cramers_v if self.ages else None,
                "age_fallback": bool(self.ages and self.ages.fell_back), "age_warning": self.age_warning()}

    def leak_text(self) -> str:
        """One sentence naming every leaking split pair and its count ('' when none)."""
        return "; ".join(f"{o.images} {o.b} image(s) are exact pixel copies of train images"
                         + (f" (e.g. {o.examples[0][0]} = {o.examples[0][1]})" if o.examples else "")
                         for o in self.leaks)

    def age_warning(self) -> str:
        """One sentence when the ages mirror the class order or a probe lacks a class ('' when fine)."""
        return self.ages.warning(self.class_names) if self.ages else ""


# ------------------------------------------------------------- the digest seam ----
# `pixel_digest` (loop/domains/pixels.py) is the one digest: the decoded-pixel cache's `.facts.npz`
# holds the same digests, so a reader can take them from there instead of decoding again.

@dataclass(frozen=True)
class ImageFacts:
    """What the report keeps of one image."""

    height: int
    width: int
    digest: str


# (split name, its samples, index) -> the image's facts; raises DomainError for an unreadable image
ImageReader = Callable[[str, SampleSet, int], ImageFacts]


def decode_facts(split: str, samples: SampleSet, i: int) -> ImageFacts:
    """The default reader: decode the image as the domain delivers it and digest its pixels."""
    image = samples.image(i)
    return ImageFacts(int(image.shape[0]), int(image.shape[1]), pixel_digest(image))


def cached_facts(size: int) -> ImageReader:
    """A reader that takes digests and native sizes from the decoded-pixel cache at `size` (the
    training size: the first run needs that cache anyway, so the report costs no second decode).
    Falls back to decoding image by image when the cache cannot be built (a file that breaks while
    decoding), so the report still lists what is unreadable."""
    lock, memo = threading.Lock(), {}

    def read(split: str, samples: SampleSet, i: int) -> ImageFacts:
        with lock:                   # one cache build, not one per reader thread
            if samples.source not in memo:
                try:
                    memo[samples.source] = samples.source.facts(size)
                except DomainError:
                    memo[samples.source] = None
        facts = memo[samples.source]
        if facts is None:
            return decode_facts(split, samples, i)
        row = int(samples.rows[i])
        return ImageFacts(int(facts.heights[row]), int(facts.widths[row]), str(facts.digests[row]))

    return read


# -------------------------------------------------------------------- build ----

def domain_fingerprint(domain: SpicaDomain) -> str:
    """The domain's arguments, every split's ids, labels and ages, and for file tasks every file's
    path, size and mtime (the pixel cache's key), so an image rewritten in place changes it too."""
    h = hashlib.sha256()
    head = {"version": REPORT_VERSION, "domain": domain.name, "args": domain.describe(),
            "classes": domain.class_names}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    sources = []
    for name, samples in domain.splits.as_dict().items():
        h.update(f"|{name}:{samples.fingerprint()}:".encode())
        h.update(np.asarray(samples.ages, dtype=np.float64).tobytes())
        if samples.source.paths is not None and all(s is not samples.source for s in sources):
            sources.append(samples.source)      # every split is rows of the domain's one source
    for source in sources:               # one stat per file (no decoding)
        h.update(f"|files:{source.fingerprint(0)}".encode())
    return h.hexdigest()[:32]


def build_data_report(domain: SpicaDomain, read: ImageReader | None = None,
                      fingerprint: str | None = None) -> DataReport:
    """Read every image of every split once and report on them; unreadable images are listed, not fatal."""
    t0 = time.monotonic()
    read = read or decode_facts
    names = domain.class_names
    splits, scan = {}, _Scan()
    for split, samples in domain.splits.as_dict().items():
        labels = np.asarray(samples.labels)
        counts = np.bincount(labels, minlength=len(names)) if len(labels) else np.zeros(len(names), int)
        splits[split] = SplitCounts(images=len(samples), per_class={n: int(c) for n, c in zip(names, counts)})
        ids = samples.ids.tolist()
        for i, facts in _read_all(split, samples, read):
            if isinstance(facts, str):
                scan.unreadable(split, str(ids[i]), facts)
            else:
                scan.add(split, str(ids[i]), int(labels[i]), facts)
    for bad in getattr(domain, "bad_images", None) or []:     # entries the domain left out (skip_bad_images)
        scan.unreadable(LEFT_OUT, bad.where, f"{bad.reason} ({bad.path})" if bad.path != bad.where else bad.reason)
    return DataReport(
        fingerprint=fingerprint or domain_fingerprint(domain), domain=domain.name,
        domain_args=json.loads(json.dumps(domain.describe(), default=str)),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=round(time.monotonic() - t0, 3),
        class_names=list(names), channels=domain.in_chans, splits=splits, sizes=scan.size_stats(),
        unreadable_count=scan.unreadable_count, unreadable=scan.unreadable_list, overlaps=scan.overlap_list(),
        label_conflicts=len(scan.conflicts), label_conflict_examples=scan.conflict_examples,
        ages=domain.splits.ages)


def _read_all(split: str, samples: SampleSet, read: ImageReader) -> Iterator[tuple[int, ImageFacts | str]]:
    """(index, facts or the reason it is unreadable), in index order. Files are read on a few threads;
    an in-memory set is read inline (threads would only add overhead)."""
    def one(i: int) -> ImageFacts | str:
        try:
            return read(split, samples, i)
        except (DomainError, OSError, ValueError, SyntaxError) as exc:   # PIL raises all of these
            return str(exc) or type(exc).__name__

    if samples.source.paths is None or len(samples) < 64:
        yield from ((i, one(i)) for i in range(len(samples)))
        return
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for start in range(0, len(samples), 1024):      # bounded: never 50,000 futures at once
            chunk = range(start, min(start + 1024, len(samples)))
            yield from zip(chunk, pool.map(one, chunk))


class _Scan:
    """The running state of the one pass: sizes, digests seen per split, overlaps, label conflicts."""

    def __init__(self):
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.seen: dict[str, dict[str, str]] = {}       # digest -> {split: first id there}
        self.label: dict[str, int] = {}                  # digest -> first label
        self.overlaps: dict[tuple[str, str], Overlap] = {}
        self.conflicts: set[str] = set()
        self.conflict_examples: list[tuple[str, str]] = []
        self.unreadable_count = 0
        self.unreadable_list: list[Unreadable] = []

    def unreadable(self, split: str, sid: str, error: str) -> None:
        self.unreadable_count += 1
        if len(self.unreadable_list) < UNREADABLE_KEPT:
            self.unreadable_list.append(Unreadable(split=split, id=sid, error=error[:300]))

    def add(self, split: str, sid: str, label: int, facts: ImageFacts) -> None:
        self.heights.append(facts.height)
        self.widths.append(facts.width)
        where = self.seen.setdefault(facts.digest, {})
        for earlier, first in where.items():              # one count per (earlier split, this image)
            self._overlap(earlier, split, first, sid)
        where.setdefault(split, sid)
        first_label = self.label.setdefault(facts.digest, label)
        if first_label != label and facts.digest not in self.conflicts:
            self.conflicts.add(facts.digest)
            if len(self.conflict_examples) < EXAMPLES:
                self.conflict_examples.append((next(iter(where.values())), sid))

    def _overlap(self, a: str, b: str, first: str, sid: str) -> None:
        o = self.overlaps.setdefault((a, b), Overlap(a=a, b=b, images=0))
        o.images += 1
        if len(o.examples) < EXAMPLES:
            o.examples.append((first, sid))

    def overlap_list(self) -> list[Overlap]:
        order = {name: i for i, name in enumerate(SPLIT_NAMES)}
        return sorted(self.overlaps.values(), key=lambda o: (order.get(o.a, 99), order.get(o.b, 99)))

    def size_stats(self) -> SizeStats:
        if not self.heights:
            return SizeStats()
        h, w = self.heights, self.widths
        common, n = Counter(zip(h, w)).most_common(1)[0]
        return SizeStats(min_hw=(min(h), min(w)), max_hw=(max(h), max(w)),
                         median_hw=(int(statistics.median(h)), int(statistics.median(w))),
                         median_side=int(statistics.median(map(min, h, w))), most_common_hw=common,
                         most_common_share=round(n / len(h), 4), distinct=len(set(zip(h, w))))


# -------------------------------------------------------------- persistence ----

def save_data_report(path: Path, report: DataReport) -> None:
    atomic_write_text(path, report.model_dump_json(indent=2) + "\n")


def load_data_report(path: Path) -> DataReport | None:
    """The saved report; None when missing, torn or of another format."""
    try:
        return DataReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_data_report(domain: SpicaDomain, path: Path, read: ImageReader | None = None, save: bool = True
                       ) -> tuple[DataReport, bool]:
    """(the report for the domain's current data, whether it was built now). The saved report is
    reused while its fingerprint matches; otherwise a new one is built and (`save`) saved."""
    fingerprint = domain_fingerprint(domain)
    saved = load_data_report(path)
    if saved is not None and saved.fingerprint == fingerprint:
        return saved, False
    report = build_data_report(domain, read, fingerprint)
    if save:
        save_data_report(path, report)
    return report, True
