"""Progress for long operations: a live bar on a terminal (rich), plain progress lines otherwise,
and always the same lines into the operation's log file for people reading it later."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from loop.util.fsutil import append_line


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressLog:
    """`line()` goes to the log file and the screen; `update()` moves the bar (or, off a terminal,
    prints a progress line at most every `every_seconds`)."""

    def __init__(self, log_path: Path | None, description: str, total: int,
                 stream: TextIO | None = None, every_seconds: float = 5.0):
        self.stream = stream or sys.stdout
        self.log = Path(log_path) if log_path else None
        if self.log:
            self.log.touch()          # the log exists from the start (and a missing folder fails here, as before)
        self.total, self.done = total, 0
        self.every_seconds = every_seconds
        self._last_line = 0.0
        self._started = time.monotonic()
        self._bar = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[status]}"),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task(description, total=total, status="")
            self._bar.start()

    def line(self, message: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        self._log_line(stamped)
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(stamped, file=self.stream, flush=True)

    def _log_line(self, stamped: str) -> None:
        if self.log:
            append_line(self.log, stamped + "\n")      # one write: a full disk leaves no fragment

    def eta_seconds(self) -> float:
        elapsed = time.monotonic() - self._started
        return elapsed / self.done * (self.total - self.done) if self.done else 0.0

    def update(self, done: int, status: str = "") -> None:
        """Move the bar; at most every `every_seconds` also write a progress line (with ETA)."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, status=status)
        now = time.monotonic()
        if now - self._last_line >= self.every_seconds or done >= self.total:
            self._last_line = now
            message = f"progress {done}/{self.total} {status} eta {format_seconds(self.eta_seconds())}"
            if self._bar is not None:   # the bar shows it; the log file still gets the line
                self._log_line(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")
            else:
                self.line(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.log = None
