"""Step 7 and the switchover: the promotion proposal, a person's (or auto mode's) decision, and
the two-phase commit that moves GEN_HEAD:

    approve: verify -> shadow evaluation (parity with GEN_HEAD on replayed probe traffic)
             -> GRAFTING (alpha ramp under a strategy) -> atomic cutover of the GEN_HEAD symlink
             -> burn-in -> advanced, or rolled back by itself

The torch-free moves of GEN_HEAD (cutover, reject, rollback) live in headswitch.py.
"""
from __future__ import annotations

from pathlib import Path

import torch

from loop.archive import freeze as archive
from loop.archive.grafting import graft, select_strategy
from loop.archive.headswitch import cutover
from loop.archive.lifecycle import Lifecycle, TransitionContext
from loop.archive.lineage import log_event, mark_promoted, read_events
from loop.archive.paths import ModelPaths
from loop.archive.probes import LoadedModel
from loop.archive.store import load_store, move, save_store
from loop.config import DaemonConfig
from loop.domains import task_domain
from loop.errors import ArchiveTampered, LoopError

TRAFFIC_SPLITS = ("recall", "delta", "drift")


# The proposal record and its writer/reader live in proposal.py (torch-free); re-exported here.
from loop.archive.proposal import PromotionError, Proposal, ProposalHashes, propose, read_proposal  # noqa: E402,F401


def traffic(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Replayed probe traffic: logits and labels over the recall, delta and drift sets."""
    return (torch.cat([model.logits(s) for s in TRAFFIC_SPLITS]),
            torch.cat([model.labels(s) for s in TRAFFIC_SPLITS]))


# -------------------------------------------------------------- approve ----

def approve(cfg: DaemonConfig, workspace: Path, trace_id: str = "", say=print) -> dict:
    """Run the two-phase commit for the pending proposal. Returns the PROMOTED/ROLLBACK record."""
    paths = ModelPaths(Path(workspace))
    proposal = read_proposal(paths)
    if proposal is None:
        raise PromotionError(f"no pending proposal ({paths.proposal} does not exist)")
    name, old_head = proposal.proposed_head, paths.head_name()
    archive.require_intact(paths, name)
    if archive.sha256_file(paths.entry(name) / "model.safetensors") != proposal.hashes.model:
        raise ArchiveTampered(f"{name}: weights differ from the proposal's hash")
    if old_head:
        archive.require_intact(paths, old_head)
    store = load_store(paths, trace_id)
    evo = cfg.evolution
    if not move(store, name, Lifecycle.GRAFTING, paths, trace_id, TransitionContext(trained_ok=True)):
        raise PromotionError(f"{name} cannot enter GRAFTING from "
                             f"{store.get(name).name if name in store.index else 'untracked'}")
    log_event(paths.log, "APPROVED", cycle_trace_id=trace_id, candidate=name)

    # ---- phase 1: shadow + graft ----
    cand = LoadedModel(paths.entry(name), task_domain(cfg))     # the daemon's task, not the entry's claim
    cand_logits, labels = traffic(cand)
    cand_acc = float((cand_logits.argmax(1) == labels).float().mean())
    shadow = {"queries": len(labels), "candidate_accuracy": round(cand_acc, 6)}
    if old_head:
        head = LoadedModel(paths.entry(old_head), cand.domain)
        head_logits, _ = traffic(head)
        shadow["parity"] = round(float((head_logits.argmax(1) == cand_logits.argmax(1)).float().mean()), 6)
        shadow["head_accuracy"] = round(float((head_logits.argmax(1) == labels).float().mean()), 6)
        strategy, why = select_strategy(evo.graft.strategy, read_events(paths.log))
        result = graft(head_logits, cand_logits, labels, strategy, evo.graft.steps, evo.graft.drift_threshold,
                       evo.graft.tolerance)
        log_event(paths.log, "GRAFT", cycle_trace_id=trace_id, candidate=name, strategy=strategy, why=why,
                  ok=result.ok, reason=result.reason, alphas=result.alphas, accuracies=result.accuracies)
        say(f"shadow: parity {shadow['parity']:.3f}; graft ({strategy}): {result.reason}")
        if not result.ok:
            move(store, name, Lifecycle.ROLLED_BACK, paths, trace_id)
            save_store(paths, store)
            paths.proposal.unlink(missing_ok=True)
            return log_event(paths.log, "ROLLBACK", cycle_trace_id=trace_id, candidate=name, head=old_head,
                             reason=f"graft failed: {result.reason}", shadow=shadow)
    else:
        say("shadow and graft skipped: there is no GEN_HEAD yet")
    log_event(paths.log, "SHADOW", cycle_trace_id=trace_id, candidate=name, **shadow)

    # ---- phase 2: cutover + burn-in ----
    cutover(paths, name)
    move(store, name, Lifecycle.STABILIZATION, paths, trace_id)
    move(store, name, Lifecycle.EVALUATING, paths, trace_id)
    floor = evo.burn_in_min_accuracy if evo.burn_in_min_accuracy is not None else cand_acc - evo.graft.tolerance
    ok, detail = burn_in(paths, name, evo.burn_in_batches, floor, cand.domain)
    if not ok:
        cutover(paths, old_head)
        move(store, name, Lifecycle.ROLLED_BACK, paths, trace_id)
        save_store(paths, store)
        paths.proposal.unlink(missing_ok=True)
        log_event(paths.log, "BURN_IN_FAILED", cycle_trace_id=trace_id, candidate=name, detail=detail)
        say(f"burn-in failed ({detail}); GEN_HEAD rolled back to {old_head or 'none'}")
        return log_event(paths.log, "ROLLBACK", cycle_trace_id=trace_id, candidate=name, head=old_head,
                         **{"from": name, "to": old_head}, reason=f"burn-in failed: {detail}")
    move(store, name, Lifecycle.FINE_TUNING, paths, trace_id, TransitionContext(evaluation_passed=True))
    if old_head:
        move(store, old_head, Lifecycle.FOSSILIZED, paths, trace_id)
    mark_promoted(paths.lineage, name)
    save_store(paths, store)
    paths.proposal.unlink(missing_ok=True)
    say(f"GEN_HEAD advanced: {old_head or 'none'} -> {name} ({detail})")
    return log_event(paths.log, "PROMOTED", cycle_trace_id=trace_id, **{"from": old_head, "to": name},
                     shadow=shadow, burn_in=detail)


def burn_in(paths: ModelPaths, name: str, batches: int, floor: float, domain=None) -> tuple[bool, str]:
    """Serve `batches` slices of probe traffic from what GEN_HEAD now resolves to."""
    try:
        if paths.head_name() != name:
            return False, f"GEN_HEAD resolves to {paths.head_name()}, not {name}"
        archive.require_intact(paths, name)
        model = LoadedModel(paths.head.resolve(), domain)
        logits, labels = traffic(model)
    except (LoopError, OSError, RuntimeError, ValueError) as exc:
        return False, f"GEN_HEAD did not load: {exc}"
    chunks = torch.arange(len(labels)).chunk(batches)
    accs = [float((logits[c].argmax(1) == labels[c]).float().mean()) for c in chunks]
    overall = float((logits.argmax(1) == labels).float().mean())
    if overall < floor:
        return False, f"accuracy {overall:.3f} over {len(accs)} batches < floor {floor:.3f}"
    return True, f"{len(accs)} batches served, accuracy {overall:.3f} >= {floor:.3f} (worst batch {min(accs):.3f})"
