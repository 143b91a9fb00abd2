"""SPICA domains: fixed, disjoint splits and probe sets; the image_folder task; refusal of non-SPICA."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from loop.domains import DOMAINS, SPLIT_NAMES, SpicaDomain, require_spica, resolve_domain
from loop.errors import DomainError


def ids_of(domain):
    return {name: set(s.ids.tolist()) for name, s in domain.splits.as_dict().items()}


def test_digits_splits_are_disjoint_and_cover_everything():
    d = resolve_domain("digits")
    ids = ids_of(d)
    total = sum(len(v) for v in ids.values())
    assert total == 1797 == len(set().union(*ids.values()))
    for a in SPLIT_NAMES:
        for b in SPLIT_NAMES:
            if a < b:
                assert not ids[a] & ids[b], f"{a} and {b} overlap"
    assert d.num_classes == 10 and d.in_chans == 1 and d.class_names[3] == "3"


def test_probe_sets_are_fixed_across_instances():
    a, b = resolve_domain("digits"), resolve_domain("digits")
    for name in SPLIT_NAMES:
        assert getattr(a.splits, name).fingerprint() == getattr(b.splits, name).fingerprint()
    other = resolve_domain("digits", {"split_seed": 99})
    assert other.splits.recall.fingerprint() != a.splits.recall.fingerprint()


def test_recall_is_older_and_delta_is_newer():
    s = resolve_domain("digits").splits
    assert s.recall.ages.max() < s.delta.ages.min()


def test_probe_sets_are_stratified():
    s = resolve_domain("digits").splits
    for name in ("val", "recall", "delta", "drift"):
        counts = np.bincount(getattr(s, name).labels, minlength=10)
        assert counts.min() >= 0.6 * counts.max(), f"{name} is not stratified: {counts}"


def test_norm_stats_are_sane():
    mean, std = resolve_domain("digits").norm_stats
    assert len(mean) == 1 and 0.1 < mean[0] < 0.6 and 0.1 < std[0] < 0.6


def make_folder(root, per_class=(12, 12, 12), mode="RGB", size=10):
    rng = np.random.default_rng(0)
    for c, n in enumerate(per_class):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            arr = np.clip(rng.normal(60 * c + 40, 20, shape), 0, 255).astype(np.uint8)
            path = folder / f"img_{i}.png"
            Image.fromarray(arr).save(path)
            os.utime(path, (1_000_000 + i, 1_000_000 + i))   # later index = newer file
    return root


def test_image_folder_domain(tmp_path):
    root = make_folder(tmp_path / "data", per_class=(20, 20, 20))
    d = resolve_domain("image_folder", {"root": str(root)})
    assert d.class_names == ["class_0", "class_1", "class_2"] and d.in_chans == 3
    ids = ids_of(d)
    assert sum(len(v) for v in ids.values()) == 60 == len(set().union(*ids.values()))
    img = d.splits.train.image(0)
    assert img.shape == (10, 10, 3) and img.dtype == np.uint8
    assert set(np.unique(d.splits.val.labels)) == {0, 1, 2}
    gray = resolve_domain("image_folder", {"root": str(root), "mode": "L"})
    assert gray.in_chans == 1 and gray.splits.train.image(0).shape == (10, 10, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DomainError, match="is not a folder"):
        _ = resolve_domain("image_folder", {"root": str(tmp_path / "missing")}).splits
    one = tmp_path / "one"
    make_folder(one, per_class=(5,))
    with pytest.raises(DomainError, match="at least two class sub-folders"):
        _ = resolve_domain("image_folder", {"root": str(one)}).splits
    empty = tmp_path / "empty"
    make_folder(empty, per_class=(5, 5))
    (empty / "class_2").mkdir()
    with pytest.raises(DomainError, match="holds no images"):
        _ = resolve_domain("image_folder", {"root": str(empty)}).splits


class NotADomain:
    name = "impostor"


def test_non_spica_domains_are_refused(tmp_path, monkeypatch):
    with pytest.raises(DomainError, match="is not a SpicaDomain"):
        require_spica(NotADomain())
    module = tmp_path / "user_tasks.py"
    module.write_text("class Impostor:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DomainError, match="user_tasks:Impostor is not a SpicaDomain"):
        resolve_domain("user_tasks:Impostor")
    with pytest.raises(DomainError, match="unknown domain 'mnist'"):
        resolve_domain("mnist")
    sys.modules.pop("user_tasks", None)


def test_user_spica_domain_by_path(tmp_path, monkeypatch):
    module = tmp_path / "user_tasks2.py"
    module.write_text(
        "import numpy as np\n"
        "from loop.domains import SpicaDomain, SampleSet\n"
        "class Stripes(SpicaDomain):\n"
        "    name = 'stripes'\n"
        "    def load_all(self):\n"
        "        n = 200\n"
        "        labels = np.arange(n) % 2\n"
        "        arr = np.zeros((n, 8, 8, 1), np.uint8)\n"
        "        arr[labels == 1, ::2] = 255\n"
        "        return SampleSet(labels=labels, ids=np.array([str(i) for i in range(n)]),\n"
        "                         ages=np.arange(n, dtype=float), channels=1, array=arr), ['flat', 'striped']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    d = resolve_domain("user_tasks2:Stripes")
    assert isinstance(d, SpicaDomain) and d.num_classes == 2 and len(d.splits.train) > 100
    sys.modules.pop("user_tasks2", None)


def test_every_registered_domain_derives_spica():
    for name, cls in DOMAINS.items():
        assert issubclass(cls, SpicaDomain) and cls.name == name
