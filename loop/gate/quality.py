"""The quality gate: the seed README's "Lightweight Quality Gate" checklist on a Decision.

`quality_gate` only reports; the caller turns a failing cycle into `downgrade(...)`, a `wait` that
keeps the housekeeping.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, Field

from loop.agents.prompts import DECISION_CONTRACT
from loop.agents.schema import Decision, wait_decision

MIN_RATIONALE_CHARS = 20
MIN_RATIONALE_WORDS = 4
MIN_RUN_LABEL_CHARS = 3
FILLER_RATIONALES = frozenset({
    "continue", "try again", "n/a", "na", "none", "tbd", "todo", "ok", "okay", "wait", "nothing",
    "no reason", "because", "keep going", "same as before", "see above", "idk", "as above"})
GENERIC_RUN_LABELS = frozenset({
    "run", "test", "experiment", "job", "tmp", "temp", "train", "untitled", "wait", "command", "cmd",
    "exp", "label", "default", "none", "null", "new", "foo", "bar"})
# `cd <path>` (or PowerShell's Set-Location) then `&&` or `;`: the command says where it runs.
_REPO_CONTEXT = re.compile(
    r"""^\s*(?:cd|(?i:set-location))\s+(?:"[^"]+"|'[^']+'|[^\s;&|'"]+)\s*(?:&&|;)""")


class QualityResult(BaseModel):
    """What the gate found. `housekeeping` is telemetry only: it never blocks a cycle."""

    ok: bool
    reasons: list[str] = Field(default_factory=list)
    housekeeping: dict[str, int | bool] = Field(default_factory=dict)


def quality_gate(decision: Decision) -> QualityResult:
    """The seed's checklist. `train` needs no label: the loop makes one."""
    reasons = rationale_reasons(decision.rationale)
    if decision.action == "run_command":
        reasons += command_context_reasons(decision.command)
        reasons += run_label_reasons(decision.run_label)
    return QualityResult(ok=not reasons, reasons=reasons, housekeeping=housekeeping(decision))


def rationale_reasons(rationale: str) -> list[str]:
    text = " ".join(rationale.split())
    words = text.split()
    if text.lower().rstrip(".") == DECISION_CONTRACT["rationale"].lower():   # seen from a 270M base model
        return [f"rationale copies the prompt's contract text instead of giving a reason: {text!r}"]
    if re.sub(r"[^\w/ ]+", "", text.lower()).strip() in FILLER_RATIONALES:   # "Continue." is "continue"
        return [f"rationale is generic filler: {text!r}"]
    if len(text) < MIN_RATIONALE_CHARS or len(words) < MIN_RATIONALE_WORDS:
        return [f"rationale is too short (need {MIN_RATIONALE_CHARS}+ characters and "
                f"{MIN_RATIONALE_WORDS}+ words): {text!r}"]
    if len({w.lower() for w in words}) < 3:   # "continue continue continue continue"
        return [f"rationale repeats itself: {text!r}"]
    return []


def run_label_reasons(label: str) -> list[str]:
    text = label.strip()
    if not text:
        return ["run_label is empty"]
    if len(text) < MIN_RUN_LABEL_CHARS:
        return [f"run_label is shorter than {MIN_RUN_LABEL_CHARS} characters: {text!r}"]
    stem = re.sub(r"[\W_]*\d*$", "", text.lower())   # "run_2" is as generic as "run"
    if text.lower() in GENERIC_RUN_LABELS or stem in GENERIC_RUN_LABELS:
        return [f"run_label is generic: {text!r}"]
    return []


def command_context_reasons(command: str) -> list[str]:
    if not command.strip():
        return ["run_command has an empty command"]
    if not _REPO_CONTEXT.match(command):
        return ["command has no explicit repo context (start with `cd <repo> &&` or `Set-Location <repo>;`)"]
    return []


def housekeeping(decision: Decision) -> dict[str, int | bool]:
    tracked: dict[str, int | bool] = {
        "todo_new": len(decision.todo_new),
        "notes_update": bool(decision.notes_update.strip()),
        "data_exploration_update": bool(decision.data_exploration_update.strip()),
        "resolve_shared_todo_ids": len(decision.resolve_shared_todo_ids),
    }
    tracked["empty"] = not any(tracked.values())
    return tracked


def downgrade(decision: Decision, result: QualityResult) -> Decision:
    """The `wait` a failing cycle becomes; the housekeeping still lands."""
    reasons = "; ".join(result.reasons) or "quality gate failed"
    wait = wait_decision(f"quality gate downgraded `{decision.action}` to wait: {reasons}")
    return wait.model_copy(update={
        "todo_new": list(decision.todo_new),
        "notes_update": decision.notes_update,
        "data_exploration_update": decision.data_exploration_update,
        "resolve_shared_todo_ids": list(decision.resolve_shared_todo_ids),
    })
