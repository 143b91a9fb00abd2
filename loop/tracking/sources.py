"""What a tracker logs, read from the workspace files the loop already writes: every training run
in the runs index (its resolved config, metrics.json's per-epoch curve) and every archive entry
(gates, verdict, EVAL.md). A Builder run and the entry its hand-off froze are one tracked run; an
entry no training run accounts for (an evolution window's candidate) is a run of its own.

Re-reading the files each time, rather than hooking the steps that write them, is what lets a
tracker that was down catch up: whatever it has not logged yet is still here."""
from __future__ import annotations

import json
import re
from pathlib import Path

from loop.archive.lineage import LineageRow, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.proposal import read_proposal
from loop.journal.history import RunRecord, read_history
from loop.journal.metrics import RunMetrics, entry_trainer_metrics, metrics_or_none
from loop.tracking.records import TrackedRun, flatten
from loop.util.workspace import Workspace

BUILDER_BRANCH = re.compile(r"c\d+")        # intake.submit_run names a Builder run's branch c<cycle>
ENTRY_ARTIFACTS = ("EVAL.md", "MODEL_CARD.md")


def pending_runs(ws_root: Path, logged: dict[str, str | None]) -> list[TrackedRun]:
    """Every training run and candidate whose key is not in `logged` (key -> the archive entry it
    was logged with), oldest first."""
    paths = ModelPaths(Path(ws_root))
    lineage = read_lineage(paths.lineage)
    history = read_history(Workspace(Path(ws_root)))
    states = promotion_states(paths, lineage)
    runs, claimed = [], {entry for key, entry in logged.items() if entry and key.startswith("run:")}
    for record in history:
        key = f"run:{record.trace}:{record.label}"
        if key in logged:
            continue
        row = entry_of(record, lineage, paths)
        if row is not None:
            claimed.add(row.name)
        runs.append(training_run(key, record, row, paths, states))
    for row in lineage:
        key = f"candidate:{row.name}"
        if row.name not in claimed and key not in logged:
            runs.append(candidate_run(key, row, paths, states))
    return runs


# ------------------------------------------------------------ the two kinds ----

def training_run(key: str, record: RunRecord, row: LineageRow | None, paths: ModelPaths,
                 states: dict[str, str]) -> TrackedRun:
    """A runs-index row, with its metrics.json and, when its hand-off archived it, its entry."""
    metrics = metrics_or_none(Path(record.run_dir)) if record.run_dir else None
    entry = entry_facts(row, paths, states) if row else {}
    if metrics is None and row is not None:
        metrics = entry_trainer_metrics(paths.entry(row.name))
    tags = {"llmloop.kind": "training", "llmloop.trace_id": record.trace, "llmloop.cycle": str(record.cycle),
            "llmloop.label": record.label, "llmloop.ok": str(record.ok).lower(),
            "llmloop.dimension": record.dimension or "", "llmloop.status": metrics.status if metrics else "missing",
            # against the best of its time (loop/verdict/keeps.py): a tie is not a new best
            "llmloop.keep": record.verdict or "", "llmloop.fidelity": f"{record.fidelity:.2f}"}
    run = TrackedRun(key=key, kind="training", name=record.label, trace=record.trace, cycle=record.cycle,
                     params=flatten(record.config), ok=record.ok, tags=tags | entry.get("tags", {}),
                     entry=row.name if row else None, artifacts=entry.get("artifacts", []))
    run.summary = {"val_accuracy_final": record.score} | entry.get("summary", {})
    return with_metrics(run, metrics, Path(record.run_dir) / "metrics.json" if record.run_dir else None)


