"""The runs index (artifacts/runs/index.jsonl): one line per finished training run, the history the
policies, the context, the timer and the reports read. Read incrementally, so a cycle's cost does
not grow with the length of the night."""
from __future__ import annotations

import json
from pathlib import Path

from loop.agents.offline import RunRecord
from loop.fsutil import append_line
from loop.workspace import Workspace


class HistoryReader:
    """The runs index, read incrementally: each cycle parses only the lines added since the last."""

    def __init__(self, path: Path):
        self.path, self.offset, self.records = path, 0, []

    def read(self) -> list[RunRecord]:
        if not self.path.exists():
            return list(self.records)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]          # a torn last line waits for the next read
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
                self.records.append(RunRecord(r["label"], r["cycle"], r.get("config", {}), r["ok"],
                                              r.get("score", 0.0), r.get("dimension"), r.get("minutes")))
            except (json.JSONDecodeError, KeyError):
                continue
        return list(self.records)


def read_history(ws: Workspace) -> list[RunRecord]:
    return HistoryReader(ws.runs_index).read()


def append_history(ws: Workspace, row: dict) -> None:
    ws.runs.mkdir(parents=True, exist_ok=True)
    append_line(ws.runs_index, json.dumps(row, default=str) + "\n")   # a failed append leaves no half record
