"""Sampling strategies (evolution_scheduler.md's data strategies, for images).

Each strategy turns what is known about the training samples into the index order of one epoch:
  uniform                every sample once, shuffled
  class_balanced         draws weighted 1 / class count, so every class is seen equally often
  recent_weighted        draws weighted 1 + recent_boost * age_rank (newest drawn most)
  hard_example_weighted  draws weighted (running loss + floor) ** power; epoch 1 has no losses
                         yet, so it is uniform
Weighted strategies draw with replacement, as many draws as there are samples.
The order depends only on (seed, epoch) and the strategy's inputs, so a resumed run repeats it.
"""
from __future__ import annotations

import numpy as np
import torch

from loop.trainer.config import SamplingConfig


def sample_weights(cfg: SamplingConfig, labels: np.ndarray, ages: np.ndarray,
                   losses: np.ndarray | None) -> np.ndarray | None:
    """Per-sample draw weights, or None for a plain shuffle."""
    if cfg.strategy == "uniform":
        return None
    if cfg.strategy == "class_balanced":
        counts = np.bincount(labels)
        return 1.0 / counts[labels]
    if cfg.strategy == "recent_weighted":
        rank = np.argsort(np.argsort(ages, kind="stable"), kind="stable")   # 0 = oldest
        return 1.0 + cfg.recent_boost * rank / max(1, len(ages) - 1)
    if cfg.strategy == "hard_example_weighted":
        if losses is None or not np.isfinite(losses).all():
            return None
        return (losses + cfg.hard_floor) ** cfg.hard_power
    raise ValueError(f"unknown sampling strategy {cfg.strategy}")


def epoch_order(weights: np.ndarray | None, n: int, seed: int, epoch: int) -> list[int]:
    """The sample indices of one epoch, reproducible from (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=gen).tolist()
    w = torch.as_tensor(weights, dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True, generator=gen).tolist()


class LossTracker:
    """Running (EMA) loss per training sample, the input of hard_example_weighted."""

    def __init__(self, n: int, momentum: float):
        self.losses = np.full(n, np.nan)
        self.momentum = momentum

    def update(self, indices: np.ndarray, losses: np.ndarray) -> None:
        old = self.losses[indices]
        fresh = np.isnan(old)
        self.losses[indices] = np.where(fresh, losses, self.momentum * old + (1 - self.momentum) * losses)

    def snapshot(self) -> np.ndarray | None:
        """Losses for weighting; samples never seen get the mean so they are not starved."""
        if np.isnan(self.losses).all():
            return None
        out = self.losses.copy()
        out[np.isnan(out)] = np.nanmean(out)
        return out
