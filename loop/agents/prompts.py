"""Prompt assembly for both roles: the mission file (re-read every cycle, so a person's edit takes
effect without a restart), the loop's own rules, the JSON contract, and the context. Rule budgets
(Builder <= 12, Mentor <= 8, mission rules included) are checked at start."""
from __future__ import annotations

import json
import re
from pathlib import Path

from loop.agents.schema import STRATEGY_DIMENSIONS
from loop.config import DaemonConfig
from loop.errors import ConfigError

WORKER_RULE_BUDGET = 12
MENTOR_RULE_BUDGET = 8

WORKER_RULES = [
    "Reply with one JSON object matching the Decision contract and nothing else.",
    "A run_command must start with `cd <repo root> &&` and only use allowed tools; no network, no installs.",
    "Never print, read or echo credentials or environment variables.",
    "Use the priority signals as guidance, not orders.",
    "A higher score inside the noise band is a tie, not a new best; screens are not full-fidelity scores.",
]
MENTOR_RULES = [
    "Reply with one JSON object matching the Review contract and nothing else.",
    "A challenge is a complete Decision the Builder could run as is.",
]

DECISION_CONTRACT = {
    "action": "train | run_command | wait | research | finish",
    "rationale": "why, in one or two sentences, citing evidence",
    "run_label": "short specific label, e.g. aug-strong-resnet10t",
    "train_overlay": "for train: trainer config overlay, e.g. "
                     "{\"optim\": {\"lr\": 0.02}, \"model\": {\"name\": \"resnet14t\"}}",
    "command": "for run_command: `cd <repo> && ...`",
    "monitor_seconds": "optional int",
    "strategy_dimension": " | ".join(STRATEGY_DIMENSIONS),
    "fidelity": "for train: screen (about a third of the epochs, cheap, low-fidelity score) | full (default)",
    "continue_run": "for train: the label of a finished screen to resume from its checkpoint to full "
                    "(see the fidelity ladder); the overlay is then ignored",
    "replica_of": "for train: the label of a finished run whose configuration this repeats with another "
                  "run.seed, to measure the seed spread; any other repeat of a trained configuration is refused",
    "todo_new": "0-2 strings", "notes_update": "string", "data_exploration_update": "string",
    "resolve_shared_todo_ids": "ids like T0003",
}
REVIEW_CONTRACT = {
    "verdict": "on_track | off_track", "critical_question": "at most one question",
    "challenge": "optional Decision object replacing the Builder's", "todo_new": "0-1 strings (only with a challenge)",
    "notes": "one or two sentences",
}


def mission_path(cfg: DaemonConfig, role: str, repo_root: Path) -> Path:
    name = cfg.worker_mission_file if role == "builder" else cfg.mentor_mission_file
    path = Path(name) if Path(name).is_absolute() else repo_root / name
    if not path.exists() and cfg.mission_file:
        path = Path(cfg.mission_file) if Path(cfg.mission_file).is_absolute() else repo_root / cfg.mission_file
    return path


def read_mission(cfg: DaemonConfig, role: str, repo_root: Path) -> str:
    path = mission_path(cfg, role, repo_root)
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"{path}: mission file for the {role} not found (set "
                          f"{'worker' if role == 'builder' else 'mentor'}_mission_file or mission_file)") from None


def count_rules(mission: str) -> int:
    """Numbered or bulleted lines under a `## Rules` heading."""
    match = re.search(r"^## Rules\s*$(.*?)(?=^## |\Z)", mission, re.M | re.S)
    if not match:
        return 0
    return sum(1 for line in match.group(1).splitlines() if re.match(r"\s*(\d+[.)]|[-*])\s+\S", line))


def check_rule_budgets(cfg: DaemonConfig, repo_root: Path) -> dict[str, int]:
    counts = {"builder": count_rules(read_mission(cfg, "builder", repo_root)) + len(WORKER_RULES),
              "mentor": count_rules(read_mission(cfg, "mentor", repo_root)) + len(MENTOR_RULES)}
    if counts["builder"] > WORKER_RULE_BUDGET:
        raise ConfigError(f"{mission_path(cfg, 'builder', repo_root)}: {counts['builder']} prompt rules "
                          f"(mission + {len(WORKER_RULES)} built in) exceed the Builder budget of {WORKER_RULE_BUDGET}")
    if counts["mentor"] > MENTOR_RULE_BUDGET:
        raise ConfigError(f"{mission_path(cfg, 'mentor', repo_root)}: {counts['mentor']} prompt rules "
                          f"(mission + {len(MENTOR_RULES)} built in) exceed the Mentor budget of {MENTOR_RULE_BUDGET}")
    return counts


def builder_prompt(cfg: DaemonConfig, repo_root: Path, context_text: str) -> tuple[str, str]:
    system = "\n\n".join([
        read_mission(cfg, "builder", repo_root).strip(),
        "Loop rules:\n" + "\n".join(f"- {r}" for r in WORKER_RULES),
        f"Repo root: {repo_root}",
        "Decision contract (JSON):\n" + json.dumps(DECISION_CONTRACT, indent=1),
    ])
    return system, context_text


def mentor_prompt(cfg: DaemonConfig, repo_root: Path, context_text: str, decision_json: str,
                  why: str) -> tuple[str, str]:
    system = "\n\n".join([
        read_mission(cfg, "mentor", repo_root).strip(),
        "Loop rules:\n" + "\n".join(f"- {r}" for r in MENTOR_RULES),
        "Review contract (JSON):\n" + json.dumps(REVIEW_CONTRACT, indent=1),
    ])
    user = f"{context_text}\n\n## Why you are reviewing now\n{why}\n\n## Builder's decision\n{decision_json}"
    return system, user
