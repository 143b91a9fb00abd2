"""SpicaDomain: the one shape every task has. The trainer, the evolution window and PHASE only
accept instances of it, so every task offers the same splits, probe sets, class names and metric.

Splits are fixed by the domain's own `split_seed`, never by a run's seed, so every run and every
candidate is judged on the same images:
  train   what runs learn from
  val     what a run reports while training
  recall  held-out images from the *older* part of the data ("no forgetting")
  delta   held-out images from the *newest* part of the data ("learned the new")
  drift   held-out images on which a candidate's predictions are compared with GEN_HEAD's
All five are disjoint. Ages that only mirror the class order (files copied class by class) cannot
pick recall and delta: loop/domains/ages.py checks them, and file times then give way to a
stratified draw (`DomainSplits.ages` says which happened, and why).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from loop.domains.ages import FALLBACK_SOURCES, AgeCheck, AgeSource, cramers_v, probe_gaps, stratified_draw
from loop.domains.listing import BadImage
from loop.domains.pixels import PixelFacts, PixelSource, PixelView
from loop.domains.split import held_out
from loop.errors import DomainError

SPLIT_NAMES = ("train", "val", "recall", "delta", "drift")


@dataclass(frozen=True)
class SampleSet:
    """Images with labels, stable ids and an age (larger = newer), and where the ages come from.

    A domain hands its images in as `array` (N, H, W, C) uint8 or as image file `paths`; both become
    one `PixelSource`, and every subset (a split, a training fraction) is rows of that same source,
    so the decoded cache is built once per domain and image size. Read images with `image(i)`
    (native size) or `view(size)` (resized, batch by batch).
    """

    labels: np.ndarray
    ids: np.ndarray
    ages: np.ndarray
    channels: int
    array: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    source: PixelSource | None = None
    rows: np.ndarray | None = None
    ages_from: AgeSource = "order"

    def __post_init__(self) -> None:
        if self.source is None:
            object.__setattr__(self, "source", PixelSource(self.channels, array=self.array, paths=self.paths))
        if self.rows is None:
            object.__setattr__(self, "rows", np.arange(len(self.labels), dtype=np.int64))
        if not (len(self.labels) == len(self.ids) == len(self.ages) == len(self.rows)):
            raise DomainError(f"sample set: {len(self.labels)} labels, {len(self.ids)} ids, {len(self.ages)} ages "
                              f"and {len(self.rows)} images do not match")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Image i as an (H, W, C) uint8 array at its native size."""
        return self.source.raw(int(self.rows[i]))

    def view(self, size: int) -> PixelView:
        """Every image at `size` x `size`, read lazily from the domain's decoded cache."""
        return PixelView(self.source.decoded(size), self.rows)

    def facts(self, size: int) -> PixelFacts:
        """Per image: digest of its decoded pixels, native height and width."""
        f = self.source.facts(size)
        return PixelFacts(digests=f.digests[self.rows], heights=f.heights[self.rows], widths=f.widths[self.rows])

    def path(self, i: int) -> str | None:
        return self.source.paths[int(self.rows[i])] if self.source.paths is not None else None

    def subset(self, idx: np.ndarray) -> "SampleSet":
        idx = np.asarray(idx, dtype=np.int64)
        return SampleSet(labels=self.labels[idx], ids=self.ids[idx], ages=self.ages[idx], channels=self.channels,
                         source=self.source, rows=self.rows[idx], ages_from=self.ages_from)

    def concat(self, other: "SampleSet") -> "SampleSet":
        if other.source is not self.source:
            raise ValueError("cannot join sample sets of different domains")
        return SampleSet(
            labels=np.concatenate([self.labels, other.labels]), ids=np.concatenate([self.ids, other.ids]),
            ages=np.concatenate([self.ages, other.ages]), channels=self.channels, source=self.source,
            rows=np.concatenate([self.rows, other.rows]), ages_from=self.ages_from,
        )

    def select_ids(self, ids: list[str]) -> "SampleSet":
        """The samples with these ids, in the order given; unknown ids raise KeyError."""
        where = {sid: i for i, sid in enumerate(self.ids.tolist())}
        missing = [sid for sid in ids if sid not in where]
        if missing:
            raise KeyError(f"{len(missing)} unknown sample id(s), e.g. {missing[:3]}")
        return self.subset(np.array([where[sid] for sid in ids], dtype=np.int64))

    def fingerprint(self) -> str:
        """sha256 over ids and labels: equal fingerprints mean the same probe set."""
        h = hashlib.sha256()
        for sid, lab in zip(self.ids.tolist(), self.labels.tolist()):
            h.update(f"{sid}:{lab}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class DomainSplits:
    train: SampleSet
    val: SampleSet
    recall: SampleSet
    delta: SampleSet
    drift: SampleSet
    ages: AgeCheck = field(default_factory=AgeCheck)     # whether ages picked recall and delta, and why not

    def as_dict(self) -> dict[str, SampleSet]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}


@dataclass
class SplitFractions:
    """Shares of the whole data set held out for each fixed set."""

    val: float = 0.15
    recall: float = 0.08
    delta: float = 0.08
    drift: float = 0.06
    newest_share: float = 0.30   # the "new data" pool the delta set is drawn from
    extra: dict = field(default_factory=dict)


