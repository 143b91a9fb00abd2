"""What the daemon does about its disk between cycles (loop/daemon/process.py owns one `Upkeep`):
after each cycle the retention sweep, one `retention_sweep` event for what it pruned; before each
cycle the free-space floor: below it, a sweep, then wait (the heartbeat kept fresh) until space is back.
Neither ever stops the daemon: an error here is said and logged, and the next cycle tries again.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

from loop.config.sections import RetentionConfig
from loop.cycle.state import LoopState, write_heartbeat
from loop.errors import LoopError
from loop.journal.events import EventLog
from loop.retention.disk import DiskGuard
from loop.retention.sweep import sweep
from loop.util.workspace import Workspace


class Upkeep:
    def __init__(self, cfg: RetentionConfig, ws: Workspace, events: EventLog, say: Callable[[str], None] = print,
                 guard: DiskGuard | None = None):
        self.cfg, self.ws, self.events, self.say = cfg, ws, events, say
        self.guard = guard or DiskGuard(cfg, ws, events)
        self.over_cap = False            # said once per episode, not after every cycle
        self.swept_while_low = False     # one sweep per low-disk episode before waiting

    def after_cycle(self, state: LoopState) -> None:
        """The sweep; its event when it pruned something or the workspace went over its cap."""
        trace = f"retention-{state.cycle:05d}"
        try:
            result = sweep(self.ws, self.cfg, state.active_runs)
        except (LoopError, OSError, ValueError) as exc:
            self._say_error("retention sweep", exc, trace)
            return
        newly_over = result.over_cap and not self.over_cap
        self.over_cap = result.over_cap
        if not (result.pruned or result.repaired or result.refused or newly_over):
            return
        try:
            self.events.append("retention_sweep", trace, **result.model_dump(mode="json"))
        except OSError as exc:
            self._say_error("retention_sweep event", exc, trace)
        if result.pruned:
            self.say(f"{time.strftime('%H:%M:%S')} retention: pruned {len(result.pruned)} folder(s), "
                     f"{result.bytes_freed / 1e6:.1f} MB freed; workspace {result.workspace_gb_after:.3f} GB")
        if newly_over:
            self.say(f"retention: the workspace ({result.workspace_gb_after:.3f} GB) is still over max_workspace_gb "
                     f"{self.cfg.max_workspace_gb:g}: what is left is GEN_HEAD, its lineage, promoted generations, "
                     "the proposal, runs in flight and continuations")

    def disk_wait(self, state: LoopState) -> float | None:
        """Seconds to wait before the next check while free space is under the floor, else None."""
        trace = f"disk-{state.cycle:05d}"
        was_low = self.guard.low
        try:
            low = self.guard.check(trace)
            if low is not None and not self.swept_while_low:
                self.swept_while_low = True
                self.after_cycle(state)             # maybe the sweep alone brings the space back
                low = self.guard.check(trace)
        except OSError as exc:                      # even the event could not be written: wait, try again
            self._say_error("disk check", exc, trace)
            return self.cfg.disk_poll_seconds
        if low is None:
            if was_low:
                self.say(f"{time.strftime('%H:%M:%S')} disk space is back: cycles resume")
            self.swept_while_low = False
            return None
        if not was_low:
            self.say(f"{time.strftime('%H:%M:%S')} waiting: {low.text()}")
        try:
            write_heartbeat(self.ws.heartbeat, state.cycle, trace, os.getpid(),
                            ", ".join(r.label for r in state.active_runs) or None)
        except OSError:
            pass
        return self.cfg.disk_poll_seconds

    def _say_error(self, what: str, exc: Exception, trace: str) -> None:
        self.say(f"{time.strftime('%H:%M:%S')} {what} failed: {exc}")
        try:
            self.events.append("retention_error", trace, step=what, error=str(exc)[:500])
        except OSError:
            pass
