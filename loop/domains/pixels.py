"""Where a task's pixels come from, decoded and resized once per image size.

A `PixelSource` is one domain's whole image list: an in-memory uint8 array (the embedded digits, a
user's array task) or image files. `decoded(size)` gives every image at `size` x `size` as one
(N, size, size, C) uint8 array:
  - in-memory sources resize once and keep the result;
  - file sources decode each file once into an on-disk cache (`LLMLOOP_PIXEL_CACHE`, else
    ~/.cache/llmloop/pixels), memory-mapped, keyed by a fingerprint of the file list, sizes, mtimes,
    channels and the image size. Changed data means a new key (a rebuild); two processes building the
    same key wait on one lock and the loser reuses the winner's file, which appears by rename only
    once it is complete.
Beside each cache file a small `.facts.npz` keeps, per image, a digest of its decoded pixels at
native size and its native height and width: the data report's duplicate and size figures.

`PixelView` is what the trainer, the probes, PHASE and prediction read: rows of a decoded array,
sliced into uint8 NCHW tensors batch by batch, so no split is ever one in-memory tensor.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loop.errors import DomainError
from loop.util.fsutil import atomic_write_text, sha256_file
from loop.util.workspace import Workspace

CACHE_ENV = "LLMLOOP_PIXEL_CACHE"
CACHE_FORMAT = 1            # bump when the cache's layout or decoding changes
_DECODE_CHUNK = 256


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmloop" / "pixels"


def workspace_cache(ws_root: Path) -> Path:
    """The pixel cache a daemon and its runs share: `LLMLOOP_PIXEL_CACHE` when set, else the
    workspace's cache/pixels (writable inside the run sandbox)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Workspace(ws_root).pixel_cache


def load_image_file(path: str, channels: int) -> np.ndarray:
    """An image file as an (H, W, C) uint8 array, converted to 1 or 3 channels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:   # PIL raises all three for broken files
        raise DomainError(f"{path}: cannot read image: {exc}") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square `size` x `size`: area filter when shrinking, bilinear when growing."""
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return image
    out = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if image.shape[0] > size
                     else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def pixel_digest(image: np.ndarray) -> str:
    """A digest of decoded pixels and their shape: equal digests mean identical images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class PixelFacts:
    """Per image, at native size: pixel digest, height, width."""

    digests: np.ndarray          # str (32 hex chars)
    heights: np.ndarray
    widths: np.ndarray


@dataclass(eq=False)
class PixelSource:
    """One domain's images: `array` (N, H, W, C) uint8 in memory, or `paths` to image files."""

    channels: int
    array: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    rows_named: tuple[str, ...] | None = None     # how an error names image i (e.g. "CSV row 17")
    _decoded: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _files: dict[int, Path] = field(default_factory=dict, repr=False)   # the cache file read at each size
    _facts: PixelFacts | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.array is None) == (self.paths is None):
            raise ValueError("a PixelSource holds either an array or paths")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.paths)

    def raw(self, i: int) -> np.ndarray:
        """Image i at native size."""
        if self.array is not None:
            return self.array[i]
        return load_image_file(self.paths[i], self.channels)

    def decoded(self, size: int) -> np.ndarray:
        """Every image at `size` x `size`, (N, size, size, C) uint8 (memory-mapped for files)."""
        if size not in self._decoded:
            if self.array is not None:
                self._decoded[size] = np.stack([resize(a, size) for a in self.array]) if len(self.array) \
                    else np.zeros((0, size, size, self.channels), np.uint8)
            else:
                self._files[size] = file_cache(self, size)
                self._decoded[size] = np.load(self._files[size], mmap_mode="r")
        return self._decoded[size]

    def facts(self, size: int) -> PixelFacts:
        """Digests and native sizes of every image; for files, read beside the cache at `size`
        (built if missing, so a report at the training size costs no extra decoding)."""
        if self._facts is None:
            if self.array is not None:
                self._facts = _facts_of([pixel_digest(a) for a in self.array],
                                        [a.shape[:2] for a in self.array])
            else:
                self.decoded(size)
                self._facts = read_facts(self._files[size])
        return self._facts

    def fingerprint(self, size: int) -> str:
        """What the cache of this source at `size` is keyed by: every file's path, size and mtime."""
        h = hashlib.sha256(f"v{CACHE_FORMAT}|c{self.channels}|s{size}\n".encode())
        for i, p in enumerate(self.paths or ()):
            try:
                st = os.stat(p)
            except OSError as exc:
                raise DomainError(f"{self.name_of(i)}: {p}: {exc.strerror}") from exc
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:24]

    def name_of(self, i: int) -> str:
        return self.rows_named[i] if self.rows_named else f"image {i}"


