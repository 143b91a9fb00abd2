"""From a gated decision to what runs: the trainer config a `train` decision becomes (the default
config, the decision's overlay, the daemon's budget caps on top, validated before anything starts),
the command line, the run folder, the limits, and the run's environment."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from loop.config import DaemonConfig, deep_merge, read_yaml, validate
from loop.errors import ConfigError
from loop.journal.fingerprint import fingerprint, recipe
from loop.trainer.config import TrainerConfig, resolved
from loop.util.fsutil import atomic_write_text
from loop.util.secrets import looks_secret


@dataclass
class RunPlan:
    """Everything `supervise.launch` needs for one run; made by `train_plan` or `command_plan`."""

    label: str
    trace_id: str
    kind: str                       # train | command
    argv: list[str]
    run_dir: Path
    walltime_limit_seconds: float | None
    stall_seconds: float | None
    config_path: str | None = None  # the trainer YAML (train runs), for auto-repair's fallback patch
    fingerprint: str = ""           # what a train run trains (loop/journal/fingerprint.py)
    recipe: str = ""                # the same, seed left out
    resume_from: str | None = None  # a continuation: the screen's folder
    reads: tuple[str, ...] = ()     # workspace paths the run reads (a screen it continues, a teacher): read-only


def run_label(text: str) -> str:
    """A label safe for a folder name: letters, digits, `-_.`, at most 60 characters."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.strip())[:60].strip("-.")
    return keep or "run"


def train_plan(cfg: DaemonConfig, overlay: dict, label: str, trace: str, run_dir: Path) -> RunPlan:
    """A trainer run of the default config with `overlay` (raises ConfigError when it does not validate)."""
    return plan_for(cfg, trainer_config(cfg, overlay, label), label, trace, run_dir)


def plan_for(cfg: DaemonConfig, config: dict, label: str, trace: str, run_dir: Path) -> RunPlan:
    """A trainer run of `config` (from `trainer_config`), written as <run_dir>/run.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "run.yaml"
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    argv = [sys.executable, "-m", "loop.trainer", "--config", str(config_path), "--out", str(run_dir / "out")]
    full = resolved(config)
    return RunPlan(label, trace, "train", argv, run_dir, walltime_limit(cfg), stall_seconds(cfg), str(config_path),
                   fingerprint(full), recipe(full), full["run"]["resume_from"], reads_of(full, cfg.root))


def reads_of(config: dict, root: Path) -> tuple[str, ...]:
    """What a trainer config reads besides the task's data and the pixel cache: the screen it
    continues, its teacher and stabilizer, a local weights file (relative: to the project root)."""
    found = [config["run"].get("resume_from"), config["kd"].get("teacher"), config["kd"].get("stabilizer")]
    pretrained = config["model"].get("pretrained")
    if isinstance(pretrained, str):
        found.append(pretrained if Path(pretrained).is_absolute() else str(Path(root) / pretrained))
    return tuple(str(p) for p in found if p)


def command_plan(cfg: DaemonConfig, command: str, label: str, trace: str, run_dir: Path) -> RunPlan:
    """A policy-checked shell line, run by bash in the sandbox."""
    return RunPlan(label, trace, "command", ["bash", "-c", command], run_dir, walltime_limit(cfg), stall_seconds(cfg))


def stall_seconds(cfg: DaemonConfig) -> float | None:
    return cfg.run_stall_minutes * 60 if cfg.run_stall_minutes else None


def walltime_limit(cfg: DaemonConfig) -> float | None:
    """The supervisor's hard limit: the budget's walltime plus a minute for the trainer to stop itself."""
    return cfg.budget.max_walltime_minutes * 60 + 60 if cfg.budget.max_walltime_minutes else None


def trainer_config(cfg: DaemonConfig, overlay: dict, label: str) -> dict:
    """The default trainer config + the decision's overlay + the daemon's budget caps (the tighter
    of the two wins), validated before anything starts (ConfigError when it does not)."""
    merged = deep_merge(read_yaml(cfg.resolve(cfg.default_trainer_config)), overlay)
    merged = deep_merge(merged, {"run": {"label": label}})
    caps = merged.get("budget", {}) or {}
    if not isinstance(caps, dict) or not all(v is None or isinstance(v, (int, float)) for v in caps.values()):
        raise ConfigError(f"train_overlay: budget must map cap names to numbers, got {caps!r:.200}")
    for key, limit in cfg.budget.model_dump().items():
        if limit is not None:
            caps[key] = min(limit, caps[key]) if caps.get(key) is not None else limit
    merged["budget"] = caps
    validate(TrainerConfig, merged, "train_overlay")
    return merged


def child_env(repo_root: Path) -> dict[str, str]:
    """The run's environment: the daemon's, minus anything that looks like a secret."""
    env = {k: v for k, v in os.environ.items() if not looks_secret(k)}
    env["PYTHONPATH"] = str(repo_root)
    return env
