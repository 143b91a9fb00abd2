"""Loading and saving the lifecycle store for the pipeline, with corrupt checkpoints logged."""
from __future__ import annotations

from loop.archive.checkpoints import CheckpointManager
from loop.archive.lifecycle import Lifecycle, LifecycleStore, TransitionContext, TransitionRefused
from loop.archive.lineage import log_event
from loop.archive.paths import ModelPaths


def load_store(paths: ModelPaths, trace_id: str = "") -> LifecycleStore:
    result = CheckpointManager(paths.lifecycle).restore()
    for skipped in result.skipped:
        log_event(paths.log, "LIFECYCLE_CHECKPOINT_CORRUPT", cycle_trace_id=trace_id,
                  restored_from=result.checkpoint_id, **skipped)
    return result.store


def save_store(paths: ModelPaths, store: LifecycleStore) -> int:
    return CheckpointManager(paths.lifecycle).save(store)


def move(store: LifecycleStore, name: str, dst: Lifecycle, paths: ModelPaths, trace_id: str = "",
         ctx: TransitionContext = TransitionContext()) -> bool:
    """Transition `name` if it is tracked and the move is valid; a refusal is logged, not raised."""
    if name not in store.index:
        return False
    try:
        store.transition(name, dst, ctx)
        return True
    except TransitionRefused as exc:
        log_event(paths.log, "LIFECYCLE_REFUSED", cycle_trace_id=trace_id, candidate=name, reason=str(exc))
        return False
