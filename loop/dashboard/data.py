"""The workspace read for the page: the report's typed records (`ReportData`), rebuilt only when one
of the files they come from changed (size and mtime), with events.jsonl parsed incrementally (each
refresh parses only the bytes appended since the last), so a page over a night of 1,000 cycles stays
quick and a poll every few seconds costs next to nothing while nothing changes.

Every payload leaves through `scrub`: each string through loop.util.secrets.redact with the known
secret values, so an API key that reached a log line, an event or a config is never served."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from loop.archive.paths import ModelPaths
from loop.cycle.record import CycleRecord
from loop.domains.datareport import load_data_report
from loop.report.data import ReportData, Run, load_runs, read_json, read_lineage_rows, read_text
from loop.report.helpers import improvements, noise_half_width, val_count
from loop.util.secrets import MIN_SECRET_LEN, redact
from loop.util.workspace import Workspace

EVENTS_PAGE_BYTES = 4 << 20     # one /api/events answer reads at most this much of the file
EVENTS_TAIL_BYTES = 256 << 10   # a first call (no offset) starts this far from the end
LOG_TAIL_BYTES = 16 << 10


# ------------------------------------------------------------------ scrub ----

def scrub(obj: Any, secrets: list[str]) -> Any:
    """`obj` with every string (keys too) redacted. Strings shorter than the shortest secret or key
    shape are left as they are: most strings served are short keys, and redact is regex work."""
    if isinstance(obj, str):
        return obj if len(obj) < MIN_SECRET_LEN else redact(obj, secrets)
    if isinstance(obj, dict):
        return {scrub(k, secrets) if isinstance(k, str) else k: scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj]
    return obj


# ----------------------------------------------------------------- events ----

def parse_lines(chunk: bytes) -> list[dict]:
    """The JSON objects of complete lines; a torn or foreign line is skipped, as EventLog does."""
    records = []
    for line in chunk.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass
class EventsPage:
    """One /api/events answer: the records, and where the next call starts (a line boundary)."""

    events: list[dict]
    offset: int
    size: int                   # the file's size when read
    reset: bool = False         # the file shrank below `after` (a reset workspace): read from 0
    more: bool = False          # stopped at EVENTS_PAGE_BYTES before the end; call again


def read_events(path: Path, after: int | None, trace: str | None = None, limit: int = 500) -> EventsPage:
    """The records written after byte `after` (None: the last EVENTS_TAIL_BYTES), complete lines
    only (a line being written waits for the next call), those of `trace` when given, the last
    `limit` of them. Never reads the file from its start unless asked to (`after=0`)."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return EventsPage([], 0, 0)
    reset = after is not None and after > size
    start = 0 if reset else (max(0, size - EVENTS_TAIL_BYTES) if after is None else max(0, after))
    with open(path, "rb") as fh:
        fh.seek(start)
        chunk = fh.read(min(size - start, EVENTS_PAGE_BYTES))
    more = start + len(chunk) < size
    if after is None and start > 0:           # started mid-line: skip to the next whole one
        cut = chunk.find(b"\n") + 1
        chunk, start = chunk[cut:], start + cut
    complete = chunk[: chunk.rfind(b"\n") + 1]
    records = parse_lines(complete)
    if trace:
        records = [r for r in records if r.get("cycle_trace_id") == trace]
    return EventsPage(records[-limit:], start + len(complete), size, reset, more)


