"""The one path a finished training takes to become a candidate, whether an evolution window
trained it or the daemon's Builder did (`take_candidates`, readable top to bottom):

    PROBE the fixed probe sets against GEN_HEAD -> GATES (the five, and the composite score) -> rank
    -> ARCHIVE every candidate, pass or fail, with its training log -> LINEAGE (the row, journaled
    with the freeze) -> LIFECYCLE (culled, or kept with its score) -> PROPOSAL of the best passing
    candidate that beats GEN_HEAD -> approval by itself when promotion_mode is auto

A window's candidates are ranked against each other and always end in a proposal decision; a
candidate handed in from outside a window (`source`, e.g. "builder") is tagged with its source
instead of a rank, and yields to a pending proposal that scores at least as well.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from loop.archive import freeze as archive
from loop.archive.gates import GateResult, check_gates
from loop.archive.lifecycle import Lifecycle, LifecycleStore, TransitionContext
from loop.archive.lineage import LineageRow, log_event
from loop.archive.paths import ModelPaths
from loop.archive.probes import LoadedModel, ProbeMetrics, run_probes
from loop.archive.promotion import Proposal, approve, propose, read_proposal
from loop.archive.store import move, save_store
from loop.candidates import cards
from loop.candidates.scheduler import CandidateSpec
from loop.config import DaemonConfig
from loop.domains import SpicaDomain
from loop.journal.metrics import RunMetrics, read_metrics


@dataclass
class Training:
    """A finished training handed to the path."""
    name: str                       # its archive entry name
    spec: CandidateSpec
    run_dir: Path                   # the trainer's --out folder (weights, metrics.json, train.log)
    run_cfg: dict                   # the trainer config it ran with
    returncode: int = 0
    log: Path | None = None         # its captured output (stdout.log, run.log): archived as train.log
    replay: list[str] = field(default_factory=list)
    work: Path | None = None        # a work folder to remove once the entry is frozen
    metrics: RunMetrics | None = None   # its metrics.json as the daemon's judge already read it


class CandidateOutcome(BaseModel):
    """One candidate after the path: where its entry is and how it was judged."""
    name: str
    spec: CandidateSpec
    returncode: int
    status: str
    gates: GateResult
    probes: ProbeMetrics | None = None
    archive_path: str


class PathResult(BaseModel):
    """What the path did with a batch of trainings: the ranking, the proposal, an auto approval."""
    head: str | None
    ranking: list[CandidateOutcome]
    proposal: Proposal | None = None
    auto_promotion: str | None = None     # approve()'s action when promotion_mode is auto


@dataclass
class GatedCandidate:
    """A training after PROBE and GATES: its metrics, its probes, the five gates' result, its status."""
    training: Training
    train: RunMetrics | None
    probes: ProbeMetrics | None
    gates: GateResult
    status: str


def take_candidates(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, trainings: list[Training],
                    head: str | None, trace_id: str = "", *, domain: SpicaDomain | None = None, source: str = "",
                    say: Callable[..., None] = print,
                    before_approve: Callable[[list[CandidateOutcome], Proposal | None], None] | None = None,
                    ) -> PathResult:
    """Take `trainings` (finished, pass or fail) through probe, gates, archive, lineage, lifecycle
    and proposal; `before_approve(ranking, proposal)` runs once the lifecycle store is saved."""
    for t in trainings:
        enter(store, t.name, paths, trace_id)
    head_model = LoadedModel(paths.head.resolve(), domain) if head else None
    head_probes = run_probes(head_model, None, cfg.evolution.rules) if head_model else None
    gated = sorted((gate_candidate(cfg, t, head_model, head_probes, domain) for t in trainings),
                    key=lambda j: j.gates.score, reverse=True)
    ranking = [archive_candidate(cfg, paths, store, j, rank, head, head_probes, trace_id, source, say)
               for rank, j in enumerate(gated, start=1)]
    if source:
        proposal = propose_lone(paths, store, ranking, head, head_probes, trace_id)
    else:
        proposal = propose(paths, store, ranking, head, head_probes, trace_id)
    save_store(paths, store)
    if before_approve is not None:
        before_approve(ranking, proposal)
    auto = None
    if proposal and cfg.promotion_mode == "auto":       # the two-phase commit without a person
        auto = approve(cfg, paths.workspace, trace_id, say)["action"]
    return PathResult(head=head, ranking=ranking, proposal=proposal, auto_promotion=auto)


