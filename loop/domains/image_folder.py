"""A user's task: `root/<class_name>/*.png|jpg|...`, one sub-folder per class.
A file's modification time is its age (newer files feed the delta probe set), unless those times
only mirror the class order (folders copied class by class): then recall and delta are drawn
stratified instead and the data report says so (loop/domains/ages.py)."""
from __future__ import annotations

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain, ensure_dir
from loop.domains.listing import IMAGE_SUFFIXES, ImageListing, checked, is_image
from loop.domains.pixels import PixelSource
from loop.errors import DomainError

__all__ = ["IMAGE_SUFFIXES", "ImageFolderDomain"]


class ImageFolderDomain(SpicaDomain):
    name = "image_folder"

    def __init__(self, root: str, mode: str = "RGB", skip_bad_images: bool = False, **split_args):
        if mode not in ("RGB", "L"):
            raise DomainError(f"image_folder: mode must be RGB or L, got {mode!r}")
        self.root = root
        self.mode = mode
        self.skip_bad_images = skip_bad_images
        super().__init__(**split_args)

    def describe(self) -> dict:
        extra = {"skip_bad_images": True} if self.skip_bad_images else {}
        return {"root": self.root, "mode": self.mode, **extra, **super().describe()}

    def load_all(self) -> tuple[SampleSet, list[str]]:
        root = ensure_dir(self.root, "image_folder root")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DomainError(f"image_folder: {root} needs at least two class sub-folders, found {len(classes)}")
        listing = ImageListing(labels=[])
        for name in classes:
            files = sorted(f for f in (root / name).rglob("*") if f.is_file() and is_image(f))
            if not files:
                raise DomainError(f"image_folder: class folder {root / name} holds no images")
            for f in files:
                listing.ids.append(str(f.relative_to(root)))    # ids stay stable across versions
                listing.paths.append(str(f))
                listing.labels.append(name)
                listing.ages.append(f.stat().st_mtime)
                listing.where.append(str(f))
        channels = 1 if self.mode == "L" else 3
        listing = checked(listing, channels, self.skip_bad_images, f"image_folder {root}")
        self._bad_images = listing.bad
        labels = np.array([classes.index(c) for c in listing.labels], dtype=np.int64)
        return (SampleSet(labels=labels, ids=np.array(listing.ids), ages=np.array(listing.ages), channels=channels,
                          source=PixelSource(channels, paths=tuple(listing.paths), rows_named=tuple(listing.where)),
                          ages_from="file_mtime"),
                classes)
