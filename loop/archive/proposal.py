"""The promotion proposal (PROMOTION_PROPOSAL.json): which archived candidate should become GEN_HEAD,
with its score, gates and hashes. Torch-free, so status and `promote --show` stay fast; the
switchover itself (shadow, graft, cutover, burn-in, rollback) is promotion.py."""
from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from loop.archive import freeze as archive
from loop.archive.gates import ProbeMetrics, head_score
from loop.archive.lifecycle import Lifecycle, LifecycleStore
from loop.archive.lineage import log_event
from loop.archive.paths import ModelPaths
from loop.archive.store import move
from loop.config import describe_validation_error
from loop.errors import ExitCode, LoopError
from loop.util.fsutil import atomic_write_text


class PromotionError(LoopError):
    exit_code = ExitCode.PROMOTION


# ------------------------------------------------------------- proposal ----

class ProposalHashes(BaseModel):
    """The sha256 of the proposed entry's weights, manifest and hashes.csv when it was proposed:
    approve() refuses weights that differ from them."""
    model_config = ConfigDict(extra="forbid")

    model: str
    manifest: str
    hashes_csv: str


class Proposal(BaseModel):
    """A pending promotion: PROMOTION_PROPOSAL.json is its serialised form (one per workspace,
    removed once a person, or auto mode, decides it)."""
    model_config = ConfigDict(extra="forbid")

    action: Literal["PROMOTE"] = "PROMOTE"
    current_head: str | None                # GEN_HEAD when proposed; None for the first generation
    proposed_head: str                      # the archive entry that would become GEN_HEAD
    reason: str
    improvement: float                      # score - head_score (head_score 0 without a HEAD)
    score: float                            # the candidate's composite score
    head_score: float | None
    metrics: ProbeMetrics | None
    gates: dict[str, bool]
    hashes: ProposalHashes
    timestamp: str
    cycle_trace_id: str = ""


def propose(paths: ModelPaths, store: LifecycleStore, ranking: list, head: str | None,
            head_probes: ProbeMetrics | None, trace_id: str = "") -> Proposal | None:
    """Write PROMOTION_PROPOSAL.json for the best passing candidate that beats GEN_HEAD's score."""
    best = next((o for o in ranking if o.gates.passed), None)
    baseline = head_score(head_probes)
    losers = [o.name for o in ranking if o.gates.passed and (best is None or o.name != best.name)]
    if best is None or (baseline is not None and best.gates.score - baseline <= 0):
        why = "no candidate passed the gates" if best is None else \
            f"best candidate {best.name} does not beat HEAD ({best.gates.score:.4f} <= {baseline:.4f})"
        log_event(paths.log, "NO_PROMOTION", cycle_trace_id=trace_id, reason=why, head=head)
        for name in losers + ([best.name] if best else []):
            move(store, name, Lifecycle.CULLED, paths, trace_id)
        return None
    archive.require_intact(paths, best.name)     # never propose an entry that no longer matches its hashes
    for name in losers:
        move(store, name, Lifecycle.CULLED, paths, trace_id)
    previous = read_proposal(paths)
    if previous is not None:     # a newer window supersedes a proposal nobody decided on
        move(store, previous.proposed_head, Lifecycle.CANCELLED, paths, trace_id)
        log_event(paths.log, "SUPERSEDED", cycle_trace_id=trace_id, candidate=previous.proposed_head,
                  by=best.name)
    entry = paths.entry(best.name)
    proposal = Proposal(
        current_head=head, proposed_head=best.name,
        reason="best candidate passed all gates and beats HEAD" if head else
               "first generation: best candidate passed all gates",
        improvement=round(best.gates.score - (baseline or 0.0), 6), score=best.gates.score,
        head_score=baseline, metrics=best.probes, gates=best.gates.gates,
        hashes=ProposalHashes(model=archive.sha256_file(entry / "model.safetensors"),
                              manifest=archive.sha256_file(entry / "evo_manifest.json"),
                              hashes_csv=archive.sha256_file(entry / archive.HASHES)),
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cycle_trace_id=trace_id,
    )
    # ensure_ascii: byte for byte what json.dumps wrote before the record existed
    atomic_write_text(paths.proposal, proposal.model_dump_json(indent=2, ensure_ascii=True) + "\n")
    log_event(paths.log, "PROPOSED", cycle_trace_id=trace_id, candidate=best.name, improvement=proposal.improvement)
    return proposal


def read_proposal(paths: ModelPaths) -> Proposal | None:
    """The pending proposal; None when there is none. A file that does not validate (hand-edited,
    or from another version) is a PromotionError naming the file and every bad field."""
    try:
        text = paths.proposal.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Proposal.model_validate_json(text)
    except ValidationError as exc:
        raise PromotionError(describe_validation_error(str(paths.proposal), exc)) from None
