"""The workspace read into typed records for the reports: the events (every record, and the cycles
among them as `CycleRecord`s, the model the cycle writes), the training runs (`Run`: a runs-index
`RunRecord` joined with its cycle's outcome and promotion and the run's metrics.json), the lineage
rows, GEN_HEAD and its pending proposal, the state, the finish-up request, the storyline, the
open todos and the data report. A missing or torn file gives an empty value, never an error; a cycle
event that does not validate (an old or foreign events.jsonl) is skipped and counted in
`skipped_cycles`."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loop.archive.paths import ModelPaths
from loop.candidates.records import Handoff
from loop.config.load import load_yaml_text
from loop.cycle.record import CycleRecord
from loop.domains.datareport import DataReport, load_data_report
from loop.journal.events import EventLog
from loop.journal.history import RunRecord, read_history
from loop.journal.metrics import RunMetrics, metrics_or_none
from loop.run.judge import RunOutcome, RunStatus
from loop.util.workspace import Workspace
from loop.verdict.keeps import incumbent, ranked

__all__ = ["CycleRecord", "ReportData", "Run", "load_data"]


@dataclass
class Run(RunRecord):
    """One finished training run: its `RunRecord` (a runs/index.jsonl line, or one built from the
    cycle events for a failed run that its retry replaced in the index), plus what the reports add:
    the outcome's status, error and exit code, the run's metrics.json and its promotion."""

    status: RunStatus = "ok"
    metrics: RunMetrics | None = None
    error: str | None = None
    exit_code: int | None = None
    promotion: Handoff | None = None

    @classmethod
    def of(cls, record: RunRecord, **extra: Any) -> "Run":
        return cls(**{f.name: getattr(record, f.name) for f in fields(RunRecord)}, **extra)

    @property
    def archive_path(self) -> str | None:
        return self.promotion.archive_path if self.promotion else None

    def key(self) -> dict[str, Any]:
        """The config fields a reader compares runs by."""
        c, m = self.config, self.metrics
        return {"model": dig(c, "model.name") or (m.model_name if m else None),
                "image_size": dig(c, "data.image_size"),
                "sampling": dig(c, "data.sampling.strategy"),
                "augment": [a.get("name") for a in dig(c, "data.augment") or [] if isinstance(a, dict)],
                "optimizer": dig(c, "optim.name"), "lr": dig(c, "optim.lr"),
                "epochs": dig(c, "run.epochs"), "batch_size": dig(c, "data.batch_size"),
                "label_smoothing": dig(c, "loss.label_smoothing"),
                "seed": dig(c, "run.seed") or (m.seed if m else None),
                "kd_teacher": dig(c, "kd.teacher")}


@dataclass
class ReportData:
    ws: Workspace
    cycles: list[CycleRecord]             # by cycle
    events: list[dict]                    # every record, cycle or not, as written
    runs: list[Run]                       # by cycle
    state: dict
    lineage: list[dict]
    head: str | None
    proposal: dict | None
    finish_up: dict | None
    storyline: list[str]
    open_todos: list[str]
    note: str
    top_k: int
    skipped_cycles: int = 0               # cycle events that did not validate as a CycleRecord
    data_report: DataReport | None = None  # logs/data_report.json, the task's data as the loop saw it

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def ranked(self) -> list[Run]:
        """Full-fidelity successes, the kept best first, then by score (keeps.ranked)."""
        return ranked(self.runs)[0]

    @property
    def low_fidelity(self) -> list[Run]:
        """Lower-fidelity successes by score, never ranked with the full ones."""
        return ranked(self.runs)[1]

    @property
    def best(self) -> Run | None:
        """The kept best (a tie never replaces it; loop/verdict/keeps.py)."""
        return incumbent(self.runs)

    @property
    def baseline(self) -> Run | None:
        return self.ok_runs[0] if self.ok_runs else None


def dig(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line; a torn or foreign line is skipped."""
    return [r for r in EventLog(path) if isinstance(r, dict)]


