"""A user's task: `root/<class_name>/*.png|jpg|...`, one sub-folder per class.
A file's modification time is its age (newer files feed the delta probe set)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain, ensure_dir
from loop.errors import DomainError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderDomain(SpicaDomain):
    name = "image_folder"

    def __init__(self, root: str, mode: str = "RGB", **split_args):
        if mode not in ("RGB", "L"):
            raise DomainError(f"image_folder: mode must be RGB or L, got {mode!r}")
        self.root = root
        self.mode = mode
        super().__init__(**split_args)

    def describe(self) -> dict:
        return {"root": self.root, "mode": self.mode, **super().describe()}

    def load_all(self) -> tuple[SampleSet, list[str]]:
        root = ensure_dir(self.root, "image_folder root")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DomainError(f"image_folder: {root} needs at least two class sub-folders, found {len(classes)}")
        paths, labels, ages = [], [], []
        for label, name in enumerate(classes):
            files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DomainError(f"image_folder: class folder {root / name} holds no images")
            for f in files:
                paths.append(str(f))
                labels.append(label)
                ages.append(f.stat().st_mtime)
        ids = np.array([str(Path(p).relative_to(root)) for p in paths])
        return (SampleSet(labels=np.array(labels, dtype=np.int64), ids=ids, ages=np.array(ages),
                          channels=1 if self.mode == "L" else 3, paths=tuple(paths)), classes)
