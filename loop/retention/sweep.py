"""The retention sweep, run after each cycle: a disk that never fills. It removes weights and
checkpoints, never metrics, configs or logs, so reports, the dashboard and tracking still show every
run. What stays whole, and why (`plan`):

  archive entry   GEN_HEAD; its lineage (parents, back to the first generation); every promoted
                  generation (rollback targets); the pending proposal's entries; the top k PASS
                  entries by gate score; a FAIL entry for keep_failed_runs_days
  run folder      a run in flight and what it reads (a screen it continues); the incumbent (the
                  kept best); a run that may still be continued (the ladder's promotable runs and
                  the k best screens not continued yet); the top k ok runs by score; a failed run
                  for keep_failed_runs_days

Over max_workspace_gb the sweep goes further, in order: failed runs and entries younger than their
days (oldest first), then the top k themselves (lowest score first); never past the rest. A pruned
folder carries PRUNED.json (loop/archive/pruned.py); `archive verify` reads it as pruned, not corrupt.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from loop.agents.ladder import continued, promotable
from loop.archive.freeze import HASHES, _recorded_hashes
from loop.archive.lineage import LineageRow, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.proposal import PromotionError, read_proposal
from loop.archive.pruned import MARKER
from loop.config.sections import RetentionConfig
from loop.journal.history import RunRecord, read_history
from loop.retention.prune import UnsafePath, finish_interrupted, present_files, prune_entry, prune_run
from loop.run.supervise import ActiveRun
from loop.util.fsutil import folder_size_bytes, read_regular_text
from loop.util.workspace import Workspace
from loop.verdict.keeps import incumbent

GB = 1e9
ENTRY_WEIGHTS = ("model.safetensors",)
RUN_WEIGHTS = ("out/model.safetensors", "out/checkpoint.pt")    # the trainer's weights and resume state
NOW, OVER_CAP_FAILED, OVER_CAP_TOP = 0, 1, 2                      # tiers: when a candidate may go


@dataclass(frozen=True)
class Candidate:
    """A folder the sweep may prune: a run folder or an archive entry."""
    kind: str                 # run | archive
    name: str
    folder: Path
    tier: int                 # NOW: by the rules; OVER_CAP_*: only while the workspace is over its cap
    order: float              # within a tier, lower goes first (-age for failures, score for the top k)
    reason: str


class PrunedItem(BaseModel):
    kind: str
    name: str
    files: list[str]
    bytes: int
    reason: str


class SweepResult(BaseModel):
    """What one sweep did: the `retention_sweep` event's fields."""
    pruned: list[PrunedItem] = []
    bytes_freed: int = 0
    workspace_gb_before: float
    workspace_gb_after: float
    max_workspace_gb: float | None = None
    over_cap: bool = False              # still over max_workspace_gb: what is left is all protected
    repaired: dict[str, list[str]] = {}  # entries a kill left mid-prune, finished now
    refused: list[str] = []             # folders skipped: outside the workspace or through a link


# ================================================================== rules ====

def lineage_of(head: str | None, rows: dict[str, LineageRow]) -> set[str]:
    """GEN_HEAD and its ancestors by `parent`, back to the first generation."""
    out, name = set(), head
    while name and name in rows and name not in out:
        out.add(name)
        name = rows[name].parent
    return out


def plan_archive(paths: ModelPaths, cfg: RetentionConfig, now: float) -> list[Candidate]:
    rows = {r.name: r for r in read_lineage(paths.lineage)}
    try:
        proposal = read_proposal(paths)
    except PromotionError:             # a proposal nobody can read: keep every entry whole
        return []
    protected = lineage_of(paths.head_name(), rows) | {n for n, r in rows.items() if r.promoted}
    if proposal is not None:
        protected |= {proposal.proposed_head, proposal.current_head or ""}
    passing = sorted((r for r in rows.values() if r.status.startswith("PASS")), key=lambda r: (-r.score, r.name))
    rank = {r.name: i for i, r in enumerate(passing, start=1)}
    k, days = cfg.keep_top_k, cfg.keep_failed_runs_days
    out = []
    for name, row in rows.items():
        if name in protected:
            continue
        folder = paths.entry(name)
        if name in rank:
            out.append(ranked("archive", name, folder, rank[name], row.score, k, "PASS entries"))
        else:
            out.append(failed("archive", name, folder, now - _mtime(folder / HASHES, now), days,
                              f"failed ({row.status.strip()[:60]})"))
    return out