class SpicaDomain(ABC):
    """Base class of every task. Derivatives implement `load_all` and set `name`."""

    name: ClassVar[str] = "spica"
    metric: ClassVar[str] = "accuracy"

    def __init__(self, split_seed: int = 1234, val: float = 0.15, recall: float = 0.08,
                 delta: float = 0.08, drift: float = 0.06, newest_share: float = 0.30):
        self.split_seed = split_seed
        self.fractions = SplitFractions(val=val, recall=recall, delta=delta, drift=drift,
                                        newest_share=newest_share)
        if val + recall + delta + drift >= 0.9:
            raise DomainError(f"{self.name}: held-out fractions sum to {val + recall + delta + drift:.2f}; "
                              "leave at least 10% of the data for training")

    # ---- what a derivative provides ----
    @abstractmethod
    def load_all(self) -> tuple[SampleSet, list[str]]:
        """Every sample of the task and the class names (index = label)."""

    def describe(self) -> dict:
        """The arguments that rebuild this domain (written into run configs)."""
        return {"split_seed": self.split_seed, "val": self.fractions.val, "recall": self.fractions.recall,
                "delta": self.fractions.delta, "drift": self.fractions.drift,
                "newest_share": self.fractions.newest_share}

    # ---- what every domain offers ----
    @cached_property
    def _loaded(self) -> tuple[SampleSet, list[str]]:
        samples, class_names = self.load_all()
        if len(samples) == 0:
            raise DomainError(f"{self.name}: the domain has no samples")
        return samples, class_names

    @property
    def class_names(self) -> list[str]:
        return self._loaded[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self._loaded[0].channels

    @property
    def bad_images(self) -> list[BadImage]:
        """Entries left out of the task (`skip_bad_images`), each naming its row or file and why."""
        self._loaded     # noqa: B018 (loading is what finds them)
        return list(getattr(self, "_bad_images", []))

    @cached_property
    def splits(self) -> DomainSplits:
        return make_splits(self._loaded[0], self.fractions, self.split_seed, self.name)

    @cached_property
    def norm_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units, from up to 512 training images."""
        train = self.splits.train
        rng = np.random.default_rng(self.split_seed)
        pick = rng.choice(len(train), size=min(512, len(train)), replace=False)
        pixels = np.concatenate([train.image(int(i)).reshape(-1, train.channels) for i in pick])
        pixels = pixels.astype(np.float64) / 255.0
        mean = pixels.mean(axis=0)
        std = np.maximum(pixels.std(axis=0), 1e-3)
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]

    def warm_cache(self, sizes: list[int]) -> None:
        """Decode the task's image files into the shared pixel cache at these sizes now (the daemon,
        before the runs that read them start: a run sees the cache read-only)."""
        from loop.domains.pixels import warm_cache

        warm_cache(self._loaded[0].source, sizes)

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        """The domain's metric (top-1 accuracy) of predicted class ids against labels."""
        return float((np.asarray(predictions) == np.asarray(labels)).mean()) if len(labels) else 0.0


def _take(pool: np.ndarray, labels: np.ndarray, count: int, seed: int, what: str, domain: str
          ) -> tuple[np.ndarray, np.ndarray]:
    """Take `count` indices from `pool`, stratified by label when every class can afford it."""
    if count <= 0:
        return pool[:0], pool
    if count >= len(pool):
        raise DomainError(f"{domain}: too few samples to hold out a {what} set of {count}")
    pool_labels = labels[pool]
    _, counts = np.unique(pool_labels, return_counts=True)
    stratify = pool_labels if counts.min() >= 2 and count >= len(counts) else None
    rest, taken = held_out(pool, test_size=count, seed=seed, stratify=stratify)
    return np.sort(taken), np.sort(rest)


def make_splits(samples: SampleSet, fr: SplitFractions, seed: int, domain: str) -> DomainSplits:
    """The five splits, the same for the same samples and seed. recall and delta come from the older
    and the newest pool, unless the ages are file times confounded with class (then stratified)."""
    n = len(samples)
    order = np.argsort(samples.ages, kind="stable")            # oldest first
    n_new = max(1, int(round(n * fr.newest_share)))
    older, newest = np.sort(order[:-n_new]), np.sort(order[-n_new:])
    labels = samples.labels
    n_delta, n_recall = int(round(n * fr.delta)), int(round(n * fr.recall))
    delta, newest_rest = _take(newest, labels, n_delta, seed, "delta", domain)
    recall, older_rest = _take(older, labels, n_recall, seed + 1, "recall", domain)
    rest = np.sort(np.concatenate([older_rest, newest_rest]))
    ages = AgeCheck(ages_from=samples.ages_from, cramers_v=cramers_v(labels, samples.ages),
                    missing=probe_gaps(labels, {"recall": recall, "delta": delta}))
    if ages.confounded and samples.ages_from in FALLBACK_SOURCES:
        delta, rest = stratified_draw(np.arange(n), labels, n_delta, seed, "delta", domain)
        recall, rest = stratified_draw(rest, labels, n_recall, seed + 1, "recall", domain)
        ages = ages.model_copy(update={"fell_back": True,
                                       "lacking": probe_gaps(labels, {"recall": recall, "delta": delta})})
    val, rest = _take(rest, labels, int(round(n * fr.val)), seed + 2, "val", domain)
    drift, train = _take(rest, labels, int(round(n * fr.drift)), seed + 3, "drift", domain)
    missing = set(np.unique(labels)) - set(np.unique(labels[train]))
    if missing:
        raise DomainError(f"{domain}: classes {sorted(missing)} have no training samples left")
    return DomainSplits(train=samples.subset(train), val=samples.subset(val),
                        recall=samples.subset(recall), delta=samples.subset(delta),
                        drift=samples.subset(drift), ages=ages)


def ensure_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DomainError(f"{what}: {p} is not a folder")
    return p
