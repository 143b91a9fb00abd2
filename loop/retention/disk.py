"""Free space on the workspace's disk against `retention.min_free_gb`. Below it the daemon finishes
its cycle and starts no new one: one `disk_low` event when space drops below the floor, one
`disk_ok` when it is back (fields free_gb, min_free_gb, path; notifications map them by name).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable

from pydantic import BaseModel

from loop.config.sections import RetentionConfig
from loop.journal.events import EventLog
from loop.util.workspace import Workspace

GB = 1e9
DISK_LOW, DISK_OK = "disk_low", "disk_ok"


class DiskLow(BaseModel):
    """The disk_low / disk_ok event's fields."""
    free_gb: float
    min_free_gb: float
    path: str

    def text(self) -> str:
        return (f"disk low: {self.free_gb:.2f} GB free at {self.path}, under retention.min_free_gb "
                f"{self.min_free_gb:g}; no new run starts until space is back")


def last_disk_event(events: EventLog) -> dict | None:
    """The latest disk_low or disk_ok event (None: neither was ever written)."""
    low, ok = events.tail(1, kind=DISK_LOW), events.tail(1, kind=DISK_OK)
    if not (low and ok):
        return (low or ok or [None])[0]
    if low[0].get("ts") != ok[0].get("ts"):
        return max(low[0], ok[0], key=lambda e: e.get("ts", ""))
    last = None                         # both in the same second: the file's order decides
    for event in events:
        if event.get("kind") in (DISK_LOW, DISK_OK):
            last = event
    return last


class DiskGuard:
    """Checks free space; writes disk_low once per episode and disk_ok when it ends. A daemon that
    restarts while the disk is still low does not announce it again (the last event says so)."""

    def __init__(self, cfg: RetentionConfig, ws: Workspace, events: EventLog,
                 usage: Callable[[str], object] = shutil.disk_usage):
        self.cfg, self.ws, self.events, self.usage = cfg, ws, events, usage
        last = last_disk_event(events)
        self.low = bool(last and last.get("kind") == DISK_LOW)

    def reading(self) -> DiskLow | None:
        """Free space now, or None when the floor is off."""
        if self.cfg.min_free_gb is None:
            return None
        free = self.usage(str(self.ws.root)).free / GB
        return DiskLow(free_gb=round(free, 3), min_free_gb=self.cfg.min_free_gb, path=str(self.ws.root))

    def check(self, trace: str) -> DiskLow | None:
        """The reading when space is below the floor (wait), None when there is room. The event is
        written before the state flips, so a write that fails (ENOSPC) is tried again next check."""
        now = self.reading()
        if now is not None and now.free_gb < now.min_free_gb:
            if not self.low:
                self.events.append(DISK_LOW, trace, **now.model_dump())
                self.low = True
            return now
        if self.low and now is not None:
            self.events.append(DISK_OK, trace, **now.model_dump())
        self.low = False
        return None
