"""Seeded held-out draws, stratified by label: the indices scikit-learn's `train_test_split` draws
(ShuffleSplit, StratifiedShuffleSplit; 1.x), computed here with numpy's RandomState.

Owned here for two reasons: a task's splits are part of its data contract (fingerprints, probes,
the validation set every result is measured on) and must not move with an upgrade of
scikit-learn; and the trainer starts without importing scikit-learn, which was 1.2 CPU-s of every
run's start (`python -X importtime -m loop.trainer`). tests/test_split.py draws random cases and
checks the indices equal scikit-learn's, element for element."""
from __future__ import annotations

from math import ceil, floor

import numpy as np


def split_counts(n: int, test_size: int | float | None, train_size: int | float | None) -> tuple[int, int]:
    """(n_train, n_test) as scikit-learn reads the two sizes: an int is a count, a float a share
    (test rounded up, train down); a missing one is the rest."""
    for what, size in (("test_size", test_size), ("train_size", train_size)):
        if size is None:
            continue
        if isinstance(size, (int, np.integer)) and not 0 < size < n:
            raise ValueError(f"{what}={size} should be a count between 0 and the {n} samples")
        if isinstance(size, float) and not 0 < size < 1:
            raise ValueError(f"{what}={size} should be a share in (0, 1)")
    if test_size is None and train_size is None:
        test_size = 0.25
    n_test = ceil(test_size * n) if isinstance(test_size, float) else test_size
    n_train = floor(train_size * n) if isinstance(train_size, float) else train_size
    n_train = n - n_test if n_train is None else n_train
    n_test = n - n_train if n_test is None else n_test
    if n_train + n_test > n:
        raise ValueError(f"train {n_train} + held out {n_test} is more than the {n} samples")
    if n_train == 0:
        raise ValueError(f"with {n} samples, test_size={test_size} and train_size={train_size}: no training sample")
    return int(n_train), int(n_test)


def approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `n_draws` to take from each class: the floored proportional share, then one more
    for the classes with the largest remainders (ties broken at random), until the draws add up."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def shuffled_positions(n: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ShuffleSplit's first draw: one permutation, held out first."""
    order = np.random.RandomState(seed).permutation(n)
    return order[n_test:n_test + n_train], order[:n_test]


def stratified_positions(labels: np.ndarray, n_train: int, n_test: int, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """StratifiedShuffleSplit's first draw: each class's share of both sides, then each side shuffled."""
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"classes {classes[counts < 2].tolist()} have one sample: too few to stratify")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"a side of {min(n_train, n_test)} cannot hold each of the {len(classes)} classes")
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = approximate_mode(counts, n_train, rng)
    t_i = approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        drawn = members[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(drawn[:n_i[i]])
        test.extend(drawn[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def held_out(pool: np.ndarray, *, seed: int, test_size: int | float | None = None,
             train_size: int | float | None = None, stratify: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) elements of `pool`, as `train_test_split(pool, ...)` returns them."""
    n_train, n_test = split_counts(len(pool), test_size, train_size)
    if stratify is None:
        train, test = shuffled_positions(len(pool), n_train, n_test, seed)
    else:
        train, test = stratified_positions(np.asarray(stratify), n_train, n_test, seed)
    return pool[train], pool[test]
