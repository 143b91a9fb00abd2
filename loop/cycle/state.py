"""state.json and the heartbeat: the daemon's memory between cycles (written atomically)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Union

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from loop.agents.usage import Usage
from loop.candidates.records import Handoff, WindowEntry
from loop.cycle.failures import Blocked, FailureStreak
from loop.run.judge import RunOutcome
from loop.run.supervise import ActiveRun
from loop.util.fsutil import atomic_write_text


class WindowNote(BaseModel):
    """The last evolution window, as the Builder's next prompt shows it."""

    evolution_window: WindowEntry


def _promotion_kind(value) -> str:
    held = value if isinstance(value, dict) else vars(value) if isinstance(value, BaseModel) else {}
    return "window" if "evolution_window" in held else "run"


# what the candidate path did last: a run's hand-off, or an evolution window (one key tells them apart)
LastPromotion = Annotated[Union[Annotated[Handoff, Tag("run")], Annotated[WindowNote, Tag("window")]],
                          Discriminator(_promotion_kind)]


class LoopState(BaseModel):
    cycle: int = 0                              # the last cycle that completed
    started_at: float = Field(default_factory=time.time)
    active_runs: list[ActiveRun] = Field(default_factory=list)   # in flight, oldest first (max_concurrent_runs)
    last_decision: dict | None = None
    last_outcome: RunOutcome | None = None     # the last run judged
    last_promotion: LastPromotion | None = None  # the candidate path's last result, shown to the Builder next cycle
    recent_actions: list[str] = Field(default_factory=list)   # last 20 actions
    idle_streak: int = 0                        # consecutive cycles without a run
    failure_streak: int = 0
    failures: FailureStreak = Field(default_factory=FailureStreak)   # identical failures in a row
    blocked: Blocked | None = None              # blocked on a failure signature (loop/cycle/failures.py)
    last_mentor_cycle: int = 0
    window_pending: bool = False                # an evolution window waits for the active run to end
    cycle_seconds: list[float] = Field(default_factory=list)        # recent cycle durations (timer)
    phase_done: list[str] = Field(default_factory=list)             # PHASE windows already run
    fitness_baselines: dict[str, float] = Field(default_factory=dict)   # from PHASE, per domain
    flagged_variants: list[str] = Field(default_factory=list)       # underperformers PHASE flagged
    phase_recommendations: dict[str, list] = Field(default_factory=dict)  # search-space hints
    # LLM spend per role over the workspace's life (every request, failed ones included)
    tokens: dict[str, Usage] = Field(default_factory=lambda: {"builder": Usage(), "mentor": Usage()})
    # The Builder's decisions refused by the quality gate in a row; past the limit the offline
    # policy plays the Builder until `llm_offline_until_cycle`
    llm_gate_refusals: int = 0
    llm_offline_until_cycle: int = 0
    stop_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_active_run(cls, data):
        """A state.json from before several runs could be in flight names one `active_run`."""
        if isinstance(data, dict) and "active_run" in data:
            data = dict(data)
            run = data.pop("active_run")
            data.setdefault("active_runs", [run] if run else [])
        return data

    @property
    def active_run(self) -> ActiveRun | None:
        """The oldest run in flight (the only one with max_concurrent_runs: 1)."""
        return self.active_runs[0] if self.active_runs else None

    def drop_run(self, run: ActiveRun) -> None:
        self.active_runs = [r for r in self.active_runs if r.run_tag != run.run_tag]

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            return cls()

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")

    def promotion_note(self) -> str:
        """The last promotion as the Builder's prompt shows it (JSON; unset fields left out)."""
        return json.dumps(self.last_promotion.model_dump(mode="json")) if self.last_promotion else ""

    def note_action(self, action: str) -> None:
        self.recent_actions = (self.recent_actions + [action])[-20:]


def write_heartbeat(path: Path, cycle: int, trace_id: str, pid: int, active: str | None) -> None:
    atomic_write_text(path, json.dumps({"cycle": cycle, "cycle_trace_id": trace_id, "pid": pid,
                                        "ts": time.time(), "active_run": active}) + "\n")
