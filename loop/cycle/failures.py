"""Failures in a row, and the blocked state: the same failure signature `max_identical_failures`
times in a row and the daemon stops proposing what failed, says it is blocked (status, watch, the
dashboard, the notes, one `blocked` event) and tries something else, no more often than every
`blocked_retry_minutes` (doubling per further identical failure) while the signature repeats.
Any successful run, or `llmloop unblock`, clears it (one `unblocked` event)."""
from __future__ import annotations

import time

from pydantic import BaseModel, Field

from loop.run.failure import FailureSignature

MAX_RETRY_MINUTES = 240.0         # the back-off between tries while blocked stops doubling here


class FailureStreak(BaseModel):
    """The failed runs in a row that share one signature (the latest streak)."""

    signature: FailureSignature | None = None
    count: int = 0
    labels: list[str] = Field(default_factory=list)
    fingerprints: list[str] = Field(default_factory=list)   # what they trained (train runs)


class Blocked(BaseModel):
    """The daemon is blocked on one failure signature."""

    signature: FailureSignature
    count: int                       # identical failures in a row so far
    since_cycle: int
    since: float = Field(default_factory=time.time)
    labels: list[str] = Field(default_factory=list)
    fingerprints: list[str] = Field(default_factory=list)   # never proposed again while blocked
    next_try_at: float = 0.0         # no new run before this (epoch seconds)

    def text(self) -> str:
        return (f"BLOCKED since cycle {self.since_cycle}: {self.count} runs in a row failed with "
                f"{self.signature.text()} ({self.signature.category}); last: {', '.join(self.labels[-3:])}")


def extend(streak: FailureStreak, label: str, signature: FailureSignature | None, fingerprint: str) -> FailureStreak:
    """The streak after one more run ended: a success (no signature) ends it; another signature
    starts a new one."""
    if signature is None:
        return FailureStreak()
    same = streak.signature is not None and streak.signature.key == signature.key
    base = streak if same else FailureStreak(signature=signature)
    return base.model_copy(update={"count": base.count + 1, "labels": (base.labels + [label])[-10:],
                                   "fingerprints": base.fingerprints + ([fingerprint] if fingerprint else [])})


def blocked_after(streak: FailureStreak, blocked: Blocked | None, limit: int, cycle: int, retry_minutes: float,
                  now: float | None = None) -> Blocked | None:
    """The blocked state after the streak grew: set at `limit` identical failures in a row, kept
    (its back-off doubled) while the same signature repeats; None once a run succeeds or fails
    another way (the daemon has moved on; a new signature blocks on its own count)."""
    now = time.time() if now is None else now
    if streak.signature is None:
        return None
    if blocked is None or blocked.signature.key != streak.signature.key:
        if streak.count < limit:
            return None
        blocked = Blocked(signature=streak.signature, count=streak.count, since_cycle=cycle, since=now)
    extra = max(0, streak.count - limit)
    wait = min(MAX_RETRY_MINUTES, retry_minutes * 2 ** extra) * 60
    return blocked.model_copy(update={"count": streak.count, "labels": list(streak.labels),
                                      "fingerprints": sorted(set(blocked.fingerprints) | set(streak.fingerprints)),
                                      "next_try_at": now + wait})


def unblock(state, events, reason: str, trace: str = "") -> str:
    """Clear a blocked state (`state` a LoopState) and its streak; one `unblocked` event. Returns
    what was cleared, for the operator."""
    blocked = state.blocked
    if blocked is None:
        return "not blocked"
    state.blocked, state.failures = None, FailureStreak()
    events.append("unblocked", trace, signature=blocked.signature.key, reason=reason)
    return f"unblocked: {blocked.signature.text()} ({reason})"
