"""A user's task described by a CSV: one row per image, an id or path column and a label column
(names configurable), the images in a folder (`{id}.png`/`.jpg`/... or the relative paths the CSV
gives). An optional age column (a number: larger = newer) feeds the recall/delta probes and is kept
as stated; without it a file's modification time is its age, and times that only mirror the class
order give way to a stratified draw of recall and delta (loop/domains/ages.py).

Bad rows (a missing or unreadable image, an empty label) are refused with their row numbers, or
left out and listed in the data report with `skip_bad_images: true`.
"""
from __future__ import annotations

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain
from loop.domains.listing import checked, read_csv_listing
from loop.domains.pixels import PixelSource
from loop.errors import DomainError


class CsvLabelsDomain(SpicaDomain):
    name = "csv_labels"

    def __init__(self, csv: str, images: str | None = None, id_column: str = "id", path_column: str | None = None,
                 label_column: str = "label", age_column: str | None = None, mode: str = "RGB",
                 skip_bad_images: bool = False, **split_args):
        if mode not in ("RGB", "L"):
            raise DomainError(f"csv_labels: mode must be RGB or L, got {mode!r}")
        self.csv, self.images, self.mode = csv, images, mode
        self.id_column, self.path_column, self.label_column, self.age_column = \
            id_column, path_column, label_column, age_column
        self.skip_bad_images = skip_bad_images
        super().__init__(**split_args)

    def describe(self) -> dict:
        args = {"csv": self.csv, "images": self.images, "id_column": self.id_column,
                "path_column": self.path_column, "label_column": self.label_column,
                "age_column": self.age_column, "mode": self.mode, "skip_bad_images": self.skip_bad_images}
        return {**{k: v for k, v in args.items() if v is not None}, **super().describe()}

    def load_all(self) -> tuple[SampleSet, list[str]]:
        listing = read_csv_listing(self.csv, self.images, self.id_column, self.path_column, self.label_column,
                                   self.age_column, labels_required=True)
        channels = 1 if self.mode == "L" else 3
        listing = checked(listing, channels, self.skip_bad_images, f"csv_labels {self.csv}")
        self._bad_images = listing.bad
        classes = class_order(listing.labels)
        if len(classes) < 2:
            raise DomainError(f"csv_labels {self.csv}: column {self.label_column!r} names {len(classes)} class(es); "
                              "a task needs at least two")
        index = {c: i for i, c in enumerate(classes)}
        return (SampleSet(labels=np.array([index[c] for c in listing.labels], dtype=np.int64),
                          ids=np.array(listing.ids), ages=np.array(listing.ages, dtype=np.float64),
                          channels=channels,
                          source=PixelSource(channels, paths=tuple(listing.paths), rows_named=tuple(listing.where)),
                          ages_from="column" if self.age_column else "file_mtime"),
                classes)


def class_order(labels: list[str]) -> list[str]:
    """Class names sorted numerically when every label is an integer (2 before 10), else as text."""
    names = set(labels)
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)
