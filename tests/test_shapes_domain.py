"""The procedurally rendered shapes task: deterministic bytes per seed, imbalance, RGB images in
which every class draws something, and its arguments checked with the argument named."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from loop.domains import DOMAINS, resolve_domain, shapes
from loop.domains.shapes import CLASS_NAMES, ShapesDomain, class_counts, render_shapes
from loop.errors import DomainError

SMALL = {"count": 600, "image_size": 24}


def digest(images: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small():
    return render_shapes(count=600, image_size=24, seed=3)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(small):
    images, labels = small
    again, again_labels = render_shapes(count=600, image_size=24, seed=3)
    assert digest(images) == digest(again) and np.array_equal(labels, again_labels)
    other, _ = render_shapes(count=600, image_size=24, seed=4)
    assert digest(other) != digest(images)


def test_images_are_rgb_uint8_of_the_asked_size(small):
    images, labels = small
    assert images.shape == (600, 24, 24, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(len(CLASS_NAMES)))


def test_classes_are_imbalanced_about_four_to_one(small):
    _, labels = small
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert len(CLASS_NAMES) >= 10 and counts.sum() == 600
    assert 3.5 <= counts.max() / counts.min() <= 4.5
    flat = class_counts(600, len(CLASS_NAMES), 1.0)
    assert flat.max() - flat.min() <= 1 and flat.sum() == 600


def drawn(images: np.ndarray) -> np.ndarray:
    """Per image: whether over 4% of its pixels lie far (in RGB) from its median colour, farther than
    background texture, noise and distractor strokes reach on their own."""
    pixels = images.reshape(len(images), -1, 3).astype(np.float32)
    far = np.linalg.norm(pixels - np.median(pixels, axis=1, keepdims=True), axis=2) > 100
    return far.mean(axis=1) > 0.04


def test_every_class_draws_something_on_its_background(small, monkeypatch):
    images, labels = small
    shown = drawn(images)
    for c, name in enumerate(CLASS_NAMES):
        assert shown[labels == c].mean() > 0.95, name
    # the control: the same images with no shape drawn almost never pass
    monkeypatch.setattr(shapes, "_shape_mask", lambda contours, p, i, size: np.zeros((size, size), np.float32))
    assert drawn(render_shapes(count=600, image_size=24, seed=3)[0]).mean() < 0.05


def test_loads_through_resolve_domain_with_args():
    assert DOMAINS["shapes"] is ShapesDomain
    d = resolve_domain("shapes", {**SMALL, "seed": 1, "imbalance": 2.0})
    assert d.num_classes == len(CLASS_NAMES) and d.in_chans == 3 and d.class_names == CLASS_NAMES
    assert d.describe()["count"] == 600 and d.describe()["imbalance"] == 2.0
    splits = d.splits.as_dict()
    assert sum(len(s) for s in splits.values()) == 600
    assert d.splits.recall.ages.max() < d.splits.delta.ages.min()
    assert d.splits.train.image(0).shape == (24, 24, 3)
    assert d.splits.val.view(32).numpy(slice(0, 4)).shape == (4, 32, 32, 3)    # the trainer's read path


@pytest.mark.parametrize("args, named", [
    ({"count": 100}, "count"),
    ({"count": 400, "imbalance": 10.0}, "count"),
    ({"imbalance": 0.5}, "imbalance"),
    ({"image_size": 8}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"count": "many"}, "count"),
    ({"colour": "red"}, "colour"),
])
def test_bad_args_are_refused_naming_the_arg(args, named):
    with pytest.raises(DomainError, match=named):
        resolve_domain("shapes", args)