def _facts_of(digests: list[str], shapes: list[tuple[int, int]]) -> PixelFacts:
    hw = np.array(shapes, dtype=np.int32).reshape(-1, 2)
    return PixelFacts(digests=np.array(digests, dtype="U32"), heights=hw[:, 0], widths=hw[:, 1])


# ------------------------------------------------------------------ the cache ----

def cache_path(source: PixelSource, size: int) -> Path:
    return cache_root() / f"{source.fingerprint(size)}-{size}px.npy"


def facts_path(cache_file: Path) -> Path:
    return cache_file.with_suffix(".facts.npz")


def read_facts(cache_file: Path) -> PixelFacts:
    with np.load(facts_path(cache_file)) as z:
        return PixelFacts(digests=z["digests"], heights=z["heights"], widths=z["widths"])


def file_cache(source: PixelSource, size: int) -> Path:
    """The decoded cache file of a file source at `size`, built first if missing. Where the
    cache is read-only (a sandboxed run: the daemon builds what its runs need before they start), a
    size it lacks is decoded into a private copy in this process's temp folder instead."""
    from filelock import FileLock

    path = cache_path(source, size)
    if not (path.exists() and facts_path(path).exists() and verified(path)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", mode=0o666):
                if path.exists() and not verified(path):      # changed since it was built: never read
                    for f in (path, facts_path(path), digest_path(path)):
                        f.unlink(missing_ok=True)
                    if on_rebuild is not None:
                        on_rebuild(path, "its digest no longer matches the one recorded when it was built")
                if not (path.exists() and facts_path(path).exists()):    # another process may have built it
                    build_cache(source, size, path)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            path = private_cache(source, size, path.parent)
    return path


on_rebuild = None        # the daemon's: called (path, why) when a cache file failed its digest and is rebuilt
_verified: set[tuple] = set()


def digest_path(cache_file: Path) -> Path:
    return cache_file.with_suffix(".sha256.json")


def file_digests(cache_file: Path) -> dict[str, str]:
    return {"array": sha256_file(cache_file), "facts": sha256_file(facts_path(cache_file))}


def verified(cache_file: Path) -> bool:
    """Whether the cache file and its facts hash to what was recorded when they were built (once per
    process and file version: a 600 MB array hashes in about a second)."""
    try:
        st = os.stat(cache_file)
        key = (str(cache_file), st.st_size, st.st_mtime_ns, st.st_ino)
        if key in _verified:
            return True
        ok = json.loads(digest_path(cache_file).read_text()) == file_digests(cache_file)
    except (OSError, ValueError):
        return False
    if ok:
        _verified.add(key)
    return ok


def private_cache(source: PixelSource, size: int, shared: Path) -> Path:
    """A decoded copy of `source` at `size` only this process sees (the shared cache is read-only)."""
    folder = Path(tempfile.gettempdir()) / "llmloop-pixels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_path(source, size).name
    if not (path.exists() and facts_path(path).exists()):
        print(f"pixel cache {shared} is read-only here and has no {size}px copy: decoding into {folder}",
              file=sys.stderr, flush=True)
        build_cache(source, size, path)
    return path


def warm_cache(source: PixelSource, sizes: list[int]) -> None:
    """Build the shared cache at each size now (the daemon, before a run that reads it starts)."""
    if source.array is None:
        for size in sorted(set(sizes)):
            source.decoded(size)


def build_cache(source: PixelSource, size: int, path: Path) -> None:
    """Decode every file once into temporary files beside `path`, then rename them into place (the
    array last: its presence says the pair is complete). A file that cannot be decoded fails the
    build, named by its row, with the other bad files listed too."""
    fd, tmp_name = tempfile.mkstemp(prefix=".building-", suffix=".npy", dir=path.parent)
    os.fchmod(fd, 0o644)             # readable by a sandboxed run; set on the descriptor, never by a path
    os.close(fd)
    facts_fd, facts_name = tempfile.mkstemp(prefix=".building-", suffix=".facts.npz", dir=path.parent)
    os.fchmod(facts_fd, 0o644)
    tmp, tmp_facts = Path(tmp_name), Path(facts_name)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(source), size, size, source.channels))
        facts, bad = decode_into(source, size, out)
        out.flush()
        del out
        if bad:
            raise DomainError(f"{len(bad)} image(s) cannot be decoded: " + "; ".join(sorted(bad)[:10])
                              + (" ..." if len(bad) > 10 else ""))
        with os.fdopen(facts_fd, "wb") as fh:        # the descriptor mkstemp made, not a name
            facts_fd = -1
            np.savez(fh, digests=facts.digests, heights=facts.heights, widths=facts.widths)
        digests = {"array": sha256_file(tmp), "facts": sha256_file(tmp_facts)}
        os.replace(tmp_facts, facts_path(path))
        atomic_write_text(digest_path(path), json.dumps(digests) + "\n")   # before the array: it says "complete"
        os.replace(tmp, path)
    finally:
        if facts_fd >= 0:
            os.close(facts_fd)
        tmp.unlink(missing_ok=True)
        tmp_facts.unlink(missing_ok=True)


