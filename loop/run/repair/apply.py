"""Auto-repair, the pass itself: `auto_repair` diagnoses (diagnose.py), plans (steps.py) and
applies; `apply_repair` runs the steps and returns the evidence the daemon writes into its
`auto_repair` event, plus the command to retry once (the retry itself is the daemon's job). Installs
go into the training venv (`auto_repair_python_exe`, else this interpreter).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, Field

from loop.config import DaemonConfig
from loop.run.repair.clone import clone_step
from loop.run.repair.command import Command
from loop.run.repair.diagnose import Failure, diagnose
from loop.run.repair.fallback import fallback_step, setting_step
from loop.run.repair.install import last_line, pip_step, single_index
from loop.run.repair.steps import RepairAction, RepairStep, StepContext, no_plan_reason, plan_repair

# Extra `pip install` arguments for every install. Empty in production; tests pass offline flags
# through `pip_args` instead. Any extra index or find-links source in either is dropped, and pip's
# config files are not read: the index is `auto_repair_index_url` alone.
PIP_EXTRA_ARGS: tuple[str, ...] = ()


class RepairOutcome(BaseModel):
    applied: bool                   # every planned step succeeded
    actions: list[dict[str, Any]] = Field(default_factory=list)
    retry_command: Command          # same type as the failed command; patched only by a fallback
    retry: bool = False             # applied and auto_repair_retry_on_success
    reason: str | None = None       # why nothing (or not everything) could be done
    failure: Failure | None = None


def auto_repair(command: Command, log_text: str, cfg: DaemonConfig, workspace: Path, repo_root: Path,
                pip_args: Sequence[str] | None = None) -> RepairOutcome | None:
    """Diagnose, plan and apply. None when auto-repair is off or the log shows no known failure."""
    if not cfg.auto_repair_enabled:
        return None
    failure = diagnose(log_text)
    if failure is None:
        return None
    return apply_repair(command, failure, plan_repair(failure, cfg), cfg, workspace, repo_root, pip_args)


def apply_repair(command: Command, failure: Failure, steps: list[RepairStep], cfg: DaemonConfig,
                 workspace: Path, repo_root: Path, pip_args: Sequence[str] | None = None) -> RepairOutcome:
    """Run `steps` in order, stopping at the first failure; `pip_args` are added to every install."""
    if not steps:
        return RepairOutcome(applied=False, retry_command=command, reason=no_plan_reason(failure, cfg),
                             failure=failure)
    repo_root = Path(repo_root)
    ctx = StepContext(python=python_exe(cfg, repo_root), workspace=Path(workspace), repo_root=repo_root,
                      pip_args=single_index(PIP_EXTRA_ARGS + tuple(pip_args or ())),
                      index_url=cfg.auto_repair_index_url, clone_allowlist=tuple(cfg.auto_repair_clone_allowlist))
    actions: list[RepairAction] = []
    retry_command = command
    for step in steps:
        action, retry_command = _apply_step(step, retry_command, ctx)
        actions.append(action)
        if not action.ok:
            break
    applied = all(a.ok for a in actions)
    last = actions[-1]
    return RepairOutcome(
        applied=applied, actions=[a.evidence() for a in actions],
        retry_command=retry_command if applied else command,
        retry=applied and cfg.auto_repair_retry_on_success,
        reason=None if applied else f"{last.kind} step for {last.target!r} failed: {last_line(last.detail)}",
        failure=failure)


def python_exe(cfg: DaemonConfig, repo_root: Path) -> str:
    """The training venv's python; a relative path with a folder in it is taken from the repo root."""
    exe = cfg.auto_repair_python_exe
    if not exe:
        return sys.executable
    path = Path(exe).expanduser()
    if not path.is_absolute() and len(path.parts) > 1:
        return str(repo_root / path)
    return str(path)   # absolute, or a bare name that PATH resolves


def _apply_step(step: RepairStep, command: Command, ctx: StepContext) -> tuple[RepairAction, Command]:
    if step.kind == "pip":
        return pip_step(step, ctx), command
    if step.kind == "clone":
        return clone_step(step, ctx), command
    if step.kind == "setting":
        return setting_step(step, command)
    return fallback_step(step, command, ctx)
