"""The runs index (artifacts/runs/index.jsonl): one line per finished training run, the history the
policies, the context, the timer and the reports read. Read incrementally, so a cycle's cost does
not grow with the length of the night."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from loop.util.fsutil import append_line
from loop.util.workspace import Workspace


@dataclass
class RunRecord:
    """One finished training run, as the policies, the context, the timer, status and the reports
    see it; its serialised form is one line of artifacts/runs/index.jsonl."""

    label: str
    cycle: int
    config: dict            # the resolved trainer config that ran
    ok: bool
    score: float            # validation accuracy (0 when the run failed)
    dimension: str | None = None
    minutes: float | None = None   # how long the run took
    trace: str = ""                # the cycle_trace_id of the cycle that judged it
    run_dir: str = ""              # the trainer's output folder
    fidelity: float = 1.0          # share of its epochs and of the base config's data it trained (1: full)
    verdict: str | None = None     # against the best when it was judged (loop/verdict/keeps.py); None: old row
    margin: float | None = None    # its score minus the best's then
    band: float | None = None      # the noise band it was judged with
    val_count: int | None = None   # validation images it was scored on
    epoch_seconds: float | None = None   # median seconds per training epoch (the cost model's input)
    epochs_trained: int | None = None    # epochs this run trained itself (a continuation: after its screen)
    fingerprint: str = ""          # what it trained (loop/journal/fingerprint.py); "" on old rows
    recipe: str = ""               # the same, seed left out
    failure: dict | None = None    # a failed run's signature (loop/run/failure.py FailureSignature)
    stopped_at_cap: bool = False   # stopped by its walltime with a checkpoint: it can be continued

    @classmethod
    def from_row(cls, row: dict) -> "RunRecord":
        """A runs-index row; keys added since a row was written take their defaults."""
        values: dict = {"config": {}, "score": 0.0}
        for f in fields(cls):
            if f.name in row:
                values[f.name] = row[f.name]
            elif f.default is MISSING and f.name not in values:
                raise KeyError(f.name)
        return cls(**values)

    @property
    def signature(self) -> str | None:
        """The key of its failure signature (None: it did not fail, or an old row)."""
        return (self.failure or {}).get("key")

    @property
    def full(self) -> bool:
        return self.fidelity >= 0.999


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
                self.records.append(RunRecord.from_row(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return list(self.records)


def read_history(ws: Workspace) -> list[RunRecord]:
    return HistoryReader(ws.runs_index).read()


def append_history(ws: Workspace, record: RunRecord | dict) -> None:
    """Append one run (a RunRecord, or a row already in its serialised form)."""
    row = asdict(record) if isinstance(record, RunRecord) else record
    ws.runs.mkdir(parents=True, exist_ok=True)
    append_line(ws.runs_index, json.dumps(row, default=str) + "\n")   # a failed append leaves no half record
