"""The data pipeline on real files: the csv_labels domain, bad rows, the decoded-pixel cache
(built once, rebuilt on change, safe under concurrent builders), streaming views, and the daemon
training an image-folder task and a CSV-labelled copy of it."""
from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from loop.domains import resolve_domain
from loop.domains.pixels import CACHE_ENV, PixelSource, cache_path, resize
from loop.errors import DomainError

CLASSES = ("cat", "dog", "owl")


def make_task(root: Path, per_class: int = 40, size: int = 20, seed: int = 0) -> tuple[Path, Path, Path]:
    """The same images as a class-folder tree and as a flat folder + labels.csv."""
    rng = np.random.default_rng(seed)
    tree, flat = root / "tree", root / "flat"
    flat.mkdir(parents=True)
    rows = []
    for label, name in enumerate(CLASSES):
        (tree / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[:, :, label] += 180                     # the class is the dominant channel
            sid = f"{name}{i:03d}"
            Image.fromarray(img).save(tree / name / f"{sid}.png")
            Image.fromarray(img).save(flat / f"{sid}.png")
            rows.append({"id": sid, "label": name})
    labels = root / "labels.csv"
    write_csv(labels, rows)
    return tree, flat, labels


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def task(tmp_path):
    return make_task(tmp_path)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


# ------------------------------------------------------------ csv_labels ----

def test_csv_labels_matches_the_image_folder_copy(task):
    tree, flat, labels = task
    by_csv = resolve_domain("csv_labels", {"csv": str(labels), "images": str(flat)})
    by_tree = resolve_domain("image_folder", {"root": str(tree)})
    assert by_csv.class_names == by_tree.class_names == sorted(CLASSES)
    assert len(by_csv.splits.train) == len(by_tree.splits.train)
    assert by_csv.in_chans == 3
    # same image behind the same id
    sid = by_csv.splits.val.ids[0]
    i = list(by_csv.splits.val.ids).index(sid)
    tree_ids = [Path(p).stem for p in by_tree.splits.val.ids.tolist() + by_tree.splits.train.ids.tolist()
                + by_tree.splits.recall.ids.tolist() + by_tree.splits.delta.ids.tolist()
                + by_tree.splits.drift.ids.tolist()]
    assert sid in tree_ids
    img = by_csv.splits.val.image(i)
    assert img.shape == (20, 20, 3)
    assert np.array_equal(img, np.asarray(Image.open(flat / f"{sid}.png")))


def test_csv_paths_ages_and_numeric_labels(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    rows = []
    for i in range(60):
        Image.fromarray(np.full((8, 8), i * 4, np.uint8)).save(tmp_path / "img" / "a" / f"{i}.png")
        rows.append({"file": f"a/{i}.png", "y": str([2, 10][i % 2]), "t": str(i)})
    write_csv(tmp_path / "train.csv", rows)
    d = resolve_domain("csv_labels", {"csv": str(tmp_path / "train.csv"), "images": str(tmp_path / "img"),
                                      "path_column": "file", "id_column": "file", "label_column": "y",
                                      "age_column": "t", "mode": "L"})
    assert d.class_names == ["2", "10"]                  # numerically, not as text
    assert d.in_chans == 1
    assert d.splits.delta.ages.min() >= 40              # the delta set comes from the newest rows


def test_missing_columns_are_named(task):
    _, flat, labels = task
    with pytest.raises(DomainError, match=r"labels.csv: no column 'target'; its columns are id, label"):
        _ = resolve_domain("csv_labels", {"csv": str(labels), "images": str(flat), "label_column": "target"}).splits


def test_bad_rows_are_refused_by_row_number_or_skipped_and_listed(task):
    _, flat, labels = task
    rows = list(csv.DictReader(open(labels)))
    (flat / "broken.png").write_bytes(b"not an image")
    rows += [{"id": "gone", "label": "cat"}, {"id": "broken", "label": "dog"}, {"id": "cat000", "label": ""}]
    rows[0], rows[-1] = rows[-1], rows[0]             # an empty label also on an early row
    rows[0]["id"] = "cat000"
    rows[-1]["id"] = "cat999"
    write_csv(labels, rows)
    args = {"csv": str(labels), "images": str(flat)}
    with pytest.raises(DomainError) as err:
        _ = resolve_domain("csv_labels", args).splits
    msg = str(err.value)
    n = len(rows) + 1
    assert "4 bad image entries" in msg and "skip_bad_images" in msg
    assert "CSV row 2: empty label" in msg
    assert f"CSV row {n - 2}: image file missing" in msg
    assert f"CSV row {n - 1}: not a readable image" in msg
    assert f"CSV row {n}: image file missing" in msg        # cat999 does not exist
    d = resolve_domain("csv_labels", {**args, "skip_bad_images": True})
    assert len(d.bad_images) == 4
    total = sum(len(s) for s in d.splits.as_dict().values())
    assert total == len(rows) - 4


def test_duplicate_ids_are_refused(task):
    _, flat, labels = task
    rows = list(csv.DictReader(open(labels)))
    write_csv(labels, rows + rows[:1])
    with pytest.raises(DomainError, match=r"id 'cat000' appears twice \(CSV row 2 and CSV row"):
        _ = resolve_domain("csv_labels", {"csv": str(labels), "images": str(flat)}).splits


# ---------------------------------------------------------------- the cache ----

def test_cache_is_built_once_streamed_and_rebuilt_when_data_changes(task, own_cache):
    tree, _, _ = task
    d = resolve_domain("image_folder", {"root": str(tree)})
    view = d.splits.train.view(16)
    path = cache_path(d.splits.train.source, 16)
    assert path.exists() and isinstance(view.pixels, np.memmap)
    first = path.stat().st_mtime_ns
    # the view's batches are the resized images, in the split's order
    batch = view[3:7]
    assert batch.shape == (4, 3, 16, 16) and batch.dtype.__str__() == "torch.uint8"
    for k, i in enumerate(range(3, 7)):
        want = resize(d.splits.train.image(i), 16)
        assert np.array_equal(batch[k].permute(1, 2, 0).numpy(), want)
    # a new domain object over unchanged data reuses the file
    again = resolve_domain("image_folder", {"root": str(tree)})
    again.splits.val.view(16)
    assert cache_path(again.splits.val.source, 16) == path and path.stat().st_mtime_ns == first
    # a changed file means a new key and a rebuild with the new pixels
    victim_id, victim = again.splits.train.ids[0], Path(again.splits.train.path(0))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(first + 10**9, first + 10**9))
    changed = resolve_domain("image_folder", {"root": str(tree)})
    new_path = cache_path(changed.splits.train.source, 16)
    assert new_path != path
    split = next(s for s in changed.splits.as_dict().values() if victim_id in s.ids)
    at = split.ids.tolist().index(victim_id)
    assert split.view(16)[at:at + 1].sum() == 0 and new_path.exists()


def _build_in_child(paths: list[str], cache: str, out: str) -> None:
    os.environ[CACHE_ENV] = cache
    src = PixelSource(3, paths=tuple(paths))
    np.save(out, np.asarray(src.decoded(24)))


def test_concurrent_builders_share_one_complete_cache(task, own_cache, tmp_path):
    tree, _, _ = task
    paths = sorted(str(p) for p in tree.rglob("*.png"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_child, args=(paths, str(own_cache), str(tmp_path / f"r{i}.npy")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [np.load(tmp_path / f"r{i}.npy") for i in range(3)]
    assert all(np.array_equal(results[0], r) for r in results[1:])
    assert len(list(own_cache.glob("*.npy"))) == 1 and not list(own_cache.glob(".building-*"))
    want = np.stack([resize(np.asarray(Image.open(p).convert("RGB")), 24) for p in paths])
    assert np.array_equal(results[0], want)


def test_a_file_that_breaks_while_decoding_is_named_and_nothing_is_cached(task, own_cache):
    _, flat, labels = task
    d = resolve_domain("csv_labels", {"csv": str(labels), "images": str(flat)})
    d.splits   # noqa: B018 (the header scan passes: the file is still whole)
    victim = Path(d.splits.train.path(2))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])        # the header parses, the pixels do not
    with pytest.raises(DomainError, match=r"1 image\(s\) cannot be decoded: CSV row \d+: .*cannot read image"):
        d.splits.train.view(16)
    assert not list(own_cache.glob("*.npy")) and not list(own_cache.glob(".building-*"))


def test_facts_give_native_sizes_and_pixel_digests(task):
    tree, _, _ = task
    shutil.copy(tree / "cat" / "cat000.png", tree / "dog" / "copy_of_cat000.png")
    d = resolve_domain("image_folder", {"root": str(tree)})
    every = d.splits.train.concat(d.splits.val).concat(d.splits.recall).concat(d.splits.delta) \
        .concat(d.splits.drift)
    facts = every.facts(16)
    assert set(facts.heights.tolist()) == {20} and set(facts.widths.tolist()) == {20}
    ids = every.ids.tolist()
    a, b = ids.index("cat/cat000.png"), ids.index("dog/copy_of_cat000.png")
    assert facts.digests[a] == facts.digests[b]
    assert len(set(facts.digests.tolist())) == len(ids) - 1


# ------------------------------------------------------- through the daemon ----

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image_folder", "csv_labels"])
def test_the_daemon_trains_a_folder_task_and_its_csv_copy(tmp_path, kind):
    from loop.config import DaemonConfig, validate
    from loop.daemon.process import run_daemon, workspace_of
    from loop.journal.history import read_history

    tree, flat, labels = make_task(tmp_path / "data", per_class=30)
    domain = {"image_folder": {"domain": "image_folder", "domain_args": {"root": str(tree)}},
              "csv_labels": {"domain": "csv_labels", "domain_args": {"csv": str(labels), "images": str(flat)}}}[kind]
    trainer = tmp_path / "task.yaml"
    trainer.write_text(yaml.safe_dump({
        "data": {**domain, "image_size": 16, "batch_size": 16}, "model": {"name": "resnet10t"},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "cosine", "warmup_epochs": 0},
        "run": {"seed": 1, "epochs": 2, "threads": 2}}))
    cfg = validate(DaemonConfig, {
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
        "sandbox": "required" if shutil.which("bwrap") else "optional",
        "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
        "phase": {"schedule": "off"}, "evo_period_cycles": 99}, "<test>")
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
    assert state.cycle == 1
    runs = read_history(ws)
    assert runs and runs[-1].ok, runs
    assert runs[-1].score > 1 / len(CLASSES)
    # the run read the workspace's shared cache (inside the sandbox when there is one)
    assert list(Path(os.environ[CACHE_ENV]).glob("*-16px.npy"))


def test_the_data_report_reads_the_cache_facts_and_agrees_with_decoding(task, own_cache):
    from loop.domains.datareport import build_data_report, cached_facts

    tree, _, _ = task
    for i in range(6):      # copies across classes: some land in train and in a held-out split
        shutil.copy(tree / "cat" / f"cat00{i}.png", tree / "owl" / f"copy{i}.png")
    d = resolve_domain("image_folder", {"root": str(tree)})
    from_cache = build_data_report(d, cached_facts(16))
    assert list(own_cache.glob("*-16px.npy"))           # it built (and read) the training-size cache
    decoded = build_data_report(d)
    assert from_cache.overlaps == decoded.overlaps and from_cache.sizes == decoded.sizes
    assert from_cache.label_conflicts == decoded.label_conflicts == 6
