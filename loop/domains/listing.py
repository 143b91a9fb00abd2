"""Which image files make a task or a test set: a class-folder tree, a flat folder, or a CSV.

Every bad entry is kept as a `BadImage` naming where it came from (`CSV row 17`: the row as a
spreadsheet numbers it, the header being row 1; or the file's path) and why: a missing file, an
empty label, a file that is not a readable image. Domains refuse a task with bad entries, listing
them, unless told to leave them out (`skip_bad_images`), and then the data report lists them.
"""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loop.domains.pixels import PixelSource, cache_root
from loop.errors import DomainError
from loop.util.fsutil import atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class BadImage:
    where: str          # "CSV row 17" or the file's path
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.path})" if self.path and self.path != self.where else "")


@dataclass
class ImageListing:
    """Images in a fixed order; `labels` are class names as text (None for an unlabelled set)."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    ages: list[float] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    bad: list[BadImage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def keep(self, good: list[int]) -> "ImageListing":
        pick = (lambda xs: [xs[i] for i in good])
        return ImageListing(ids=pick(self.ids), paths=pick(self.paths),
                            labels=None if self.labels is None else pick(self.labels), ages=pick(self.ages),
                            where=pick(self.where), bad=list(self.bad))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_folder(root: str | Path) -> ImageListing:
    """A flat folder of images (unlabelled) or a tree of class sub-folders (labelled by folder name).
    Ids are file names without their extension; two files with one id are an error."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DomainError(f"{root}: not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = sorted(p for p in root.iterdir() if p.is_file() and is_image(p))
    if flat or not classes:
        files, labels = flat, None
    else:
        files, labels = [], []
        for name in classes:
            found = sorted(f for f in (root / name).rglob("*") if f.is_file() and is_image(f))
            files += found
            labels += [name] * len(found)
    if not files:
        raise DomainError(f"{root}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    ids = [f.stem for f in files]
    _refuse_duplicate_ids(ids, [str(f) for f in files], str(root))
    return ImageListing(ids=ids, paths=[str(f) for f in files], labels=labels,
                        ages=[f.stat().st_mtime for f in files], where=[str(f) for f in files])


def read_csv_listing(csv_path: str | Path, images: str | Path | None = None, id_column: str = "id",
                     path_column: str | None = None, label_column: str | None = "label",
                     age_column: str | None = None, labels_required: bool = True) -> ImageListing:
    """Rows of a CSV naming images: by `path_column` (relative to `images`, else to the CSV's
    folder) or by `id_column` (`{id}.png`, `.jpg`, ... in `images`). A label column that is absent
    is accepted only when labels are not required (a test set)."""
    csv_path = Path(csv_path).expanduser()
    folder = Path(images).expanduser() if images else csv_path.parent
    if not csv_path.is_file():
        raise DomainError(f"{csv_path}: no such CSV file")
    if not folder.is_dir():
        raise DomainError(f"{folder}: the images folder of {csv_path.name} is not a folder")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        has_labels = bool(label_column) and label_column in columns
        need = [c for c in (id_column if not path_column else None, path_column, age_column,
                            label_column if labels_required else None) if c]
        missing = [c for c in need if c not in columns]
        if missing:
            raise DomainError(f"{csv_path}: no column {', '.join(map(repr, missing))}; its columns are "
                              f"{', '.join(columns) or '(none)'} (set the column names in data.domain_args)")
        by_name = {} if path_column else _files_by_stem(folder)
        out = ImageListing(labels=[] if has_labels else None)
        for n, row in enumerate(reader, start=2):          # row 1 is the header
            _add_row(out, row, f"CSV row {n}", folder, by_name, id_column, path_column,
                     label_column if has_labels else None, age_column)
    _refuse_duplicate_ids(out.ids, out.where, str(csv_path))
    return out


def _add_row(out: ImageListing, row: dict, where: str, folder: Path, by_name: dict[str, Path],
             id_column: str, path_column: str | None, label_column: str | None, age_column: str | None) -> None:
    if path_column:
        rel = (row.get(path_column) or "").strip()
        path = folder / rel if rel else None
        sid = (row.get(id_column) or "").strip() if id_column in row else Path(rel).stem
    else:
        sid = (row.get(id_column) or "").strip()
        path = by_name.get(sid) or by_name.get(Path(sid).stem if Path(sid).suffix.lower() in IMAGE_SUFFIXES
                                               else "\0")
    label = (row.get(label_column) or "").strip() if label_column else None
    if not sid:
        out.bad.append(BadImage(where, "", f"empty {id_column if not path_column else path_column}"))
    elif path is None or not path.is_file():
        out.bad.append(BadImage(where, str(path or folder / sid), "image file missing"))
    elif label_column and not label:
        out.bad.append(BadImage(where, str(path), f"empty {label_column}"))
    else:
        age = _age(row, age_column, where, path)
        out.ids.append(sid)
        out.paths.append(str(path))
        out.ages.append(age)
        out.where.append(where)
        if out.labels is not None:
            out.labels.append(label)


def _age(row: dict, age_column: str | None, where: str, path: Path) -> float:
    if not age_column:
        return path.stat().st_mtime
    try:
        return float(row[age_column])
    except (TypeError, ValueError):
        raise DomainError(f"{where}: {age_column} {row.get(age_column)!r} is not a number") from None


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder by name and by stem, listed once (50,000 rows, one listdir)."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        p = Path(entry.path)
        if entry.is_file() and is_image(p):
            found.setdefault(p.stem, p)
            found.setdefault(p.name, p)
    return found


def _refuse_duplicate_ids(ids: list[str], where: list[str], what: str) -> None:
    seen: dict[str, str] = {}
    for sid, w in zip(ids, where):
        if sid in seen:
            raise DomainError(f"{what}: id {sid!r} appears twice ({seen[sid]} and {w}); ids must be unique")
        seen[sid] = w


# ------------------------------------------------------------ readable images ----

def unreadable(listing: ImageListing, channels: int) -> list[BadImage]:
    """Entries whose file is not an image PIL can open (the header only: decoding is the cache's
    job). Remembered per data version in the pixel cache, so a run's start does not re-open 50,000
    files."""
    source = PixelSource(channels, paths=tuple(listing.paths))
    memo = cache_root() / f"{source.fingerprint(0)}.scan.json"
    try:
        return [BadImage(**b) for b in json.loads(memo.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    from PIL import Image

    def check(i: int) -> BadImage | None:
        try:
            with Image.open(listing.paths[i]) as img:
                img.size    # noqa: B018 (the header parse is the check)
        except Exception as exc:     # PIL raises many kinds for a broken file  # noqa: BLE001
            return BadImage(listing.where[i], listing.paths[i], f"not a readable image ({type(exc).__name__})")
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        bad = [b for b in pool.map(check, range(len(listing))) if b is not None]
    try:        # a fresh temp file (mkstemp), renamed over the name: never written through a planted link
        atomic_write_text(memo, json.dumps([b.__dict__ for b in bad]))
    except OSError:
        pass        # a read-only cache only costs the next start this scan again
    return bad


def checked(listing: ImageListing, channels: int, skip_bad: bool, what: str) -> ImageListing:
    """The listing with unreadable files found; refused when anything is bad, unless `skip_bad`
    (then the bad entries are left out and kept in `.bad` for the data report)."""
    bad_files = unreadable(listing, channels)
    listing.bad += bad_files
    if listing.bad and not skip_bad:
        shown = "; ".join(b.line() for b in listing.bad[:10])
        raise DomainError(f"{what}: {len(listing.bad)} bad image entr{'y' if len(listing.bad) == 1 else 'ies'}: "
                          f"{shown}{' ...' if len(listing.bad) > 10 else ''}. Fix them, or set "
                          "data.domain_args.skip_bad_images: true to leave them out (the data report lists them)")
    dropped = {b.path for b in bad_files}
    return listing.keep([i for i, p in enumerate(listing.paths) if p not in dropped]) if dropped else listing
