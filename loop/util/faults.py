"""Named fault points for crash and disk-full tests. Unset in normal use: one dict lookup each.

LLMLOOP_FAULT=NAME[@N]        the process kills itself with SIGKILL (a real kill -9, no cleanup) the
                              N-th time (default: the first) it reaches the point NAME.
LLMLOOP_DISK_FAULT=SITE[,..]  the named write sites raise OSError(ENOSPC) as a full disk would
                              (sites: `atomic:<file name>`, `events:append` and `<file name>:append`
                              for the other appends; fnmatch patterns work).
LLMLOOP_DISK_FAULT=@FILE      the same, with the sites read from FILE at each write (no FILE: no
                              fault), so a test can fill and free the "disk" of a running daemon.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    wanted = os.environ.get("LLMLOOP_FAULT")
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def disk_fault(site: str, path: str | os.PathLike | None = None) -> None:
    """Raise ENOSPC at `site` when LLMLOOP_DISK_FAULT names it (for sites a real full disk cannot
    reach one at a time in a test)."""
    wanted = os.environ.get("LLMLOOP_DISK_FAULT")
    if wanted and wanted.startswith("@"):
        try:
            with open(wanted[1:], encoding="utf-8") as fh:
                wanted = fh.read()
        except OSError:
            return
    if wanted and any(fnmatch.fnmatchcase(site, pattern.strip()) for pattern in wanted.split(",")):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {site})",
                      None if path is None else str(path))
