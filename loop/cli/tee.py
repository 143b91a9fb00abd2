"""`llmloop start --foreground --tee-log`: what the daemon prints goes to its terminal (for a service,
the journal) and is appended to the workspace's daemon log, which `llmloop start` in the background
writes too, so either way of running leaves the same file behind."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO


class Tee:
    """A text stream writing to `stream` and to `copy`, line-buffered both ways."""

    def __init__(self, stream: TextIO, copy: TextIO):
        self.stream, self.copy = stream, copy

    def write(self, text: str) -> int:
        self.stream.write(text)
        try:
            self.copy.write(text)
            self.copy.flush()
        except (OSError, ValueError):     # a full disk must not silence the journal: it keeps the lines
            pass
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def tee_output(log_path: Path) -> None:
    """From now on, stdout and stderr of this process are also appended to `log_path`."""
    log = open(log_path, "a", encoding="utf-8", buffering=1)
    sys.stdout = Tee(sys.stdout, log)
    sys.stderr = Tee(sys.stderr, log)