class EventTail:
    """events.jsonl parsed once: each refresh parses only what was appended since the last, and
    validates only the new `cycle` events as CycleRecords (the report's model)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.events: list[dict] = []
        self.cycles: list[CycleRecord] = []
        self.skipped = 0

    def refresh(self) -> int:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            size = 0
        if size < self.offset:                  # reset or replaced: start over
            self.__init__(self.path)
        if size == self.offset:
            return self.offset
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        added = False
        for record in parse_lines(complete):
            self.events.append(record)
            if record.get("kind") == "cycle":
                try:
                    self.cycles.append(CycleRecord.from_event(record))
                    added = True
                except ValidationError:
                    self.skipped += 1
        if added:
            self.cycles.sort(key=lambda c: c.cycle)
        return self.offset


# ------------------------------------------------------------- the cache ----

def file_sig(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class WorkspaceReader:
    """ReportData for the page, rebuilt only when a file it reads changed; views derived from it
    (already scrubbed payloads) are cached with it. Thread-safe: Starlette serves sync endpoints
    from a thread pool."""

    def __init__(self, ws: Workspace, top_k: int = 10):
        self.ws, self.top_k = ws, top_k
        self.paths = ModelPaths(ws.root)
        self.tail = EventTail(ws.events)
        self._lock = threading.RLock()
        self._key: tuple | None = None
        self._data: ReportData | None = None
        self._views: dict[str, Any] = {}

    def _key_now(self) -> tuple:
        ws, paths = self.ws, self.paths
        files = (ws.runs_index, ws.state, ws.finish_up, ws.storyline, ws.todo, ws.data_report,
                 paths.lineage, paths.proposal)
        return (self.tail.refresh(), *(file_sig(f) for f in files), paths.head_name())

    def data(self) -> ReportData:
        with self._lock:
            key = self._key_now()
            if key != self._key or self._data is None:
                self._data, self._key, self._views = self._build(), key, {}
            return self._data

    def view(self, name: str, make: Callable[[ReportData], Any]) -> Any:
        """`make(data)`, computed once per change of the workspace."""
        with self._lock:
            data = self.data()
            if name not in self._views:
                self._views[name] = make(data)
            return self._views[name]

    def _build(self) -> ReportData:
        # load_data's fields, from the incrementally parsed events instead of a full re-read
        ws, paths = self.ws, self.paths
        cycles = list(self.tail.cycles)
        finish_up, proposal = read_json(ws.finish_up), read_json(paths.proposal)
        return ReportData(
            ws=ws, cycles=cycles, events=list(self.tail.events), runs=load_runs(ws, cycles),
            state=read_json(ws.state) or {}, lineage=read_lineage_rows(paths.lineage), head=paths.head_name(),
            proposal=proposal if isinstance(proposal, dict) else None,
            finish_up=finish_up if isinstance(finish_up, dict) else None,
            storyline=[ln for ln in read_text(ws.storyline).splitlines() if ln.startswith("- ")],
            open_todos=[ln for ln in read_text(ws.todo).splitlines() if ln.startswith("- [ ]")],
            note="", top_k=self.top_k, skipped_cycles=self.tail.skipped,
            data_report=load_data_report(ws.data_report))


# ------------------------------------------------------------------ runs ----

@dataclass
class RunPoint:
    """One training run as the chart and the runs table show it."""

    label: str
    cycle: int
    score: float
    ok: bool
    status: str
    dimension: str
    trace: str
    minutes: float | None
    error: str | None
    best_so_far: bool                              # kept as the new best when it finished (outside the noise)
    verdict: str | None = None                     # first | gain | tie | below | replica | screen | failed
    fidelity: float = 1.0
    diff_from_best: dict = field(default_factory=dict)   # key config fields that differ from the best run


@dataclass
class RunsView:
    cycles: int                                    # the last cycle done
    runs: list[RunPoint]
    best_series: list[tuple[int, float]]           # (cycle, best score so far) at each new best, and the last cycle
    best_label: str | None
    best_score: float | None
    noise_half_width: float | None = None          # half the best's 95% binomial interval on the validation set
    val_images: int | None = None                  # the validation set's size it is computed from


def last_cycle(data: ReportData) -> int:
    state_cycle = data.state.get("cycle") if isinstance(data.state.get("cycle"), int) else 0
    return max([state_cycle] + [c.cycle for c in data.cycles])


def runs_view(data: ReportData) -> RunsView:
    best = data.best
    best_key = best.key() if best else {}
    kept = {id(r) for r, _ in improvements(data)}     # the report's rule: ties never move the best
    points, series = [], []
    for r in data.runs:
        new_best = id(r) in kept
        if new_best:
            series.append((r.cycle, r.score))
        points.append(RunPoint(label=r.label, cycle=r.cycle, score=float(r.score), ok=bool(r.ok), status=r.status,
                               dimension=r.dimension or "unknown", trace=r.trace, minutes=r.minutes,
                               error=(r.error or "")[:300] or None, best_so_far=new_best,
                               verdict=r.verdict, fidelity=r.fidelity,
                               diff_from_best=diff(r, best_key) if best is not None and r is not best else {}))
    cycles = last_cycle(data)
    if series:
        series.append((max(cycles, series[-1][0]), series[-1][1]))
    n = val_count(data)
    half = noise_half_width(best.score, n) if best is not None else None     # the report's band, too
    return RunsView(cycles=cycles, runs=points, best_series=series, best_label=best.label if best else None,
                    best_score=best.score if best else None, noise_half_width=half, val_images=n)


def diff(run: Run, best_key: dict) -> dict:
    return {k: v for k, v in run.key().items() if best_key.get(k) != v}


# ----------------------------------------------------------------- tails ----

def tail_text(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def inside(path: Path, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        return False


def log_tail(path: str | Path, ws: Workspace, lines: int = 15) -> list[str]:
    """The last lines of a run's log; only a file inside the workspace (state.json names the path,
    and the page must not become a way to read any file, the credentials file least of all)."""
    if not path or not inside(Path(path), ws.root):
        return []
    text = tail_text(Path(path))
    # tqdm-style progress rewrites one line with \r: keep the latest state of each line
    return [ln.rsplit("\r", 1)[-1][:300] for ln in text.splitlines()[-lines:]]


def storyline_tail(ws: Workspace, n: int = 30) -> list[str]:
    return [ln for ln in tail_text(ws.storyline, 64 << 10).splitlines() if ln.startswith("- ")][-n:]
