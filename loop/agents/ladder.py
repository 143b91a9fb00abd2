"""The fidelity ladder every Builder shares: a run is a cheap screen (the full schedule, stopped
after a third of its epochs, its checkpoint kept), a full run, or the continuation of a screen
(resumed from its checkpoint to the end, never retrained from zero). Successive halving on it:
a screen in the top third of the screens so far earns its continuation (the ASHA rule).

The Decision says `fidelity: screen|full` and `continue_run: <screen label>`; `resolve` turns that
into the trainer overlay the gate validates."""
from __future__ import annotations

import copy

from loop.agents.schema import Decision
from loop.archive.pruned import run_pruned
from loop.errors import ConfigError
from loop.journal.history import RunRecord

ETA = 3                          # keep the top 1/ETA of each rung; a screen costs ~1/ETA of a full run


def screen_epochs(epochs: int) -> int:
    return max(1, round(epochs / ETA))


def planned_epochs(config: dict) -> int:
    return int(config.get("run", {}).get("epochs") or 10)


def screens(history: list[RunRecord]) -> list[RunRecord]:
    return [r for r in history if r.verdict == "screen" and r.ok]


def continued(history: list[RunRecord]) -> set[str]:
    """Run folders of screens that have a continuation already (or in the record of one)."""
    return {str(r.config.get("run", {}).get("resume_from")) for r in history
            if r.config.get("run", {}).get("resume_from")}


def promotable(history: list[RunRecord], in_flight: set[str] = frozenset()) -> list[RunRecord]:
    """Runs to continue, first: runs the walltime cap stopped (meant to be full, cut short: the rest
    is what they were for), then screens in the top 1/ETA of all screens of their rung (ASHA), best
    first; none continued yet. `in_flight`: run folders of continuations still training."""
    done = continued(history) | set(in_flight)
    done |= {r.run_dir for r in history if r.ok and r.run_dir and run_pruned(r.run_dir)}   # no checkpoint left
    capped = [r for r in history if r.ok and r.stopped_at_cap and r.run_dir not in done]
    rung = screens(history)
    if len(rung) < ETA:              # a top third needs a rung of at least ETA screens
        return capped
    ranked = sorted(rung, key=lambda r: (-r.score, r.cycle))
    top = ranked[:max(1, len(ranked) // ETA)]
    return capped + [r for r in top if r.run_dir not in done and r not in capped]


def resolve(decision: Decision, base_config: dict, history: list[RunRecord]) -> dict:
    """The trainer overlay that puts the decision's fidelity into effect (ConfigError: refused)."""
    overlay = copy.deepcopy(decision.train_overlay)
    overlay.get("run", {}).pop("resume_from", None)        # only continue_run resumes, by a known label
    overlay.get("run", {}).pop("stop_after_epochs", None)  # and only fidelity: screen stops early
    if decision.continue_run:
        screen = next((r for r in reversed(history) if r.label == decision.continue_run), None)
        if screen is None or screen.verdict != "screen" or not screen.ok:
            raise ConfigError(f"continue_run: {decision.continue_run!r} is not a finished screen "
                              f"(known screens: {', '.join(r.label for r in screens(history)[-5:]) or 'none'})")
        if screen.run_dir in continued(history):
            raise ConfigError(f"continue_run: {decision.continue_run!r} was continued already")
        config = copy.deepcopy(screen.config)
        config.setdefault("run", {}).update({"stop_after_epochs": None, "resume_from": screen.run_dir})
        config["run"].pop("label", None)
        return config
    if decision.fidelity == "screen":
        epochs = int(overlay.get("run", {}).get("epochs") or planned_epochs(base_config))
        if screen_epochs(epochs) < epochs:          # a 1- or 2-epoch run has no cheaper rung
            overlay.setdefault("run", {})["stop_after_epochs"] = screen_epochs(epochs)
    return overlay


def ladder_text(base_config: dict, history: list[RunRecord]) -> str:
    """The ladder as the Builder's context shows it."""
    epochs = planned_epochs(base_config)
    lines = [f"- screen (`fidelity: screen`): the full schedule stopped after {screen_epochs(epochs)} of {epochs} "
             f"epochs, about 1/{ETA} of the cost; its score is low-fidelity and never ranked with full runs.",
             f"- full (`fidelity: full`, the default): all {epochs} epochs (or the overlay's run.epochs).",
             "- continue (`continue_run: <screen label>`): resume a screen from its checkpoint to full "
             "(pays only the remaining epochs)."]
    ready = promotable(history)
    if ready:
        lines.append("- screens in the top third, ready to continue: "
                     + ", ".join(f"`{r.label}` {r.score:.4f}" for r in ready[:3]))
    return "\n".join(lines)
