"""The one maker of what trains: every run that trains (a daemon decision, an evolution window's
candidate, an auto-repair retry) gets its trainer config and its `RunPlan` here, by one set of rules:

    trainer config   base (the default trainer config) + overlay + label (+ TensorBoard when the
                     daemon's tracking asks), budget caps the tighter of the recipe's and the daemon's
                     (a cap either sets holds; none is ever removed), validated before anything starts
    run.yaml         written atomically in the run folder; the command line, `--out`, the reads
    limits           the supervisor's walltime: the config's own walltime cap plus a minute for the
                     trainer to stop itself (a shell command, which has no trainer inside to stop at
                     the cap, gets the cap itself); the stall limit: the daemon's `run_stall_minutes`
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from loop.config import BudgetCaps, DaemonConfig, deep_merge, read_yaml, validate
from loop.errors import ConfigError
from loop.journal.fingerprint import fingerprint, recipe
from loop.trainer.config import TrainerConfig, resolved
from loop.util.fsutil import atomic_write_text
from loop.util.secrets import looks_secret


@dataclass
class RunPlan:
    """Everything `supervise.launch` needs for one run; made by `plan_for`, `command_plan` or `retry_plan`."""

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


def plan_for(cfg: DaemonConfig, config: dict, label: str, trace: str, run_dir: Path, out: str = "out") -> RunPlan:
    """A trainer run of `config` (from `trainer_config`), written as <run_dir>/run.yaml; the trainer
    writes into <run_dir>/<out>."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "run.yaml"
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    argv = [sys.executable, "-m", "loop.trainer", "--config", str(config_path), "--out", str(run_dir / out)]
    full = resolved(config)
    return RunPlan(label, trace, "train", argv, run_dir, walltime_limit(config), stall_seconds(cfg), str(config_path),
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
    """A policy-checked shell line, run by bash in the sandbox, killed at the daemon's walltime cap
    (no minute of grace: nothing in a shell line stops itself at the cap and saves its state)."""
    minutes = cfg.budget.max_walltime_minutes
    return RunPlan(label, trace, "command", ["bash", "-c", command], run_dir, minutes * 60 if minutes else None,
                   stall_seconds(cfg))


def retry_plan(run, argv: list[str], trace: str, run_dir: Path, reads: tuple[str, ...]) -> RunPlan:
    """An auto-repair retry of `run` (a loop.run.supervise.ActiveRun): the repaired command line,
    the first try's limits and identity, its own folder."""
    return RunPlan(f"{run.label}-retry", trace, run.kind, argv, run_dir, run.walltime_limit_seconds,
                   run.stall_seconds, fingerprint=run.fingerprint, recipe=run.recipe, resume_from=run.resume_from,
                   reads=reads)


def stall_seconds(cfg: DaemonConfig) -> float | None:
    return cfg.run_stall_minutes * 60 if cfg.run_stall_minutes else None


def walltime_limit(config: dict) -> float | None:
    """The supervisor's hard limit for a trainer config: its walltime cap plus a minute for the
    trainer to stop itself (None: no cap)."""
    minutes = (config.get("budget") or {}).get("max_walltime_minutes")
    return minutes * 60 + 60 if minutes else None


def tighter_caps(recipe_caps, daemon: BudgetCaps, what: str = "train_overlay") -> dict:
    """Each budget cap the tighter of the recipe's and the daemon's; a cap only one sets holds."""
    caps = dict(recipe_caps or {}) if isinstance(recipe_caps, dict) or recipe_caps is None else recipe_caps
    if not isinstance(caps, dict) or not all(v is None or isinstance(v, (int, float)) for v in caps.values()):
        raise ConfigError(f"{what}: budget must map cap names to numbers, got {recipe_caps!r:.200}")
    for key, limit in daemon.model_dump().items():
        if limit is not None:
            caps[key] = min(limit, caps[key]) if caps.get(key) is not None else limit
    return caps


def trainer_config(cfg: DaemonConfig, overlay: dict, label: str, base: dict | None = None,
                   what: str = "train_overlay") -> dict:
    """`base` (the default trainer config when None) + `overlay` + the label, with `run.tensorboard`
    when the daemon's tracking asks for it and the tighter budget caps, validated before anything
    starts (a ConfigError naming `what` when it does not)."""
    base = read_yaml(cfg.resolve(cfg.default_trainer_config)) if base is None else base
    merged = deep_merge(deep_merge(base, overlay), {"run": {"label": label}})
    if cfg.tracking.tensorboard:
        merged = deep_merge(merged, {"run": {"tensorboard": True}})
    merged["budget"] = tighter_caps(merged.get("budget"), cfg.budget, what)
    validate(TrainerConfig, merged, what)
    return merged


def child_env(repo_root: Path) -> dict[str, str]:
    """The run's environment: the daemon's, minus anything that looks like a secret."""
    env = {k: v for k, v in os.environ.items() if not looks_secret(k)}
    env["PYTHONPATH"] = str(repo_root)
    return env
