"""What a run costs, predicted from past runs: seconds per training epoch by model, image size and
data share (measured epochs, validation included), plus a fixed setup time. The offline policy
uses it never to propose a run that would break the budget's walltime cap."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from loop.journal.history import RunRecord

# rough relative cost per image of the space's models on a CPU, for a model never run yet
MODEL_FACTOR = {"resnet10t": 1.0, "resnet14t": 1.5, "regnetx_002": 0.7, "mobilenetv3_small_075": 0.6}
UNKNOWN_FACTOR = 1.5             # a model not in the table: assume dearer, stay on the safe side
SAFETY = 0.8                     # propose only runs predicted to use at most this share of the cap


def shape(config: dict) -> tuple[str, int, float]:
    data = config.get("data", {})
    return (str(config.get("model", {}).get("name", "?")), int(data.get("image_size", 32) or 32),
            float(data.get("train_fraction", 1.0) or 1.0))


def _factor(model: str) -> float:
    return MODEL_FACTOR.get(model, UNKNOWN_FACTOR)


@dataclass(frozen=True)
class CostModel:
    epochs: list[tuple[tuple[str, int, float], float]]     # (model, size, share) -> seconds per epoch
    setup_seconds: float

    def epoch_seconds(self, config: dict) -> float | None:
        """Seconds per epoch: the median of the same shape, else scaled from the nearest runs by
        pixels, data share and the model's relative cost."""
        if not self.epochs:
            return None
        model, size, frac = shape(config)
        same = [s for k, s in self.epochs if k == (model, size, frac)]
        if same:
            return statistics.median(same)
        pool = [(k, s) for k, s in self.epochs if k[0] == model] or self.epochs
        scaled = [s * (size / k[1]) ** 2 * (frac / k[2]) * _factor(model) / _factor(k[0]) for k, s in pool]
        return statistics.median(scaled)

    def run_seconds(self, config: dict, epochs_to_train: int) -> float | None:
        per = self.epoch_seconds(config)
        return None if per is None else self.setup_seconds + per * epochs_to_train


def cost_model(history: list[RunRecord]) -> CostModel:
    rows, setups = [], []
    for r in history:
        if r.epoch_seconds and r.config:        # a run stopped by the cap fit measured it too
            rows.append((shape(r.config), r.epoch_seconds))
            if r.ok and r.minutes is not None and r.epochs_trained:
                setups.append(max(0.0, r.minutes * 60 - r.epochs_trained * r.epoch_seconds))
    return CostModel(rows, statistics.median(setups) if setups else 0.0)