def decode_into(source: PixelSource, size: int, out: np.ndarray) -> tuple[PixelFacts, list[str]]:
    """Decode and resize every image of `source` into `out` on threads (PIL and OpenCV release the
    GIL); returns the facts and, for each image that failed, its name and the reason."""
    n = len(source)
    digests, shapes, bad = [""] * n, [(0, 0)] * n, []

    def one(i: int) -> None:
        try:
            img = source.raw(i)
        except DomainError as exc:
            bad.append(f"{source.name_of(i)}: {exc}")
            return
        digests[i], shapes[i] = pixel_digest(img), img.shape[:2]
        out[i] = resize(img, size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, n, _DECODE_CHUNK):
            list(pool.map(one, range(start, min(n, start + _DECODE_CHUNK))))
    return _facts_of(digests, shapes), bad


# ------------------------------------------------------------------- reading ----

@dataclass(frozen=True)
class PixelView:
    """Rows of a decoded (N, S, S, C) array, read as uint8 NCHW tensors a slice at a time."""

    pixels: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def numpy(self, index) -> np.ndarray:
        """NHWC uint8 for a slice, an index array or a list of positions."""
        if hasattr(index, "numpy"):          # a torch index tensor
            index = index.numpy()
        rows = self.rows[index]
        if isinstance(index, slice) and len(rows) and rows[-1] - rows[0] == len(rows) - 1 \
                and np.all(np.diff(rows) == 1):
            return np.asarray(self.pixels[rows[0]:rows[-1] + 1])     # contiguous: one read
        return self.pixels[np.asarray(rows, dtype=np.int64)]

    def __getitem__(self, index):
        import torch

        batch = np.ascontiguousarray(self.numpy(index).transpose(0, 3, 1, 2))
        if not batch.flags.writeable:       # a read-only cache page: torch wants memory it may own
            batch = batch.copy()
        return torch.from_numpy(batch)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), self.pixels.shape[3], self.pixels.shape[1], self.pixels.shape[2])
