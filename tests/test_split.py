"""loop/domains/split.py draws the indices scikit-learn's train_test_split draws: a task's splits
stay what they were when the trainer stopped importing scikit-learn, and a difference would show
here, case by case, not as a drifting validation score."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from loop.domains.split import held_out


def cases(n_cases: int = 300):
    rng = np.random.default_rng(0)
    for case in range(n_cases):
        n_classes = int(rng.integers(2, 12))
        n = int(rng.integers(4 * n_classes, 400))
        labels = rng.integers(0, n_classes, size=n)
        labels[:2 * n_classes] = np.repeat(np.arange(n_classes), 2)       # every class at least twice
        pool = np.sort(rng.choice(10 * n, size=n, replace=False))
        size = (int(rng.integers(n_classes, n - n_classes)) if case % 2 else float(rng.uniform(0.1, 0.9)))
        yield case, pool, labels, size, int(rng.integers(0, 2**31))


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("side", ["test_size", "train_size"])
def test_the_same_indices_as_scikit_learn(stratified, side):
    for case, pool, labels, size, seed in cases():
        stratify = labels if stratified else None
        try:
            want = train_test_split(pool, **{side: size}, random_state=seed, stratify=stratify)
        except ValueError:
            with pytest.raises(ValueError):
                held_out(pool, seed=seed, **{side: size}, stratify=stratify)
            continue
        got = held_out(pool, seed=seed, **{side: size}, stratify=stratify)
        assert [g.tolist() for g in got] == [w.tolist() for w in want], (case, side, size, seed)


def sklearn_held_out(pool, *, seed, test_size=None, train_size=None, stratify=None):
    return tuple(train_test_split(pool, test_size=test_size, train_size=train_size, random_state=seed,
                                  stratify=stratify))


@pytest.mark.parametrize("seed", [1234, 7])
def test_the_loop_draws_on_digits_what_scikit_learn_drew(seed, monkeypatch):
    """The loop's two draws (domains/base.py `_take`, trainer/setup.py `take_fraction`) on the
    embedded digits task, read without scikit-learn: the same samples, the same five splits and the
    same training share as with scikit-learn's loader and split."""
    from sklearn.datasets import load_digits

    import loop.domains.base as base
    import loop.trainer.setup as setup
    from loop.domains.digits import DigitsDomain

    mine = DigitsDomain(split_seed=seed)
    samples, names = mine._loaded
    bunch = load_digits()
    assert names == [str(c) for c in bunch.target_names] and np.array_equal(samples.labels, bunch.target)
    assert np.array_equal(samples.array[..., 0],
                          np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8))
    ours = mine.splits
    ours_share = setup.take_fraction(ours.train, 0.05, seed).ids.tolist()
    monkeypatch.setattr(base, "held_out", sklearn_held_out)
    monkeypatch.setattr(setup, "held_out", sklearn_held_out)
    theirs = DigitsDomain(split_seed=seed).splits
    for name in ("train", "val", "recall", "delta", "drift"):
        assert getattr(ours, name).ids.tolist() == getattr(theirs, name).ids.tolist(), name
    assert ours_share == setup.take_fraction(theirs.train, 0.05, seed).ids.tolist()


def test_too_few_of_a_class_to_stratify_is_an_error_naming_it():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match=r"classes \[2\] have one sample"):
        held_out(np.arange(7), seed=0, test_size=3, stratify=labels)
