"""Auto-repair: one recovery pass for a failed run (seed README, "Auto Repair (Install + Retry)").

This is the entry: `auto_repair` diagnoses, plans and applies; `apply_repair` runs the steps and
returns the evidence the daemon writes into its `auto_repair` event, plus the command to retry once
(the retry itself is the daemon's job). Installs go into the training venv (`auto_repair_python_exe`,
else this interpreter). One job per module:

  repair_diagnose.py  reading the failure: a missing module, a model name the trainer refused, or
                      loader workers that cannot run here
  repair_plan.py      the config maps -> steps, in the seed's order (and the step records)
  repair_install.py   package pins and pip installs: pinned only, one index, wheels only, hashes
  repair_clone.py     allowlisted clones at a full commit sha, in <workspace>/autofix_repos/
  repair_fallback.py  a setting for the retry (data.num_workers=0), model-name fallbacks: a patched
                      config copy in <workspace>/autofix_configs/
  repair_command.py   the retry command: reading and rewriting its options

Supply-chain rules, since the commands that fail were written by an LLM: never a pip install of a
module name itself, only pinned map entries, from exactly one index; clones only from an allowlisted
URL prefix at a commit sha. The names below are the public API; callers import them from here.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, Field

from loop.config import DaemonConfig
from loop.run.repair_clone import REPOS_DIR, checkout_clone, clone_dir, clone_refusal, clone_step
from loop.run.repair_command import Command, option_values, rewrite_option
from loop.run.repair_diagnose import Failure, diagnose
from loop.run.repair_fallback import CONFIGS_DIR, fallback_step, setting_step, write_patched_config
from loop.run.repair_install import DETAIL_LINES, PIP_TIMEOUT_S, last_line, pip_env, pip_install, pip_step, single_index
from loop.run.repair_plan import RepairAction, RepairStep, StepContext, no_plan_reason, plan_repair

__all__ = ["CONFIGS_DIR", "DETAIL_LINES", "PIP_EXTRA_ARGS", "PIP_TIMEOUT_S", "REPOS_DIR", "Command", "Failure",
           "RepairAction", "RepairOutcome", "RepairStep", "apply_repair", "auto_repair", "checkout_clone",
           "clone_dir", "clone_refusal", "diagnose", "option_values", "pip_env", "pip_install", "plan_repair",
           "python_exe", "rewrite_option", "write_patched_config"]

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
