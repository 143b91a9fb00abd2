"""Moving GEN_HEAD without a model in memory: the atomic cutover of its symlink, a person's reject
of a pending proposal, and rollback to an earlier promoted generation. Torch-free, so `llmloop
rollback` answers in well under a second; approve (shadow, graft, burn-in) is in promotion.py."""
from __future__ import annotations

import os
from pathlib import Path

from loop.archive import freeze as archive
from loop.archive.lifecycle import Lifecycle
from loop.archive.lineage import log_event, mark_promoted, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.proposal import PromotionError, read_proposal
from loop.archive.store import load_store, move, save_store
from loop.util.faults import fault_point

# -------------------------------------------------------------- cutover ----

def cutover(paths: ModelPaths, target: str | None) -> None:
    """Point GEN_HEAD at archive/<target> atomically: a new link is made beside it and renamed over
    it, so there is never a moment without a HEAD. target None removes HEAD (undoing a first promotion).
    A target that fails verification raises ArchiveTampered before anything changes."""
    if target is not None:
        archive.require_intact(paths, target)
    tmp = paths.next_head
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if target is None:
        paths.head.unlink(missing_ok=True)
        return
    os.symlink(Path("archive") / target, tmp)
    fault_point("cutover:after_new_link")
    os.replace(tmp, paths.head)
    fault_point("cutover:after_rename")
    dir_fd = os.open(paths.root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------ reject, rollback ----

def reject(workspace: Path, note: str = "", trace_id: str = "") -> dict:
    paths = ModelPaths(Path(workspace))
    proposal = read_proposal(paths)
    if proposal is None:
        raise PromotionError(f"no pending proposal ({paths.proposal} does not exist)")
    store = load_store(paths, trace_id)
    move(store, proposal.proposed_head, Lifecycle.CANCELLED, paths, trace_id)
    save_store(paths, store)
    paths.proposal.unlink()
    return log_event(paths.log, "REJECTED_BY_PERSON", cycle_trace_id=trace_id,
                     candidate=proposal.proposed_head, note=note)


def previous_generation(paths: ModelPaths) -> str | None:
    """The promoted generation before the current HEAD, in promotion order."""
    promoted = sorted((r for r in read_lineage(paths.lineage) if r.promoted), key=lambda r: (r.promoted_at, r.gen_id))
    names = [r.name for r in promoted]
    head = paths.head_name()
    if head not in names:
        return names[-1] if names else None
    i = names.index(head)
    return names[i - 1] if i > 0 else None


def rollback(workspace: Path, to: str | None = None, reason: str = "manual rollback", trace_id: str = "") -> dict:
    """GEN_HEAD back to the previous promoted generation, or to the named archive entry."""
    paths = ModelPaths(Path(workspace))
    head = paths.head_name()
    target = to or previous_generation(paths)
    if target is None:
        raise PromotionError("no earlier promoted generation to roll back to")
    if target == head:
        raise PromotionError(f"GEN_HEAD is already {target}")
    row = next((r for r in read_lineage(paths.lineage) if r.name == target), None)
    if row is None:
        raise PromotionError(f"{target}: no such archive entry")
    if not row.status.startswith("PASS"):
        raise PromotionError(f"{target}: its status is {row.status!r}; only a passing generation can be HEAD")
    archive.require_intact(paths, target)
    cutover(paths, target)
    store = load_store(paths, trace_id)
    if head:
        move(store, head, Lifecycle.ROLLED_BACK, paths, trace_id)
    mark_promoted(paths.lineage, target)
    save_store(paths, store)
    return log_event(paths.log, "ROLLBACK", cycle_trace_id=trace_id, **{"from": head, "to": target}, reason=reason)
