"""GRAFTING: the candidate's logits blended into GEN_HEAD's, `(1 - alpha) * head + alpha * cand`,
with alpha ramped from 0 to 1 under a strategy (extended_lifecycle.md):

  linear            alpha = step / steps
  drift_controlled  linear, but holds alpha for `pause` steps when the blend's disagreement with
                    GEN_HEAD jumps by more than drift_threshold in one step
  momentum          linear plus a velocity that grows with accuracy gains (faster when it helps)
  adaptive          ramp length stretches when accuracy dips and shrinks when it rises

`select_strategy` picks one: the configured name, or under `auto` the strategy with the best
record in past grafts (evolution_log.jsonl), `linear` when there is no history.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from loop.archive.lifecycle import GRAFT_STRATEGIES


def _up(alpha: float, increment: float) -> float:
    return float(np.clip(round(alpha + increment, 9), 0.0, 1.0))


class Strategy:
    name = "linear"

    def __init__(self, steps: int, drift_threshold: float = 0.05):
        self.steps, self.drift_threshold = steps, drift_threshold

    def next_alpha(self, step: int, alpha: float, metrics: dict) -> float:
        return min(1.0, step / self.steps)


class DriftControlled(Strategy):
    name = "drift_controlled"

    def __init__(self, steps: int, drift_threshold: float = 0.05, pause: int = 2):
        super().__init__(steps, drift_threshold)
        self.pause, self.hold = pause, 0

    def next_alpha(self, step, alpha, metrics):
        if metrics.get("drift_jump", 0.0) > self.drift_threshold and self.hold == 0:
            self.hold = self.pause
        if self.hold > 0:
            self.hold -= 1
            return alpha
        return _up(alpha, 1.0 / self.steps)


class Momentum(Strategy):
    name = "momentum"

    def __init__(self, steps: int, drift_threshold: float = 0.05, factor: float = 0.5):
        super().__init__(steps, drift_threshold)
        self.factor, self.velocity = factor, 0.0

    def next_alpha(self, step, alpha, metrics):
        self.velocity = self.factor * self.velocity + max(0.0, metrics.get("performance_delta", 0.0))
        return _up(alpha, 1.0 / self.steps + self.velocity)


class Adaptive(Strategy):
    name = "adaptive"

    def next_alpha(self, step, alpha, metrics):
        delta = metrics.get("performance_delta", 0.0)
        stretch = 2.0 if delta < 0 else (0.5 if delta > 0 else 1.0)
        return _up(alpha, 1.0 / (self.steps * stretch))


STRATEGIES = {cls.name: cls for cls in (Strategy, DriftControlled, Momentum, Adaptive)}
assert set(STRATEGIES) == set(GRAFT_STRATEGIES)


def select_strategy(configured: str, history: list[dict]) -> tuple[str, str]:
    """(strategy, why). `history`: past GRAFT events with `strategy` and `ok`."""
    if configured != "auto":
        return configured, "set in config"
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in history:
        if event.get("action") == "GRAFT" and event.get("strategy") in STRATEGIES:
            stats[event["strategy"]][0] += int(bool(event.get("ok")))
            stats[event["strategy"]][1] += 1
    if not stats:
        return "linear", "auto: no graft history yet"
    # Laplace-smoothed success rate, so one lucky graft does not dominate.
    best = max(stats, key=lambda s: ((stats[s][0] + 1) / (stats[s][1] + 2), stats[s][1]))
    ok, n = stats[best]
    return best, f"auto: best record in history ({ok}/{n} grafts succeeded)"


@dataclass
class GraftResult:
    strategy: str
    ok: bool
    reason: str
    alphas: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    head_accuracy: float = 0.0


def graft(head_logits: torch.Tensor, cand_logits: torch.Tensor, labels: torch.Tensor, strategy: str,
          steps: int, drift_threshold: float, tolerance: float) -> GraftResult:
    """Ramp alpha over replayed traffic; fail if the blend ever falls `tolerance` below HEAD."""
    impl = STRATEGIES[strategy](steps, drift_threshold)
    head_pred = head_logits.argmax(1)
    head_acc = float((head_pred == labels).float().mean())
    result = GraftResult(strategy=strategy, ok=False, reason="", head_accuracy=round(head_acc, 6))
    alpha, drifts = 0.0, []
    for step in range(1, 4 * steps + 1):                  # strategies may hold; bound the ramp
        accs = result.accuracies
        metrics = {"performance_delta": accs[-1] - accs[-2] if len(accs) > 1 else 0.0,
                   "drift_jump": drifts[-1] - drifts[-2] if len(drifts) > 1 else 0.0, "current_alpha": alpha}
        alpha = impl.next_alpha(step, alpha, metrics)
        # Each step replays all the probe traffic through the blend served at this alpha.
        pred = ((1 - alpha) * head_logits + alpha * cand_logits).argmax(1)
        acc = float((pred == labels).float().mean())
        drifts.append(float((pred != head_pred).float().mean()))
        result.alphas.append(round(alpha, 4))
        result.accuracies.append(round(acc, 4))
        if acc < head_acc - tolerance:
            result.reason = (f"blend accuracy {acc:.3f} fell below HEAD's {head_acc:.3f} - {tolerance} "
                             f"at alpha {alpha:.2f}")
            return result
        if alpha >= 1.0:
            result.ok, result.reason = True, f"alpha reached 1.0 in {step} steps"
            return result
    result.reason = f"alpha stalled at {alpha:.2f} after {4 * steps} steps"
    return result
