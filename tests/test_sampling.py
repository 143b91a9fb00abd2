"""Each sampling strategy changes which samples an epoch draws, as it says it does."""
from __future__ import annotations

import numpy as np

from loop.trainer.config import SamplingConfig
from loop.trainer.sampling import LossTracker, epoch_order, sample_weights


def draws(strategy, labels, ages, losses=None, epochs=20, **kw):
    cfg = SamplingConfig(strategy=strategy, **kw)
    w = sample_weights(cfg, labels, ages, losses)
    counts = np.zeros(len(labels))
    for e in range(epochs):
        np.add.at(counts, epoch_order(w, len(labels), seed=1, epoch=e), 1)
    return counts


def test_uniform_sees_every_sample_once_per_epoch():
    labels = np.array([0] * 90 + [1] * 10)
    order = epoch_order(sample_weights(SamplingConfig(), labels, np.arange(100.0), None), 100, 3, 0)
    assert sorted(order) == list(range(100)) and order != list(range(100))


def test_class_balanced_equalises_classes():
    labels = np.array([0] * 90 + [1] * 10)
    counts = draws("class_balanced", labels, np.arange(100.0))
    share_minority = counts[labels == 1].sum() / counts.sum()
    assert 0.4 < share_minority < 0.6          # uniform would give 0.10


def test_recent_weighted_favours_newest():
    labels = np.zeros(100, dtype=int)
    ages = np.arange(100.0)
    counts = draws("recent_weighted", labels, ages, recent_boost=3.0)
    newest, oldest = counts[-20:].mean(), counts[:20].mean()
    assert newest > 2.5 * oldest               # weights run 1x .. 4x


def test_hard_example_weighted_follows_losses():
    labels = np.zeros(100, dtype=int)
    ages = np.arange(100.0)
    assert sample_weights(SamplingConfig(strategy="hard_example_weighted"), labels, ages, None) is None
    losses = np.full(100, 0.05)
    losses[:10] = 2.0
    counts = draws("hard_example_weighted", labels, ages, losses)
    assert counts[:10].mean() > 8 * counts[10:].mean()


def test_orders_repeat_for_same_seed_and_epoch():
    w = np.linspace(1, 2, 50)
    assert epoch_order(w, 50, 5, 2) == epoch_order(w, 50, 5, 2)
    assert epoch_order(w, 50, 5, 2) != epoch_order(w, 50, 5, 3)


def test_loss_tracker_ema_and_unseen_samples():
    t = LossTracker(4, momentum=0.5)
    assert t.snapshot() is None
    t.update(np.array([0, 1]), np.array([1.0, 3.0]))
    t.update(np.array([0]), np.array([3.0]))
    snap = t.snapshot()
    assert snap[0] == 2.0 and snap[1] == 3.0 and snap[2] == snap[3] == 2.5
