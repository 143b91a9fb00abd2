"""events.jsonl: one JSON object per line, append-only, never rewritten. Every record carries
`cycle_trace_id`. A crash can tear only the last line: readers skip it, and `repair_tail()`
(run once at daemon start) cuts it off so the next append starts on a clean line."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, model_serializer

from loop.util.fsutil import append_line


class SparseRecord(BaseModel):
    """A record for an event written without its unset (None) fields: the line holds only what
    happened (a failed hand-off is `{"error": ...}`, as it was when these were dicts)."""

    @model_serializer(mode="wrap")
    def _without_none(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class EventLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, kind: str, cycle_trace_id: str, **fields: Any) -> dict:
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": kind,
                  "cycle_trace_id": cycle_trace_id, **fields}
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, line, site="events")     # one write; a failed one leaves no fragment
        return record

    def __iter__(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue          # a torn last line after a crash

    def tail(self, n: int, kind: str | None = None) -> list[dict]:
        """The last `n` records (of `kind`), oldest first, reading only the end of the file."""
        window = max(n * 8, 256)
        recent = self._tail_lines(window)
        picked = [r for r in recent if kind is None or r.get("kind") == kind]
        if len(picked) < n and len(recent) >= window:      # rare kinds: look further back
            picked = [r for r in self if kind is None or r.get("kind") == kind]
        return picked[-n:]

    def _tail_lines(self, max_lines: int) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size, block, data = fh.tell(), 1 << 16, b""
            while size > 0 and data.count(b"\n") <= max_lines:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
        records = []
        for line in data.splitlines()[-max_lines:]:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def repair_tail(self) -> bool:
        """Cut a torn last line (no trailing newline). True if something was cut."""
        return repair_torn_tail(self.path)


def repair_torn_tail(path: Path) -> bool:
    """Cut a torn last line (no trailing newline) of a JSONL file. True if something was cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        fh.seek(0)
        data = fh.read()
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)
        os.fsync(fh.fileno())
        return True