def enter(store: LifecycleStore, name: str, paths: ModelPaths, trace_id: str) -> None:
    """A training the lifecycle store does not track yet (a daemon run) enters it as trained."""
    if name in store.index:
        return
    store.add(name)
    for state in (Lifecycle.GERMINATED, Lifecycle.TRAINING):
        move(store, name, state, paths, trace_id)


def gate_candidate(cfg: DaemonConfig, t: Training, head_model: LoadedModel | None,
                   head_probes: ProbeMetrics | None, domain: SpicaDomain | None) -> GatedCandidate:
    """PROBE and GATES: a run without metrics, or one that did not finish ok, gets no probes."""
    train = t.metrics or read_metrics(t.run_dir)
    ok = train is not None and train.status == "ok"
    probes = run_probes(LoadedModel(t.run_dir, domain), head_model, cfg.evolution.rules) if ok else None
    gates = check_gates(probes, head_probes, ok, cfg.epsilon, cfg.delta, cfg.theta)
    return GatedCandidate(t, train, probes, gates, cards.status_line(gates, train, t.returncode))


def archive_candidate(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, j: GatedCandidate, rank: int,
                      head: str | None, head_probes: ProbeMetrics | None, trace_id: str, source: str,
                      say: Callable[..., None]) -> CandidateOutcome:
    """ARCHIVE + LINEAGE + LIFECYCLE for one judged candidate, pass or fail."""
    t, gates, status = j.training, j.gates, j.status
    entry = archive.freeze_and_record(paths, t.name, t.run_dir, entry_texts(cfg, paths, j, rank, head, head_probes),
                                      LineageRow(name=t.name, gen_id=t.spec.gen_id, branch_id=t.spec.branch_id,
                                                 parent=t.spec.parent, seed=t.spec.seed, strategy=t.spec.strategy,
                                                 status=status, score=gates.score, archive_path="",
                                                 hashes_sha256="", cycle_trace_id=trace_id),
                                      log=t.log)
    tag = {"source": source} if source else {"rank": rank}
    log_event(paths.log, "ARCHIVED" if gates.passed else "REJECTED", cycle_trace_id=trace_id, candidate=t.name,
              **tag, score=gates.score, status=status, failed_gates=gates.failed)
    if not gates.passed:
        move(store, t.name, Lifecycle.CULLED, paths, trace_id, TransitionContext(score=gates.score))
    else:
        store.score[store.row(t.name)] = gates.score
    if t.work is not None:
        shutil.rmtree(t.work, ignore_errors=True)
    say(f"  {rank}. {t.name}: {status} (score {gates.score:.4f})")
    return CandidateOutcome(name=t.name, spec=t.spec, returncode=t.returncode, status=status, gates=gates,
                            probes=j.probes, archive_path=str(entry.path))


def entry_texts(cfg: DaemonConfig, paths: ModelPaths, j: GatedCandidate, rank: int, head: str | None,
                head_probes: ProbeMetrics | None) -> dict[str, str]:
    """The written files of the candidate's entry (freeze.WRITTEN)."""
    t = j.training
    return {
        "evo_manifest.json": json.dumps(cards.manifest(t.spec, t.name, t.run_cfg, paths, head, t.spec.grandparent,
                                                       t.replay, cfg), indent=2) + "\n",
        "metrics.json": json.dumps(cards.archive_metrics(t.spec, j.train, j.probes, j.gates, j.status, rank),
                                   indent=2) + "\n",
        "EVAL.md": cards.eval_md(t.name, j.probes, head_probes, j.gates, j.status, cfg.epsilon, cfg.delta,
                                 cfg.theta),
        "MODEL_CARD.md": cards.model_card(t.name, t.spec, j.train, j.probes, j.status, t.run_cfg),
        "STATUS.txt": j.status + "\n",
    }


def propose_lone(paths: ModelPaths, store: LifecycleStore, ranking: list[CandidateOutcome], head: str | None,
                 head_probes: ProbeMetrics | None, trace_id: str) -> Proposal | None:
    """PROPOSAL for candidates from outside a window: none passed -> nothing to decide; a pending
    proposal that scores at least as well keeps its place; otherwise the usual proposal."""
    best = next((o for o in ranking if o.gates.passed), None)
    if best is None:
        return None
    pending = read_proposal(paths)
    if pending is not None and pending.score >= best.gates.score:
        move(store, best.name, Lifecycle.CULLED, paths, trace_id)
        log_event(paths.log, "NO_PROMOTION", cycle_trace_id=trace_id, candidate=best.name,
                  reason=f"pending proposal {pending.proposed_head} scores higher")
        return None
    return propose(paths, store, ranking, head, head_probes, trace_id)