def read_config(run_dir: Path) -> dict:
    """The resolved trainer config of a run folder (`out/`): train_args.json, else the run.yaml
    the daemon wrote beside it (JSON, which YAML reads too)."""
    for path in (run_dir / "train_args.json", run_dir.parent / "run.yaml"):
        if path.exists():
            try:
                data = load_yaml_text(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                continue
    return {}


def read_cycles(events: list[dict]) -> tuple[list[CycleRecord], int]:
    """The `cycle` events read back as CycleRecords, by cycle, and how many did not validate."""
    cycles, skipped = [], 0
    for event in events:
        if event.get("kind") != "cycle":
            continue
        try:
            cycles.append(CycleRecord.from_event(event))
        except ValidationError:
            skipped += 1
    return sorted(cycles, key=lambda c: c.cycle), skipped


def load_data(ws_root: Path, top_k: int, note: str) -> ReportData:
    ws = Workspace(ws_root)
    events = read_jsonl(ws.events)
    cycles, skipped = read_cycles(events)
    finish_up = read_json(ws.finish_up)
    finish_up = finish_up if isinstance(finish_up, dict) else None
    paths = ModelPaths(ws.root)
    proposal = read_json(paths.proposal)
    return ReportData(
        ws=ws, cycles=cycles, events=events, runs=load_runs(ws, cycles),
        state=read_json(ws.state) or {}, lineage=read_lineage_rows(paths.lineage), head=paths.head_name(),
        proposal=proposal if isinstance(proposal, dict) else None, finish_up=finish_up,
        storyline=[ln for ln in read_text(ws.storyline).splitlines() if ln.startswith("- ")],
        open_todos=[ln for ln in read_text(ws.todo).splitlines() if ln.startswith("- [ ]")],
        note=note or (finish_up or {}).get("note", "") or "", top_k=top_k, skipped_cycles=skipped,
        data_report=load_data_report(ws.data_report))


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_lineage_rows(path: Path) -> list[dict]:
    # Plain dicts: a report must not fail on a row the current LineageRow schema would refuse.
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


# ------------------------------------------------------------------ runs ----

def outcomes_of(cycle: CycleRecord | None) -> list[RunOutcome]:
    """The finished run outcomes a cycle holds (a follow cycle repeats run_outcome as followed_run)."""
    if cycle is None:
        return []
    seen, out = set(), []
    for o in (cycle.run_outcome, cycle.run_outcome_retry, cycle.followed_run):
        if o is not None and o.label and o.status != "running" and (o.label, o.status) not in seen:
            seen.add((o.label, o.status))
            out.append(o)
    return out


def launch_dimensions(cycles: list[CycleRecord]) -> dict[str, str]:
    """run label -> the strategy dimension of the decision that launched it. A run followed in a
    later cycle is indexed without one (that cycle made no decision)."""
    dims = {}
    for c in cycles:
        if c.run and c.decision and c.decision.strategy_dimension:
            dims[c.run.label] = c.decision.strategy_dimension
    return dims


def load_runs(ws: Workspace, cycles: list[CycleRecord]) -> list[Run]:
    by_trace = {c.trace: c for c in cycles}
    dims = launch_dimensions(cycles)
    runs = [index_run(rec, by_trace, dims) for rec in read_history(ws) if usable(rec)]
    indexed = {(r.trace, r.label) for r in runs}
    for c in cycles:                # failed train runs that a retry replaced in the index
        for o in outcomes_of(c):
            if o.kind == "train" and (c.trace, o.label) not in indexed:
                runs.append(event_run(o, c, dims))
    for r in runs:
        r.metrics = metrics_or_none(r.run_dir) if r.run_dir else None
    return sorted(runs, key=lambda r: (r.cycle, r.label.endswith("-retry")))   # a failure before its retry


def usable(rec: RunRecord) -> bool:
    """A runs-index line the reports can rank (a foreign or hand-edited line may not be)."""
    return (isinstance(rec.label, str) and bool(rec.label) and isinstance(rec.cycle, int)
            and isinstance(rec.score, (int, float)) and isinstance(rec.config, dict))


def index_run(rec: RunRecord, by_trace: dict[str, CycleRecord], dims: dict[str, str]) -> Run:
    cycle = by_trace.get(rec.trace)
    outcome = next((o for o in outcomes_of(cycle) if o.label == rec.label), None)
    rec = replace(rec, ok=bool(rec.ok), run_dir=str(rec.run_dir or ""),
                  dimension=rec.dimension or dims.get(base_label(rec.label)),
                  config=rec.config or (read_config(Path(rec.run_dir)) if rec.run_dir else {}))
    return Run.of(rec, status=outcome.status if outcome else ("ok" if rec.ok else "failed"),
                  error=outcome.error if outcome else None, exit_code=outcome.exit_code if outcome else None,
                  promotion=cycle.promotion if cycle and rec.ok else None)


def event_run(outcome: RunOutcome, cycle: CycleRecord, dims: dict[str, str]) -> Run:
    run_dir = str(Path(outcome.run_dir) / "out") if outcome.run_dir else ""
    rec = RunRecord(label=outcome.label, cycle=cycle.cycle, trace=cycle.trace, ok=False, score=0.0,
                    config=read_config(Path(run_dir)) if run_dir else {}, run_dir=run_dir,
                    dimension=dims.get(base_label(outcome.label)), minutes=round(outcome.seconds / 60.0, 3))
    return Run.of(rec, status=outcome.status, error=outcome.error, exit_code=outcome.exit_code)


def base_label(label: str) -> str:
    return label[:-len("-retry")] if label.endswith("-retry") else label