def plan_runs(ws: Workspace, cfg: RetentionConfig, active: list[ActiveRun], now: float) -> list[Candidate]:
    history = read_history(ws)
    in_flight = {r.resume_from for r in active if r.resume_from}
    protected = {str(_out(r.run_dir)) for r in active} | in_flight
    best = incumbent(history)
    if best is not None:
        protected.add(best.run_dir)
    protected |= {r.run_dir for r in promotable(history, in_flight)}
    done = continued(history) | in_flight
    resumable = sorted((r for r in history if r.ok and (r.verdict == "screen" or r.stopped_at_cap)
                        and r.run_dir not in done), key=lambda r: (-r.score, r.cycle))
    protected |= {r.run_dir for r in resumable[:cfg.keep_top_k or len(resumable)]}
    latest: dict[str, RunRecord] = {}
    for r in history:                    # a run_dir judged twice: its last record speaks for it
        if r.run_dir:
            latest[r.run_dir] = r
    ok = sorted((r for r in latest.values() if r.ok), key=lambda r: (-r.score, r.cycle))
    rank = {r.run_dir: i for i, r in enumerate(ok, start=1)}
    k, days = cfg.keep_top_k, cfg.keep_failed_runs_days
    out = []
    for run_dir, r in latest.items():
        if run_dir in protected:
            continue
        folder = Path(run_dir).parent if Path(run_dir).name == "out" else Path(run_dir)
        if r.ok:
            out.append(ranked("run", folder.name, folder, rank[run_dir], r.score, k, "ok runs"))
        else:
            out.append(failed("run", folder.name, folder, now - _mtime(folder, now), days, "failed"))
    return out


def ranked(kind: str, name: str, folder: Path, rank: int, score: float, k: int | None, what: str) -> Candidate:
    """A passing entry or ok run: kept unless the cap needs it while in the top k; pruned now outside it."""
    top = k is None or rank <= k
    return Candidate(kind, name, folder, OVER_CAP_TOP if top else NOW, score,
                     f"top {k} by score" if top else f"outside the top {k} {what} by score")


def failed(kind: str, name: str, folder: Path, age: float, days: float | None, what: str) -> Candidate:
    """A failure: kept `days` for debugging (the cap may take it first), then pruned."""
    if days is None:                       # keep_failed_runs_days: null keeps failures for good
        return Candidate(kind, name, folder, OVER_CAP_FAILED, -age, f"{what}, kept (no age limit)")
    young = age < days * 86400
    return Candidate(kind, name, folder, OVER_CAP_FAILED if young else NOW, -age,
                     f"{what}, kept {days:g} days" if young else f"{what}, more than {days:g} days ago")


def _out(run_dir: str) -> Path:
    return Path(run_dir) / "out" if Path(run_dir).name != "out" else Path(run_dir)


def _mtime(path: Path, default: float) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return default


# ================================================================== sweep ====

def workspace_bytes(ws: Workspace) -> int:
    """Everything under the workspace, links not followed (apparent sizes)."""
    return folder_size_bytes(ws.root)


def sweep(ws: Workspace, cfg: RetentionConfig, active: list[ActiveRun] | None = None,
          now: float | None = None) -> SweepResult:
    """Prune what the rules let go, then, while over max_workspace_gb, what only the cap lets go."""
    now = time.time() if now is None else now
    paths = ModelPaths(ws.root)
    repaired = {}
    if paths.archive.is_dir():
        for marker in paths.archive.glob("*/PRUNED.json"):
            try:
                done = finish_interrupted(ws.root, marker.parent)
            except (UnsafePath, OSError):
                continue
            if done:
                repaired[marker.parent.name] = done
    size = workspace_bytes(ws)
    result = SweepResult(workspace_gb_before=round(size / GB, 9), workspace_gb_after=0.0,
                         max_workspace_gb=cfg.max_workspace_gb, repaired=repaired)
    cap = cfg.max_workspace_gb * GB if cfg.max_workspace_gb is not None else None
    candidates = sorted(plan_archive(paths, cfg, now) + plan_runs(ws, cfg, active or [], now),
                        key=lambda c: (c.tier, c.order, c.kind, c.name))
    for c in candidates:
        if c.tier != NOW and (cap is None or size <= cap):
            break
        freed = _prune(ws, paths, c, result)
        size -= freed
    result.workspace_gb_after = round(workspace_bytes(ws) / GB, 9)
    result.over_cap = cap is not None and result.workspace_gb_after * GB > cap
    return result


def _prune(ws: Workspace, paths: ModelPaths, c: Candidate, result: SweepResult) -> int:
    try:
        if c.kind == "run":
            files = present_files(ws.root, c.folder, list(RUN_WEIGHTS))
            freed = prune_run(ws.root, c.folder, files, c.reason) if files else 0
        else:
            files = present_files(ws.root, c.folder, list(ENTRY_WEIGHTS))
            recorded, _ = _recorded_hashes(read_regular_text(c.folder / HASHES, within=ws.root)) if files else ({}, 0)
            freed = prune_entry(ws.root, c.folder, files, recorded, c.reason) if files else 0
    except (UnsafePath, FileNotFoundError) as exc:
        result.refused.append(str(exc))
        return 0
    if not files:
        return 0
    result.pruned.append(PrunedItem(kind=c.kind, name=c.name, files=sorted(files), bytes=freed, reason=c.reason))
    result.bytes_freed += freed
    return freed - _size(c.folder / MARKER)          # the marker it left counts against the cap too


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
