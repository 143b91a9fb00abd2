"""The repeat gate: a `train` decision that would train what a finished or running run trained is
refused, naming that run (the rule: loop/journal/fingerprint.py `repeat_reason`), unless it is a
declared seed replica or a continuation. Also what a blocked daemon holds back (loop/cycle/failures.py)."""
from __future__ import annotations

import time

from loop.journal.fingerprint import Trained, fingerprint, recipe, repeat_reason
from loop.journal.history import RunRecord
from loop.run.supervise import ActiveRun


def trained_runs(history: list[RunRecord], active: list[ActiveRun] = ()) -> list[Trained]:
    """Every run that trained something (the runs index) or trains now (the runs in flight)."""
    out = []
    for r in history:
        fp = r.fingerprint or (fingerprint(r.config) if r.config else "")
        if not fp:
            continue                 # an old row with no config: nothing to compare
        out.append(Trained(label=r.label, fingerprint=fp, recipe=r.recipe or recipe(r.config),
                           state="ok" if r.ok else "failed",
                           resume_from=(r.config.get("run") or {}).get("resume_from") if r.config else None,
                           screen=r.ok and not r.full, failure=(r.failure or {}).get("category", "")))
    out += [Trained(label=a.label, fingerprint=a.fingerprint, recipe=a.recipe, state="running",
                    resume_from=a.resume_from) for a in active if a.fingerprint]
    return out


def repeat_refusal(config: dict, replica: bool, history: list[RunRecord], active: list[ActiveRun],
                   refused: list[str] = ()) -> str | None:
    """The gate's reason to refuse training `config` (resolved) as a repeat, or None."""
    why = repeat_reason(config, trained_runs(history, active), replica, frozenset(refused))
    return None if why is None else f"repeat: {why}"


def blocked_wait(next_try_at: float, signature_text: str, now: float | None = None) -> str | None:
    """While blocked, why no new run may start yet (None once the back-off has passed)."""
    now = time.time() if now is None else now
    if now >= next_try_at:
        return None
    when = time.strftime("%H:%M:%S", time.localtime(next_try_at))
    return f"blocked on {signature_text}: the next try waits until {when}"
