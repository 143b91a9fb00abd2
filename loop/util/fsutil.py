"""Crash-safe file writes: temp file in the same folder, fsync, rename over the target.
A kill at any instant leaves either the old or the new file, never a torn one."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from loop.util.faults import disk_fault, fault_point

TEMP_SUFFIX = ".tmp"      # temp files are ".<name>.<random>.tmp" beside their target (recovery sweeps them)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        disk_fault(f"atomic:{path.name}", path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path)
    try:
        os.fchmod(fd, mode)  # set before any byte is written: a 0600 secret is never readable by others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("atomic:before_rename")
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, path) if isinstance(exc, OSError) else exc
    fault_point("atomic:after_rename")
    _fsync_dir(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the target file when the OS did not (ENOSPC/EFBIG on write() name none),
    so a `degraded` event can say which write site failed."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_line(path: str | Path, text: str | bytes, site: str | None = None) -> None:
    """Append one whole line (or block of lines) with ONE write on an O_APPEND descriptor, and fsync it.
    A full disk or a file-size limit can make write() short: the partial text is cut off again before
    the error is raised, so a failed append never leaves a fragment for the next append to glue onto.
    `site` names the append for the fault hooks (`<site>:append` in LLMLOOP_DISK_FAULT, `<site>:torn`
    and `<site>:after_append` in LLMLOOP_FAULT); default: the file name."""
    path = Path(path)
    site = site or path.name
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        disk_fault(f"{site}:append", path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _naming(exc, path)
    try:
        # Held across size-check, write and the cut on failure: the cut never takes another
        # process's line with it (e.g. an operator command appending while the daemon does). Never
        # waited on for long: a process that holds it (anything that can open the file can) must not
        # stop the daemon; past the wait the line is appended unlocked (one O_APPEND write still
        # lands whole) and a failed write is not cut back.
        locked = _lock_within(fd, APPEND_LOCK_WAIT_S)
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data, f"{site}:torn")
            os.fsync(fd)
        except OSError as exc:
            if locked:
                _truncate_quietly(fd, start)
            raise _naming(exc, path)
    finally:
        os.close(fd)
    fault_point(f"{site}:after_append")


APPEND_LOCK_WAIT_S = 5.0


def _lock_within(fd: int, seconds: float) -> bool:
    """flock(LOCK_EX) if it comes within `seconds`; False (unlocked) otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _write_all(fd: int, data: bytes, torn_point: str) -> None:
    view = memoryview(data)
    if os.environ.get("LLMLOOP_FAULT", "").startswith(torn_point):    # a kill -9 inside the line
        half = max(1, len(data) // 2)
        _write_all_plain(fd, view[:half])
        fault_point(torn_point)
        view = view[half:]
    _write_all_plain(fd, view)


def _write_all_plain(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass                          # readers skip a torn last line; events' repair_tail cuts it at start


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def folder_size_bytes(folder: str | Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def open_below(path: str | Path, within: str | Path | None) -> int:
    """A read-only descriptor of `path`, following no symlink in it below `within` (a folder the
    caller trusts; a run's folder is the run's, so its `out/` may be a link to anywhere): each
    component is opened from the last with O_NOFOLLOW. Without `within`, only the last component."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    if within is None:
        return os.open(path, flags)
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(within))   # ValueError: not below it
    fd = os.open(within, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(rel.parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def read_regular_bytes(path: str | Path, tail: int | None = None, within: str | Path | None = None) -> bytes:
    """A file a sandboxed run wrote, read by the daemon (maybe as root): refuse symlinks (every one
    below `within`, a folder the caller trusts) and anything but a regular file, so a run cannot make
    the daemon read /etc/shadow for it."""
    fd = open_below(path, within)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if tail is not None and info.st_size > tail:
            os.lseek(fd, info.st_size - tail, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def read_regular_text(path: str | Path, tail: int | None = None, within: str | Path | None = None) -> str:
    return read_regular_bytes(path, tail, within).decode("utf-8", errors="replace")


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (weights, archive entries, cache arrays)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
