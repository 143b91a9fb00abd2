"""Ages that mean something (loop/domains/ages.py): file times that only mirror the class order give
way to a stratified draw of recall and delta, and the data report warns at the top; ages that are
fine, or that a CSV's `age_column` states, keep the age-based splits of before."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from loop.domains import SPLIT_NAMES, resolve_domain
from loop.domains.ages import CONFOUNDED_V, AgeCheck, cramers_v, stratified_draw
from loop.domains.base import SplitFractions, make_splits
from loop.domains.datareport import build_data_report, load_data_report, save_data_report
from loop.domains.summary import summary_lines
from loop.report.datasection import age_warning, data_section

T0 = 1_700_000_000


def write_folder(root: Path, per_class: list[int], mtimes: list[float]) -> Path:
    """Class folders c0, c1, ... of tiny PNGs written class by class; file k gets mtimes[k]."""
    k = 0
    for c, n in enumerate(per_class):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            path = root / f"c{c}" / f"i{i}.png"
            Image.fromarray(np.full((4, 4, 3), (k * 7) % 256, np.uint8)).save(path)
            os.utime(path, (mtimes[k], mtimes[k]))
            k += 1
    return root


def class_ordered(root: Path, per_class: list[int]) -> Path:
    """As a class-by-class copy leaves them: every file of class c older than every file of c + 1."""
    return write_folder(root, per_class, [T0 + k for k in range(sum(per_class))])


def per_probe_classes(domain) -> dict[str, set[int]]:
    return {name: set(getattr(domain.splits, name).labels.tolist()) for name in ("recall", "delta")}


def fingerprints(domain) -> dict[str, str]:
    return {name: s.fingerprint()[:16] for name, s in domain.splits.as_dict().items()}


# ------------------------------------------------------------ file times ----

def test_a_folder_copied_class_by_class_keeps_every_class_in_every_probe_and_warns_at_the_top(tmp_path):
    root = class_ordered(tmp_path / "data", [15] * 6)
    d = resolve_domain("image_folder", {"root": str(root)})
    assert per_probe_classes(d) == {"recall": set(range(6)), "delta": set(range(6))}
    ages = d.splits.ages
    assert ages.ages_from == "file_mtime" and ages.fell_back and ages.lacking == {}
    assert ages.cramers_v >= CONFOUNDED_V
    assert ages.missing["delta"] and ages.missing["recall"]      # by age, each probe saw only some classes
    ids = {name: set(s.ids.tolist()) for name, s in d.splits.as_dict().items()}
    assert sum(map(len, ids.values())) == 90 == len(set().union(*ids.values()))   # still disjoint, all used
    again = resolve_domain("image_folder", {"root": str(root)})
    assert fingerprints(again) == fingerprints(d)                                  # deterministic
    other = resolve_domain("image_folder", {"root": str(root), "split_seed": 7})
    assert other.splits.delta.fingerprint() != d.splits.delta.fingerprint()       # and the seed's
    report = build_data_report(d)
    first = summary_lines(report)[0]
    assert first.startswith("WARNING AGES: age (file modification times) follows the class") and "stratified" in first
    assert "the age-based delta lacked c0" in first                                # which probe lacked which class
    figures = report.figures()
    assert figures["age_fallback"] is True and figures["ages_from"] == "file_mtime" and figures["age_warning"]
    save_data_report(tmp_path / "report.json", report)
    assert load_data_report(tmp_path / "report.json").age_warning() == report.age_warning()


def test_the_paper_warns_at_the_top_and_its_data_section_says_how_probes_were_drawn(tmp_path):
    report = build_data_report(resolve_domain("image_folder", {"root": str(class_ordered(tmp_path / "d", [12] * 3))}))
    data = SimpleNamespace(data_report=report)
    top = age_warning(data)
    assert top[0].startswith("> **WARNING: ages.** AGES: age (file modification times) follows the class")
    assert "- Ages (file_mtime): Cramér's V 0.8" in "\n".join(data_section(data))
    assert "drawn stratified" in "\n".join(data_section(data))
    assert age_warning(SimpleNamespace(data_report=None)) == []


def test_a_folder_with_shuffled_times_keeps_the_splits_of_before(tmp_path):
    rng = np.random.default_rng(3)                 # the folder whose splits were recorded before ages were checked
    t = rng.permutation(90)
    d = resolve_domain("image_folder", {"root": str(write_folder(tmp_path / "mixed", [30] * 3, list(T0 + t)))})
    assert fingerprints(d) == {"train": "bcdc5c69a8d525e4", "val": "46fc7732a1c3c510", "recall": "5cd1782152a65a5d",
                               "delta": "92c4e7f3c8bf72e8", "drift": "b5d16c32ed5aa864"}
    assert not d.splits.ages.confounded and not d.splits.ages.fell_back
    assert d.splits.recall.ages.max() < d.splits.delta.ages.min()          # recall older, delta newer
    assert build_data_report(d).age_warning() == ""


@pytest.mark.parametrize("name, args, recorded", [
    ("digits", {}, {"train": "6b3815398cd89c81", "val": "5be61fe118d20245", "recall": "947d892ffbd15edb",
                    "delta": "3f2a360899e986e4", "drift": "69e7610e35dd0fab"}),
])
def test_tasks_with_their_own_order_keep_the_splits_of_before(name, args, recorded):
    d = resolve_domain(name, args)
    assert fingerprints(d) == recorded
    assert d.splits.ages.ages_from == "order" and not d.splits.ages.confounded


def test_shapes_ages_are_fine():
    ages = resolve_domain("shapes", {"count": 720}).splits.ages
    assert ages.ages_from == "order" and not ages.confounded and not ages.fell_back


# ------------------------------------------------------------- a CSV ----

def write_csv_task(root: Path, per_class: int, classes: int, age_column: bool) -> Path:
    """A flat image folder written class by class and a labels.csv (with an age in class order)."""
    (root / "img").mkdir(parents=True)
    rows = []
    for k in range(per_class * classes):
        path = root / "img" / f"s{k:03d}.png"
        Image.fromarray(np.full((4, 4), k % 256, np.uint8)).save(path)
        os.utime(path, (T0 + k, T0 + k))
        rows.append({"id": f"s{k:03d}", "label": f"k{k // per_class}", **({"t": str(k)} if age_column else {})})
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


def test_a_csv_age_column_is_kept_even_when_it_follows_the_class(tmp_path):
    labels = write_csv_task(tmp_path, per_class=15, classes=5, age_column=True)
    d = resolve_domain("csv_labels", {"csv": str(labels), "images": str(tmp_path / "img"), "age_column": "t",
                                      "mode": "L"})
    ages = d.splits.ages
    assert ages.ages_from == "column" and ages.confounded and not ages.fell_back
    assert d.splits.recall.ages.max() < d.splits.delta.ages.min()           # the user's ages still pick them
    assert per_probe_classes(d)["delta"] != set(range(5))
    first = summary_lines(build_data_report(d))[0]
    assert first.startswith("WARNING AGES: age (the age column) follows the class")
    assert "keep these ages as stated" in first


def test_a_csv_without_an_age_column_uses_file_times_and_falls_back(tmp_path):
    labels = write_csv_task(tmp_path, per_class=15, classes=5, age_column=False)
    d = resolve_domain("csv_labels", {"csv": str(labels), "images": str(tmp_path / "img"), "mode": "L"})
    assert d.splits.ages.ages_from == "file_mtime" and d.splits.ages.fell_back
    assert per_probe_classes(d) == {"recall": set(range(5)), "delta": set(range(5))}


# ------------------------------------------------------------ the pieces ----

def test_cramers_v_is_near_zero_for_shuffled_ages_and_one_for_class_order():
    labels = np.repeat(np.arange(10), 30)
    assert cramers_v(labels, np.arange(300.0)) > 0.95
    rng = np.random.default_rng(0)
    assert max(cramers_v(labels, rng.permutation(300).astype(float)) for _ in range(10)) < 0.2


def test_the_stratified_draw_keeps_one_of_every_class_that_can_spare_one():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3 + [3] * 2 + [4])
    pool = np.arange(len(labels))
    taken, rest = stratified_draw(pool, labels, 8, seed=5, what="delta", domain="t")
    assert len(taken) == 8 and set(labels[taken]) == {0, 1, 2, 3}          # class 4 has only one image
    assert set(labels[rest]) == {0, 1, 2, 3, 4} and not set(taken) & set(rest) and len(rest) == len(pool) - 8
    again, _ = stratified_draw(pool, labels, 8, seed=5, what="delta", domain="t")
    assert np.array_equal(taken, again)
    few, _ = stratified_draw(pool, labels, 2, seed=5, what="delta", domain="t")      # fewer places than classes
    assert len(few) == 2


def test_ages_are_checked_but_only_file_times_give_way():
    labels = np.repeat(np.arange(4), 25)
    from loop.domains.base import SampleSet

    images = np.zeros((100, 2, 2, 1), np.uint8)
    for source, falls in (("order", False), ("column", False), ("file_mtime", True)):
        s = SampleSet(labels=labels, ids=np.array([str(i) for i in range(100)]), ages=np.arange(100.0),
                      channels=1, array=images, ages_from=source)
        splits = make_splits(s, SplitFractions(), 1234, "t")
        assert splits.ages.confounded and splits.ages.fell_back is falls
        assert (set(splits.delta.labels.tolist()) == set(range(4))) is falls      # by age: the newest classes only
        assert all(getattr(splits, n).ages_from == source for n in SPLIT_NAMES)


def test_an_age_check_that_is_fine_says_nothing():
    assert AgeCheck(ages_from="file_mtime", cramers_v=0.1).warning(["a", "b"]) == ""
