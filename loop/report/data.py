"""The workspace read into typed records for the reports: the events (every record, and the cycles
among them), the training runs (runs/index.jsonl joined with the cycle events and each run's
metrics.json and config), the lineage rows, GEN_HEAD and its pending proposal, the state, the
finish-up request, the storyline and the open todos. A missing or torn file gives an empty value,
never an error."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop.journal.events import EventLog
from loop.archive.paths import ModelPaths
from loop.util.workspace import Workspace


@dataclass
class Run:
    """One training run: a runs/index.jsonl row, or a failed run that only the events know
    (a run whose retry replaced it in the index)."""

    label: str
    cycle: int
    trace: str
    ok: bool
    score: float
    status: str
    dimension: str | None = None
    config: dict = field(default_factory=dict)
    run_dir: str = ""
    metrics: dict | None = None
    error: str | None = None
    exit_code: int | None = None
    promotion: dict | None = None

    @property
    def archive_path(self) -> str | None:
        return (self.promotion or {}).get("archive_path")

    def key(self) -> dict[str, Any]:
        """The config fields a reader compares runs by."""
        c, m = self.config, self.metrics or {}
        return {"model": dig(c, "model.name") or m.get("model_name"),
                "image_size": dig(c, "data.image_size"),
                "sampling": dig(c, "data.sampling.strategy"),
                "augment": [a.get("name") for a in dig(c, "data.augment") or [] if isinstance(a, dict)],
                "optimizer": dig(c, "optim.name"), "lr": dig(c, "optim.lr"),
                "epochs": dig(c, "run.epochs"), "batch_size": dig(c, "data.batch_size"),
                "label_smoothing": dig(c, "loss.label_smoothing"), "seed": dig(c, "run.seed") or m.get("seed"),
                "kd_teacher": dig(c, "kd.teacher")}


@dataclass
class ReportData:
    ws: Workspace
    cycles: list[dict]
    events: list[dict]                    # every record, cycle or not
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

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def ranked(self) -> list[Run]:
        return sorted(self.ok_runs, key=lambda r: (-r.score, r.cycle))

    @property
    def best(self) -> Run | None:
        return self.ranked[0] if self.ok_runs else None

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
                import yaml

                data = yaml.safe_load(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                continue
    return {}


def load_data(ws_root: Path, top_k: int, note: str) -> ReportData:
    ws = Workspace(ws_root)
    events = read_jsonl(ws.events)
    cycles = sorted((e for e in events if e.get("kind") == "cycle" and isinstance(e.get("cycle"), int)),
                    key=lambda e: e["cycle"])
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
        note=note or (finish_up or {}).get("note", "") or "", top_k=top_k)


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

def outcomes_of(event: dict) -> list[dict]:
    """The finished run outcomes a cycle event holds (a follow cycle repeats run_outcome as followed_run)."""
    found = [event.get(k) for k in ("run_outcome", "run_outcome_retry", "followed_run")]
    seen, out = set(), []
    for o in found:
        if isinstance(o, dict) and o.get("label") and o.get("status") not in (None, "running"):
            key = (o["label"], o.get("status"))
            if key not in seen:
                seen.add(key)
                out.append(o)
    return out


def launch_dimensions(cycles: list[dict]) -> dict[str, str]:
    """run label -> the strategy dimension of the decision that launched it. A run followed in a
    later cycle is indexed without one (that cycle made no decision)."""
    dims = {}
    for e in cycles:
        label, dim = dig(e, "run.label"), dig(e, "decision.strategy_dimension")
        if label and dim:
            dims[label] = dim
    return dims


def load_runs(ws: Workspace, cycles: list[dict]) -> list[Run]:
    by_trace = {e.get("cycle_trace_id"): e for e in cycles}
    dims = launch_dimensions(cycles)
    runs = [index_run(row, by_trace, dims) for row in read_jsonl(ws.runs_index) if row.get("label")]
    indexed = {(r.trace, r.label) for r in runs}
    for e in cycles:                # failed train runs that a retry replaced in the index
        for o in outcomes_of(e):
            if o.get("kind") == "train" and (e.get("cycle_trace_id"), o["label"]) not in indexed:
                runs.append(event_run(o, e, dims))
    for r in runs:
        r.metrics = read_json(Path(r.run_dir) / "metrics.json") if r.run_dir else None
    return sorted(runs, key=lambda r: (r.cycle, r.label.endswith("-retry")))   # a failure before its retry


def index_run(row: dict, by_trace: dict[str, dict], dims: dict[str, str]) -> Run:
    event = by_trace.get(row.get("trace"), {})
    outcome = next((o for o in outcomes_of(event) if o["label"] == row["label"]), {})
    run_dir = str(row.get("run_dir") or "")
    promotion = event.get("promotion") if isinstance(event.get("promotion"), dict) else None
    return Run(label=row["label"], cycle=int(row.get("cycle") or 0), trace=str(row.get("trace") or ""),
               ok=bool(row.get("ok")), score=float(row.get("score") or 0.0),
               status=outcome.get("status") or ("ok" if row.get("ok") else "failed"),
               dimension=row.get("dimension") or dims.get(base_label(row["label"])),
               config=row.get("config") or (read_config(Path(run_dir)) if run_dir else {}),
               run_dir=run_dir, error=outcome.get("error"), exit_code=outcome.get("exit_code"),
               promotion=promotion if row.get("ok") else None)


def event_run(outcome: dict, event: dict, dims: dict[str, str]) -> Run:
    run_dir = str(Path(outcome["run_dir"]) / "out") if outcome.get("run_dir") else ""
    return Run(label=outcome["label"], cycle=int(event["cycle"]), trace=event.get("cycle_trace_id", ""),
               ok=False, score=0.0, status=outcome.get("status") or "failed",
               dimension=dims.get(base_label(outcome["label"])),
               config=read_config(Path(run_dir)) if run_dir else {}, run_dir=run_dir,
               error=outcome.get("error"), exit_code=outcome.get("exit_code"))


def base_label(label: str) -> str:
    return label[:-len("-retry")] if label.endswith("-retry") else label
