"""The lineage ledger (lineage.csv: one row per archived candidate, updated on promotion and
rollback) and the evolution log (evolution_log.jsonl: append-only, one event per line)."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from pydantic import BaseModel

from loop.util.fsutil import atomic_write_text

LINEAGE_FIELDS = ["name", "gen_id", "branch_id", "parent", "seed", "strategy", "status", "score",
                  "promoted", "promoted_at", "archive_path", "hashes_sha256", "cycle_trace_id"]


class LineageRow(BaseModel):
    name: str
    gen_id: int
    branch_id: str
    parent: str = ""
    seed: int
    strategy: str
    status: str                  # PASS / FAIL - <reason>
    score: float
    promoted: bool = False       # ever served as GEN_HEAD
    promoted_at: str = ""
    archive_path: str
    hashes_sha256: str           # sha256 of the entry's hashes.csv: tampering with it shows too
    cycle_trace_id: str = ""


def read_lineage(path: Path) -> list[LineageRow]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [LineageRow.model_validate(row) for row in csv.DictReader(fh)]


def write_lineage(path: Path, rows: list[LineageRow]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LINEAGE_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row.model_dump())
    atomic_write_text(path, buf.getvalue())


def upsert_lineage(path: Path, row: LineageRow) -> None:
    rows = [r for r in read_lineage(path) if r.name != row.name]
    write_lineage(path, rows + [row])


def mark_promoted(path: Path, name: str) -> None:
    rows = read_lineage(path)
    for r in rows:
        if r.name == name and not r.promoted:
            r.promoted, r.promoted_at = True, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_lineage(path, rows)


def log_event(path: Path, action: str, **fields) -> dict:
    """Append one event to evolution_log.jsonl (never rewritten)."""
    record = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
    return record


def read_events(path: Path) -> list[dict]:
    """Every event; a torn last line (a crash mid-append) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
