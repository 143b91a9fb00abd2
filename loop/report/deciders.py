"""Who decided a night's cycles, from the cycle events' decision sources: the offline policy, an LLM
(with the models the daemon started with), or a mix; finish-up's forced decisions and the waits
after a failed LLM call are counted apart, never credited to an LLM. The abstract, the setup, the
story and the dashboard's header say it in the same words."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from loop.report.data import CycleRecord, ReportData


class Deciders(BaseModel):
    """Cycles by who decided what they acted on (decision sources: llm | offline | offline-fallback |
    llm-failed | mentor | finish-up; a Mentor challenge applied is credited to the LLM or the offline
    policy that made it, not to the Builder whose decision it replaced)."""

    offline: int = 0                 # the offline policy, no LLM endpoint configured
    offline_fallback: int = 0        # the offline policy standing in for an LLM that could not decide
    llm: int = 0                     # the LLM Builder
    llm_failed: int = 0              # a wait logged after a failed LLM call: nobody decided
    mentor_llm: int = 0              # a Mentor challenge by the LLM Mentor replaced the decision
    mentor_offline: int = 0          # ... by the offline Mentor
    finish_up: int = 0               # forced by finish-up (its last training round, then finish)
    other: dict[str, int] = Field(default_factory=dict)     # a source this version does not know
    models: dict[str, list[str]] = Field(default_factory=dict)   # role -> the models the daemon started with

    @property
    def by_llm(self) -> int:
        return self.llm + self.mentor_llm

    @property
    def by_offline(self) -> int:
        return self.offline + self.offline_fallback + self.mentor_offline

    @property
    def who(self) -> Literal["none", "offline", "llm", "mix", "loop"]:
        """offline: the offline policy made every decision made; llm: an LLM did; mix: both did;
        loop: only finish-up or failed calls; none: no decision recorded."""
        if self.by_llm and self.by_offline:
            return "mix"
        if self.by_llm:
            return "llm"
        if self.by_offline:
            return "offline"
        return "loop" if self.finish_up or self.llm_failed or self.other else "none"

    def model_text(self, role: str) -> str:
        return ", ".join(self.models.get(role, [])) or "model not recorded"

    def parts(self) -> list[str]:
        """Each nonzero count, in words."""
        counts = [(self.llm, f"by the LLM Builder ({self.model_text('builder')})"),
                  (self.mentor_llm, f"by an LLM Mentor challenge ({self.model_text('mentor')})"),
                  (self.offline, "by the offline policy"),
                  (self.offline_fallback, "by the offline policy standing in for the LLM"),
                  (self.mentor_offline, "by an offline Mentor challenge"),
                  (self.finish_up, "forced by finish-up"),
                  (self.llm_failed, f"wait{'s' if self.llm_failed != 1 else ''} after a failed LLM call"),
                  *((n, f"from source {src!r}") for src, n in sorted(self.other.items()))]
        return [f"{n} {what}" for n, what in counts if n]

    def text(self) -> str:
        """'the offline policy, not an LLM (no LLM endpoint; 6 by the offline policy, 1 forced by
        finish-up)', 'an LLM (...)', 'a mix of an LLM and the offline policy (...)'."""
        detail = "; ".join(self.parts())
        who = self.who
        if who == "none":
            return "no decisions recorded yet"
        if who == "offline":
            why = "no LLM endpoint" if not (self.offline_fallback or self.llm_failed) else \
                "the configured LLM decided none of them"
            return f"the embedded offline policy, not an LLM ({why}; {detail})"
        if who == "llm":
            return f"an LLM ({detail})"
        if who == "mix":
            return f"a mix of an LLM and the offline policy ({detail})"
        return f"neither an LLM nor the offline policy ({detail})"


SOURCE_FIELDS = {"offline": "offline", "offline-fallback": "offline_fallback", "llm": "llm",
                 "llm-failed": "llm_failed", "finish-up": "finish_up"}


def deciders(data: ReportData) -> Deciders:
    """Who decided each cycle of `data`, with the models its daemon starts recorded."""
    starts = [e for e in data.events if e.get("kind") == "daemon_start"]
    mentor_was_llm = any(e.get("mentor") == "LLM" for e in starts)
    found = Deciders(models=recorded_models(starts))
    for c in data.cycles:
        source = c.decision.source if c.decision else ""
        if not source:
            continue
        # the record keeps the Builder's decision; a challenge applied is what the cycle acted on
        if source == "mentor" or (c.mentor is not None and c.mentor.challenge_applied):
            field = "mentor_llm" if mentor_by_llm(c, mentor_was_llm) else "mentor_offline"
        elif source in SOURCE_FIELDS:
            field = SOURCE_FIELDS[source]
        else:
            found.other[source] = found.other.get(source, 0) + 1
            continue
        setattr(found, field, getattr(found, field) + 1)
    return found


def mentor_by_llm(c: CycleRecord, mentor_was_llm: bool) -> bool:
    """Whether the LLM Mentor made this cycle's challenge (a record without the review's source:
    whether the daemon's Mentor was an LLM)."""
    source = c.mentor.source if c.mentor else ""
    return source == "llm" if source else mentor_was_llm


def recorded_models(starts: list[dict]) -> dict[str, list[str]]:
    """role -> the distinct models the daemon starts named (`llm_models`), in order."""
    models: dict[str, list[str]] = {}
    for event in starts:
        for role, model in (event.get("llm_models") or {}).items():
            if isinstance(model, str) and model not in models.setdefault(str(role), []):
                models[str(role)].append(model)
    return models
