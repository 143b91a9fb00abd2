"""Auto-repair, settings and model-name fallbacks: retry a trainer run with one setting changed
(`setting_step`), or train a known-good stand-in for a model name the trainer refused: the trainer
YAML named by `--config` is copied to `<workspace>/autofix_configs/` with `model.name` replaced, and
the retry command is rewritten to use the copy (and any `--set model.name=...` to use the stand-in).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from loop.config import read_yaml
from loop.errors import ConfigError
from loop.run.repair.command import Command, command_tokens, option_values, rewrite_option
from loop.run.repair.steps import RepairAction, RepairStep, StepContext
from loop.util.fsutil import atomic_write_text

CONFIGS_DIR = "autofix_configs"


def write_patched_config(config_path: Path, model_name: str, workspace: Path) -> Path:
    """Copy of a trainer YAML with `model.name` replaced, at `<workspace>/autofix_configs/<stem>-<model>.yaml`."""
    data = read_yaml(config_path)
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{config_path}: model must be a mapping, got {type(model).__name__}")
    model = dict(model)
    model["name"] = model_name           # in place, so the key keeps its position
    data["model"] = model
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    dest = (Path(workspace) / CONFIGS_DIR / f"{config_path.stem}-{safe}.yaml").resolve()
    atomic_write_text(dest, yaml.safe_dump(data, sort_keys=False))
    return dest


def fallback_step(step: RepairStep, command: Command, ctx: StepContext) -> tuple[RepairAction, Command]:
    """A `fallback` step: the action, and the command to retry (unchanged unless it succeeded)."""
    assert step.fallback is not None
    action = RepairAction(kind="fallback", target=step.target, source=step.source, fallback=step.fallback,
                          ok=False, detail="")
    try:
        tokens = command_tokens(command)
    except ValueError as exc:
        return action.model_copy(update={"detail": f"cannot parse the command: {exc}"}), command
    configs = option_values(tokens, "--config")
    sets_model = any(v.startswith("model.name=") for v in option_values(tokens, "--set"))
    if not configs and not sets_model:
        return action.model_copy(update={"detail": "cannot apply fallback: the command has neither "
                                                   "--config PATH nor --set model.name=NAME"}), command
    retry: Command | None = command
    patched: Path | None = None
    if configs:
        config_path = Path(configs[-1])   # argparse: the last --config wins
        if not config_path.is_absolute():
            config_path = ctx.repo_root / config_path
        try:
            patched = write_patched_config(config_path, step.fallback, ctx.workspace)
        except (ConfigError, OSError) as exc:
            return action.model_copy(update={"detail": f"cannot patch the config: {exc}"}), command
        retry = rewrite_option(retry, "--config", lambda v: True, str(patched))
    if sets_model and retry is not None:
        retry = rewrite_option(retry, "--set", lambda v: v.startswith("model.name="),
                               f"model.name={step.fallback}")
    if retry is None:
        return action.model_copy(update={"detail": "cannot rewrite the command safely (shell syntax "
                                                   "and a token not found as written)"}), command
    detail = f"model.name {step.target} -> {step.fallback}" + (f"; config copy {patched}" if patched else "")
    return action.model_copy(update={"ok": True, "detail": detail,
                                     "config": str(patched) if patched else None}), retry


def setting_step(step: RepairStep, command: Command) -> tuple[RepairAction, Command]:
    """A `setting` step: the trainer command retried with `--set KEY=VALUE` appended (argparse: the
    last --set of a key wins). Only a trainer command takes it."""
    assert step.setting is not None
    action = RepairAction(kind="setting", target=step.target, source=step.source, ok=False, detail="")
    try:
        tokens = command_tokens(command)
    except ValueError as exc:
        return action.model_copy(update={"detail": f"cannot parse the command: {exc}"}), command
    if "loop.trainer" not in tokens:
        return action.model_copy(update={"detail": f"{step.setting} needs a trainer command "
                                                   "(python -m loop.trainer ...)"}), command
    retry = [*command, "--set", step.setting] if isinstance(command, list) else \
        f"{command} --set {step.setting}"
    return action.model_copy(update={"ok": True, "detail": f"retry with {step.setting} ({step.source})"}), retry
