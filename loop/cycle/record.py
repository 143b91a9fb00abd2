"""The cycle's record: what one cycle decided, what the gate said, what ran and what became of it.

The cycle fills one `CycleRecord` as it goes (decide -> gate -> run -> judge -> record) and writes
it as the `cycle` event in events.jsonl; status, the reports and the tests read events back through
the same model (`CycleRecord.from_event`), so a renamed field fails loudly instead of reading as
missing. Fields that a cycle did not reach stay None and are left out of the event.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loop.agents.schema import Decision
from loop.agents.usage import Usage
from loop.candidates.records import Handoff, WindowEntry
from loop.cycle.failures import Blocked
from loop.cycle.finishup import FinishUpStep
from loop.run.judge import RunOutcome
from loop.run.supervise import MonitorStatus
from loop.verdict.noise import Verdict


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- decide ----

class DecisionEntry(Decision):
    """The decision acted on, with where it came from: llm | offline | offline-fallback | llm-failed |
    mentor | finish-up."""

    model_config = ConfigDict(extra="forbid")
    source: str


class LLMCall(_Entry):
    attempts: int
    repaired: bool
    mode: str              # the structured-output mode that answered
    seconds: float = 0.0


class MentorEntry(_Entry):
    why: str
    name: str
    web_search: str
    source: str = ""       # llm | offline | offline-fallback | llm-failed
    error: str | None = None
    verdict: Literal["on_track", "off_track"] | None = None
    critical_question: str | None = None
    challenge: dict | None = None
    challenge_applied: bool | None = None
    overruled: str | None = None         # why the loop changed the review's verdict
    todo_added: list[str] | None = None


class FinishUpEntry(_Entry):
    step: FinishUpStep
    deadline: str
    minutes_left: float
    reports: dict[str, str] | None = None   # old events only: the daemon now records them in `final_reports`


# ---- gate ----

class GateEntry(_Entry):
    ok: bool
    reasons: list[str] = Field(default_factory=list)
    housekeeping: dict = Field(default_factory=dict)    # counts of the decision's housekeeping fields


class PolicyEntry(_Entry):
    allowed: bool
    reasons: list[str] = Field(default_factory=list)


# ---- run, judge ----

class RunStart(_Entry):
    label: str
    pid: int
    kind: str
    log_path: str
    # what the monitor window ended with; "started" when several runs are in flight and this one is
    # followed from the next cycle on (max_concurrent_runs > 1: no window in the cycle that starts it)
    monitor: MonitorStatus | Literal["started"]
    sandbox: str
    device: str = ""       # the device slot it trains on (cuda:N, cpu)
    executor: str = "local"


class RepairEntry(_Entry):
    applied: bool
    actions: list = Field(default_factory=list)
    reason: str | None = None


class KeepEntry(_Entry):
    """A finished training run judged against the best (loop/verdict/keeps.py)."""

    label: str
    verdict: Verdict
    score: float
    fidelity: float
    margin: float | None = None
    band: float | None = None
    test: str = ""

    def text(self) -> str:
        what = {"first": "first best", "gain": "NEW BEST", "tie": "tie with the best (inside the noise)",
                "below": "below the best", "replica": "seed replica of the best",
                "screen": f"screen at fidelity {self.fidelity:.2f}", "failed": "failed"}[self.verdict]
        if "walltime cap" in self.test:
            what += " (stopped at its walltime cap; continuable)"
        extra = f" {self.margin:+.4f} vs band {self.band:.4f}" if self.margin is not None and self.band else ""
        return f"`{self.label}` {what}{extra}"


class HousekeepingEntry(_Entry):
    todo_added: list[str] = Field(default_factory=list)
    todo_refused: list[str] = Field(default_factory=list)
    todo_resolved: list[str] = Field(default_factory=list)


class CycleRecord(BaseModel):
    """One cycle, in the order the cycle fills it."""

    model_config = ConfigDict(extra="forbid")

    cycle: int
    trace: str
    seconds: float | None = None
    finish_up: FinishUpEntry | None = None
    followed_run: RunOutcome | None = None          # a run from an earlier cycle, followed (the first)
    followed_runs: list[RunOutcome] = Field(default_factory=list)   # every run followed this cycle
    data_report: str | None = None                  # built|reused <fingerprint>, or failed: <reason>
    # ---- decide ----
    decision: DecisionEntry | None = None
    prompt_tokens_estimate: int | None = None
    llm: LLMCall | None = None
    llm_error: str | None = None
    llm_circuit_open_s: float | None = None
    llm_fallback: str | None = None                 # why the offline policy decided instead of the LLM
    llm_gate_fallback: str | None = None            # the gate refused the LLM's decisions N times in a row
    tokens_builder: Usage | None = None             # this cycle's requests, failed ones included
    tokens_mentor: Usage | None = None
    tokens_total: dict[str, Usage] = Field(default_factory=dict)   # per role, over the workspace's life
    # ---- review ----
    mentor: MentorEntry | None = None
    stuck_wait_recovery: str | None = None
    # ---- gate ----
    quality_gate: GateEntry | None = None
    policy: PolicyEntry | None = None
    # ---- run, judge ----
    run: RunStart | None = None
    run_outcome: RunOutcome | None = None
    auto_repair: RepairEntry | None = None
    run_outcome_retry: RunOutcome | None = None
    keeps: list[KeepEntry] = Field(default_factory=list)   # finished training runs judged against the best
    blocked: Blocked | None = None                  # blocked on a failure signature after this cycle's runs
    # ---- candidates ----
    promotion: Handoff | None = None                # the candidate path's result for this run
    evolution: WindowEntry | None = None            # an evolution window that ran in this cycle
    # ---- record ----
    housekeeping: HousekeepingEntry | None = None

    def event_fields(self) -> dict:
        """The `cycle` event's fields: every field the cycle reached (None ones left out)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None and v != {}}

    @classmethod
    def from_event(cls, event: dict) -> "CycleRecord":
        """A `cycle` event read back (its ts / kind / cycle_trace_id envelope dropped)."""
        return cls.model_validate({k: v for k, v in event.items() if k not in ("ts", "kind", "cycle_trace_id")})
