"""The images to predict on: a flat folder (unlabelled; ids are file names without extension), a
class-folder tree (labelled by folder name), or a CSV naming images by id or path, with an
optional label column. Bad entries are refused naming their row, or skipped and reported."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loop.domains.listing import ImageListing, checked, list_folder, read_csv_listing
from loop.errors import ConfigError, DomainError


@dataclass(frozen=True)
class ImageSetSpec:
    """Where the test images are and, for a CSV, which columns say what (the CLI's flags)."""

    images: Path
    csv_images: Path | None = None        # the folder a CSV's ids or paths are in (default: the CSV's)
    id_column: str = "id"
    path_column: str | None = None
    label_column: str = "label"
    skip_bad: bool = False


def read_test_set(spec: ImageSetSpec, channels: int) -> ImageListing:
    """The listing, checked: every file exists and opens as an image, or (skip_bad) the bad ones
    are left out and kept in `.bad` for the summary."""
    where = Path(spec.images).expanduser()
    if where.is_dir():
        if spec.csv_images or spec.path_column:
            raise ConfigError(f"--images {where} is a folder: --csv-images and --path-column are for a CSV --images")
        listing = list_folder(where)
    elif where.is_file():
        listing = read_csv_listing(where, images=spec.csv_images, id_column=spec.id_column,
                                   path_column=spec.path_column, label_column=spec.label_column or None,
                                   labels_required=False)
    else:
        raise DomainError(f"--images {where}: no such folder or CSV file")
    listing = checked(listing, channels, spec.skip_bad, f"--images {where}")
    if not len(listing):
        raise DomainError(f"--images {where}: no readable image left to predict ({len(listing.bad)} skipped)")
    return listing


@dataclass(frozen=True)
class TruthLabels:
    """The test set's own labels as model class indices, when every one is a class of the model."""

    indices: np.ndarray | None
    note: str = ""                      # why there is no accuracy, when `indices` is None


def truth_labels(listing: ImageListing, class_names: list[str]) -> TruthLabels:
    """Labels from a class-folder tree or a CSV label column, matched to the model's class names.
    A set whose labels are not all the model's classes (sub-folders named for something else, a
    label the model never saw) gets no accuracy, with the first foreign label named."""
    if listing.labels is None:
        return TruthLabels(None, "")
    index = {name: i for i, name in enumerate(class_names)}
    for label, where in zip(listing.labels, listing.where):
        if label not in index:
            return TruthLabels(None, f"no accuracy: {where} is labelled {label!r}, not one of the model's "
                                     f"{len(class_names)} classes")
    return TruthLabels(np.array([index[label] for label in listing.labels], dtype=np.int64))
