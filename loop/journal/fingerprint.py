"""What a training run trains, as a short stable id: the resolved trainer config less what does not
shape the weights (its label, where it stops or resumes, threads, loader workers, budget caps, ...).
Two runs with one fingerprint train the same thing: `repeat_reason` refuses the second unless it is a
declared seed replica or a continuation (the quality gate applies it, the offline policy avoids it).

  fingerprint(config)          the exact run, seed included
  recipe(config)               the recipe, seed left out: seed replicas share it

The config must be the resolved one (every default filled: `TrainerConfig(...).model_dump()`, which
is what a run writes as train_args.json), so a key left to its default and the same key written out
give one fingerprint.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# dotted keys that change how a run executes or where it stops, never what it learns
EXECUTION_ONLY = frozenset({
    "run.label", "run.stop_after_epochs", "run.resume_from", "run.keep_checkpoint", "run.log_every_steps",
    "run.threads", "run.device", "run.amp", "run.channels_last", "run.tensorboard",
    "data.num_workers", "data.eval_batch_size", "budget"})
SEED = "run.seed"


def _slim(value: Any, path: str, drop: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _slim(v, f"{path}.{k}" if path else k, drop) for k, v in sorted(value.items())
                if (f"{path}.{k}" if path else k) not in drop}
    if isinstance(value, list):
        return [_slim(v, path, drop) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)          # 0.0 and 0 are one value (YAML and JSON disagree on how to write it)
    return value


def _digest(config: dict, drop: frozenset[str]) -> str:
    text = json.dumps(_slim(config, "", drop), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(config: dict) -> str:
    """The exact run (seed included): one per thing trained."""
    return _digest(config, EXECUTION_ONLY)


def recipe(config: dict) -> str:
    """The recipe (seed left out): seed replicas share it."""
    return _digest(config, EXECUTION_ONLY | {SEED})


# ------------------------------------------------------------ what was trained ----

@dataclass(frozen=True)
class Trained:
    """One run that trained (or is training) something, as the repeat rule sees it."""

    label: str
    fingerprint: str
    recipe: str
    state: str                        # ok | failed | running
    resume_from: str | None = None    # a continuation: the screen it resumes
    screen: bool = False              # an ok run of lower fidelity (its continuation is the way on)
    failure: str = ""                 # a failed run: its signature's category (loop/run/failure.py)


def repeat_reason(config: dict, trained: list[Trained], replica: bool = False, refused: frozenset[str] = frozenset()
                  ) -> str | None:
    """Why training `config` (resolved) would repeat a run, or None when it trains something new.

    - a continuation: its screen must not be continued already (or be continuing now);
    - a declared seed replica: a seed not run before with this recipe;
    - anything else: a recipe no run has, except one whose only failure was the machine's
      (infrastructure, once: the retry may succeed where the configuration was never at fault);
    - never one of `refused` (the fingerprints a blocked failure named)."""
    fp, rc = fingerprint(config), recipe(config)
    resume = (config.get("run") or {}).get("resume_from")
    if fp in refused or rc in refused:
        return "it failed the same way too many times in a row (the daemon is blocked on it)"
    if resume:
        twin = next((t for t in trained if t.resume_from == resume), None)
        return None if twin is None else f"{resume} is already continued by {twin.label} ({twin.state})"
    if replica:
        twin = next((t for t in trained if t.fingerprint == fp and t.state != "failed"), None)
        return None if twin is None else f"seed replica with a seed already run: {twin.label} ({twin.state})"
    same = [t for t in trained if t.recipe == rc and not t.resume_from]
    for t in same:
        if t.state == "running":
            return f"the same configuration is training now as {t.label}"
        if t.state == "ok":
            hint = f"; continue it (continue_run: {t.label})" if t.screen else \
                "; to measure the seed spread declare a seed replica (replica_of)"
            return f"the same configuration was trained as {t.label}{hint}"
    failed = [t for t in same if t.state == "failed"]
    if failed and (len(failed) > 1 or failed[0].failure != "infrastructure"):
        return f"the same configuration failed as {failed[-1].label} ({failed[-1].failure or 'failure'})"
    return None
