"""Removing weights and checkpoints safely: every folder on the way is opened from the workspace
root with O_NOFOLLOW (a link anywhere below the workspace is refused, never followed), only regular
files are unlinked, and the pruned marker (loop/archive/pruned.py) is written, atomically, before
the first file goes, so a kill at any instant leaves a folder `verify` reads as intact or pruned.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from loop.archive.pruned import MARKER, PrunedFile, PrunedRecord, read_marker
from loop.errors import LoopError
from loop.util.fsutil import atomic_write_text

# a frozen archive entry's folder mode (loop/archive/freeze.py make_read_only)
_ENTRY_MODE = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


class UnsafePath(LoopError):
    """A path the sweep refuses: outside the workspace, or through a link."""


def open_folder(root: Path, folder: Path) -> int:
    """A descriptor of `folder`, opened component by component from `root` without following a link."""
    try:
        rel = Path(os.path.abspath(folder)).relative_to(os.path.abspath(root))
    except ValueError:
        raise UnsafePath(f"{folder} is outside the workspace {root}") from None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:       # ELOOP, ENOTDIR: a link or a file where a folder should be
                raise UnsafePath(f"{folder}: {part} is a link or not a folder ({exc.strerror}); not followed") \
                    from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_size(dir_fd: int, name: str) -> int | None:
    """The size of a regular file `name` in the folder (None: absent, a link, or not a file)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def present_files(root: Path, folder: Path, names: list[str]) -> dict[str, int]:
    """{relative name: bytes} of the regular files among `names` (relative to `folder`) that are there;
    UnsafePath when a folder on the way is outside the workspace or a link."""
    found = {}
    for name in names:
        rel = Path(name)
        try:
            fd = open_folder(root, folder / rel.parent)
        except FileNotFoundError:
            continue
        try:
            size = regular_size(fd, rel.name)
        finally:
            os.close(fd)
        if size is not None:
            found[name] = size
    return found


def _unlink(root: Path, folder: Path, name: str) -> int:
    rel = Path(name)
    fd = open_folder(root, folder / rel.parent)
    try:
        size = regular_size(fd, rel.name)
        if size is None:
            return 0
        os.unlink(rel.name, dir_fd=fd)
        return size
    finally:
        os.close(fd)


def _merged(folder: Path, files: list[PrunedFile], reason: str) -> PrunedRecord:
    before = read_marker(folder)
    kept = [f for f in before.files if f.name not in {x.name for x in files}] if before else []
    return PrunedRecord(pruned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        reason=reason if before is None else f"{before.reason}; {reason}", files=kept + files)


def prune_run(root: Path, folder: Path, files: dict[str, int], reason: str) -> int:
    """Remove `files` ({name below the run folder: bytes}) from a run folder; returns the bytes freed."""
    os.close(open_folder(root, folder))                  # the folder itself: inside, no link
    atomic_write_text(folder / MARKER, _merged(folder, [PrunedFile(name=n, bytes=b) for n, b in files.items()],
                                               reason).model_dump_json(indent=2) + "\n")
    return sum(_unlink(root, folder, name) for name in files)


def prune_entry(root: Path, folder: Path, files: dict[str, int], recorded: dict[str, str], reason: str) -> int:
    """Remove `files` from a read-only archive entry, listing each with the sha256 its hashes.csv
    records (`recorded`), then make the folder read-only again; returns the bytes freed."""
    fd = open_folder(root, folder)
    try:
        os.fchmod(fd, _ENTRY_MODE | stat.S_IWUSR)
        try:
            listed = [PrunedFile(name=n, sha256=recorded.get(n, ""), bytes=b) for n, b in files.items()]
            atomic_write_text(folder / MARKER, _merged(folder, listed, reason).model_dump_json(indent=2) + "\n",
                              mode=0o444)
            freed = sum(_unlink(root, folder, name) for name in files)
        finally:
            os.fchmod(fd, _ENTRY_MODE)
    finally:
        os.close(fd)
    return freed


def finish_interrupted(root: Path, folder: Path) -> list[str]:
    """An entry a kill left mid-prune (writable, a marker's temp file, a listed file still there):
    finished the way the prune meant it. Returns what was done ([] for an intact entry)."""
    done = []
    fd = open_folder(root, folder)
    try:
        writable = bool(os.fstat(fd).st_mode & stat.S_IWUSR)
        temps = [n for n in os.listdir(fd) if n.startswith(f".{MARKER}.") and n.endswith(".tmp")]
        marker = read_marker(folder)
        leftover = [f.name for f in marker.files if regular_size(fd, f.name) is not None] if marker else []
        if not (temps or (marker and (writable or leftover))):     # not one of ours: verify's to report
            return []
        os.fchmod(fd, _ENTRY_MODE | stat.S_IWUSR)
        try:
            for name in temps:
                os.unlink(name, dir_fd=fd)
                done.append(f"removed {name}")
            for name in leftover:
                _unlink(root, folder, name)
                done.append(f"removed {name} (listed in {MARKER})")
        finally:
            os.fchmod(fd, _ENTRY_MODE)
        done.append("read-only again")
    finally:
        os.close(fd)
    return done