def candidate_run(key: str, row: LineageRow, paths: ModelPaths, states: dict[str, str]) -> TrackedRun:
    """An archive entry no training run accounts for: an evolution window's candidate."""
    folder = paths.entry(row.name)
    try:
        config = json.loads((folder / "train_args.json").read_text())
    except (OSError, ValueError):
        config = {}
    metrics = entry_trainer_metrics(folder)
    entry = entry_facts(row, paths, states)
    tags = {"llmloop.kind": "candidate", "llmloop.trace_id": row.cycle_trace_id, "llmloop.label": row.name,
            "llmloop.ok": str(metrics is not None and metrics.status == "ok").lower(),
            "llmloop.status": metrics.status if metrics else "missing"}
    run = TrackedRun(key=key, kind="candidate", name=row.name, trace=row.cycle_trace_id,
                     params=flatten(config if isinstance(config, dict) else {}),
                     ok=metrics is not None and metrics.status == "ok", tags=tags | entry["tags"], entry=row.name,
                     artifacts=entry["artifacts"], summary=entry["summary"])
    if metrics is not None and metrics.eval is not None:
        run.summary["val_accuracy_final"] = metrics.eval.accuracy
    return with_metrics(run, metrics, folder / "metrics.json")


def with_metrics(run: TrackedRun, metrics: RunMetrics | None, file: Path | None) -> TrackedRun:
    """The curve, the run's throughput and its times (ended when metrics.json was last written)."""
    if metrics is None:
        return run
    run.curve = list(metrics.curve)
    run.summary |= {"images_per_second": metrics.images_per_second, "walltime_minutes": metrics.walltime_minutes}
    try:
        end = file.stat().st_mtime if file is not None else None
    except OSError:
        end = None
    if end is not None:
        run.end_ms = int(end * 1000)
        run.start_ms = int((end - metrics.walltime_seconds) * 1000)
    return run


# ------------------------------------------------------------- the archive ----

def entry_of(record: RunRecord, lineage: list[LineageRow], paths: ModelPaths) -> LineageRow | None:
    """The entry a Builder run's hand-off froze: judged in the same cycle, from the very same
    resolved config (the archive keeps the run's train_args.json byte for byte)."""
    rows = [r for r in lineage if r.cycle_trace_id == record.trace and BUILDER_BRANCH.fullmatch(r.branch_id)]
    for row in rows:
        try:
            if json.loads((paths.entry(row.name) / "train_args.json").read_text()) == record.config:
                return row
        except (OSError, ValueError):
            continue
    return None


def entry_facts(row: LineageRow, paths: ModelPaths, states: dict[str, str]) -> dict:
    """The gates, verdict, score and promotion state of an entry as tags; its EVAL.md and card."""
    folder = paths.entry(row.name)
    try:
        archived = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        archived = {}
    gates = archived.get("gates") or {}
    tags = {"llmloop.archive_entry": row.name, "llmloop.verdict": row.status, "llmloop.gen_id": str(row.gen_id),
            "llmloop.strategy": row.strategy, "llmloop.parent": row.parent or "",
            "llmloop.gates_passed": str(row.status.startswith("PASS")).lower(),
            "llmloop.promotion": states.get(row.name, "unknown")}
    tags |= {f"llmloop.gate.{name.removesuffix('_ok')}": "pass" if ok else "fail" for name, ok in gates.items()}
    summary = {"gate_score": float(row.score)}
    for probe in ("recall", "generalize", "drift"):
        value = (archived.get("eval") or {}).get(probe)
        if isinstance(value, (int, float)):
            summary[f"probe_{probe}"] = float(value)
    return {"tags": tags, "summary": summary,
            "artifacts": [folder / name for name in ENTRY_ARTIFACTS if (folder / name).is_file()]}


def promotion_states(paths: ModelPaths, lineage: list[LineageRow] | None = None) -> dict[str, str]:
    """Each entry's place in the promotion pipeline: head (GEN_HEAD now), proposed (the pending
    proposal), retired (served as HEAD before), passed (passed its gates), rejected."""
    head = paths.head_name()
    try:
        proposal = read_proposal(paths)
    except Exception:                  # a hand-edited proposal file is the promotion CLI's to report
        proposal = None
    proposed = proposal.proposed_head if proposal else None
    states = {}
    for row in lineage if lineage is not None else read_lineage(paths.lineage):
        states[row.name] = ("head" if row.name == head else "proposed" if row.name == proposed
                            else "retired" if row.promoted else "passed" if row.status.startswith("PASS")
                            else "rejected")
    return states
