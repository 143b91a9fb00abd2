"""What each prompt sees (the seed's "Context ingestion behavior"), bounded however long the run:

  - tails (not heads) of workpad.md and mentor_notes.md
  - the shared TODO as a focus summary: oldest + newest unresolved, deduplicated; the unresolved
    count from the whole file
  - storyline.md only when failure/stall signals are high
  - recent log tails only when the latest completed run failed
  - priority signals: research_priority, non_training_priority, breakout_priority, TODO pressure
  - the finish-up deadline when one is set
  - a compact leaderboard and the last outcome (with its promotion-pipeline result)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loop.agents.ladder import ladder_text
from loop.agents.offline import best_run, stagnating
from loop.agents.space import TaskProfile, space_text
from loop.journal.history import RunRecord
from loop.journal.notes import tail_text, todo_summary
from loop.util.workspace import Workspace
from loop.verdict.keeps import interval_text, noise_text, ranked

WORKPAD_TAIL_CHARS = 1500
MENTOR_TAIL_CHARS = 1000
STORYLINE_TAIL_CHARS = 1200
LOG_TAIL_CHARS = 1500
LEADERBOARD_ROWS = 5


@dataclass
class Signals:
    research_priority: float
    non_training_priority: float
    breakout_priority: float
    todo_pressure: float
    failure_or_stall: bool

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Context:
    cycle: int
    sections: dict[str, str] = field(default_factory=dict)
    signals: Signals | None = None
    open_todos: list[str] = field(default_factory=list)
    open_todo_count: int = 0

    def render(self) -> str:
        parts = [f"# Cycle {self.cycle}"]
        for title, body in self.sections.items():
            if body:
                parts.append(f"## {title}\n{body}")
        return "\n\n".join(parts)


def compute_signals(history: list[RunRecord], recent_actions: list[str], open_todos: int,
                    last_failed: bool, stagnation_runs: int = 4) -> Signals:
    """Guidance, not orders: each in [0, 1]."""
    best = best_run(history)
    since_best = len(history) - 1 - history.index(best) if best else len(history)
    stalled = stagnating(history, stagnation_runs)
    window = recent_actions[-10:]
    training_share = sum(a == "train" for a in window) / len(window) if window else 0.0
    research_recent = any(a == "research" for a in window)
    return Signals(
        research_priority=min(1.0, (0.6 if stalled else 0.1) + (0.0 if research_recent else 0.2)),
        non_training_priority=training_share * (0.8 if stalled else 0.3),
        breakout_priority=min(1.0, since_best / max(1, stagnation_runs)),
        todo_pressure=min(1.0, open_todos / 15),
        failure_or_stall=last_failed or stalled,
    )


def leaderboard_text(history: list[RunRecord], rows: int = LEADERBOARD_ROWS) -> str:
    """Full-fidelity runs ranked with their intervals and verdicts; the best screens apart."""
    full, low = ranked(history)
    if not full and not low:
        return "no finished runs yet"
    lines = [leader_line(r) for r in full[:rows]]
    lines += [leader_line(r) + " [screen: low fidelity, not ranked]" for r in low[:max(1, rows // 2)]]
    return "\n".join(lines)


def leader_line(r: RunRecord) -> str:
    cfg = r.config
    return (f"- {r.label}: val_acc {interval_text(r)} fidelity {r.fidelity:.2f} verdict {r.verdict or '-'} "
            f"(model {cfg.get('model', {}).get('name')}, {cfg.get('data', {}).get('image_size')}px, "
            f"epochs {cfg.get('run', {}).get('epochs')}, dimension {r.dimension})")


def build_context(ws: Workspace, cycle: int, history: list[RunRecord], recent_actions: list[str],
                  last_outcome: dict | None, active_run: str | None, promotion_note: str = "",
                  extra: dict[str, str] | None = None, finish_up: str = "", search_text: str = "") -> Context:
    """The Builder's (and Mentor's) context; `finish_up` is the deadline text once finish-up is
    active (the cycle owns finish-up and passes it in); `search_text` the task's search space and the
    fidelity ladder (`search_context`)."""
    open_count, todo_lines = todo_summary(ws.todo)
    last_failed = bool(last_outcome) and last_outcome.get("status") not in (None, "ok")
    signals = compute_signals(history, recent_actions, open_count, last_failed)
    ctx = Context(cycle=cycle, signals=signals, open_todos=todo_lines, open_todo_count=open_count)
    s = ctx.sections
    s["Finish-up"] = finish_up
    s["Priority signals"] = json.dumps(signals.as_dict())
    s["Leaderboard (top 5)"] = leaderboard_text(history)
    s["Noise band"] = noise_text(history)
    s["Search space and fidelity ladder"] = search_text
    if last_outcome:
        s["Last outcome"] = json.dumps({k: last_outcome.get(k) for k in
                                        ("label", "status", "val_accuracy", "exit_code", "auto_repair", "error")
                                        if last_outcome.get(k) is not None})
    s["Promotion pipeline"] = promotion_note
    s["Active run"] = active_run or "none"
    s[f"Shared TODO ({open_count} open)"] = "\n".join(todo_lines)
    s["Workpad (tail)"] = tail_text(ws.workpad, WORKPAD_TAIL_CHARS)
    s["Mentor notes (tail)"] = tail_text(ws.mentor_notes, MENTOR_TAIL_CHARS)
    if signals.failure_or_stall:
        s["Storyline (tail, shown on failure/stall)"] = tail_text(ws.storyline, STORYLINE_TAIL_CHARS)
    if last_failed and last_outcome.get("log_path"):
        s["Failed run log (tail)"] = tail_text(Path(last_outcome["log_path"]), LOG_TAIL_CHARS)
    for title, body in (extra or {}).items():
        s[title] = body
    return ctx




def search_context(profile: TaskProfile | None, hint: dict, base_config: dict, history: list[RunRecord]) -> str:
    """The search space the offline policy uses for this task and the fidelity ladder, so an LLM
    Builder shares both."""
    return space_text(profile, hint) + "\n" + ladder_text(base_config, history)
