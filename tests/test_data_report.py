"""Know the data: the data report (loop/domains/datareport.py) on real image folders and the digits,
its JSON and fingerprint, the cycle step that announces it (workpad, events) and the report's Data
section, and the offline policy's task-aware search space."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from loop.agents.offline import PolicyInput, builder_decision, mentor_review
from loop.agents.space import PRETRAINED_TAG, TaskProfile, image_sizes_around, overlay_of, params_of, space_for
from loop.config import DaemonConfig, deep_merge, read_yaml, validate
from loop.cycle.cycle import run_cycle
from loop.cycle.dataprofile import refresh_data_report, task_profile
from loop.cycle.decide import offline_decision
from loop.cycle.record import CycleRecord
from loop.cycle.state import LoopState
from loop.daemon.process import build_loop, workspace_of
from loop.domains import DigitsDomain, ImageFolderDomain
from loop.domains.datareport import (
    build_data_report,
    domain_fingerprint,
    ensure_data_report,
    load_data_report,
    pixel_digest,
    save_data_report,
)
from loop.domains.summary import summary_lines
from loop.journal.events import EventLog
from loop.journal.history import RunRecord
from loop.report.data import load_data
from loop.report.paper import paper_report
from loop.trainer.config import TrainerConfig
from tests.conftest import REPO, tiny_config_dict

CLASSES = ("ant", "bee", "cat")
DUPS_PER_CLASS = 4          # one image, copied into every class: certain leaks and a label conflict


def make_folder(root: Path, per_class: int = 30, size: int = 16, dups: bool = True, broken: bool = False) -> Path:
    """3 classes of distinct random RGB PNGs, plus (dups) the same image as dup_*.png in every class
    and (broken) a file that is no image and a PNG cut short. Mtimes are set so the splits are the
    same every time."""
    rng = np.random.default_rng(0)
    dup = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    t = 1_700_000_000
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        files = [(f"img_{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for i in range(per_class)]
        files += [(f"dup_{i}.png", dup) for i in range(DUPS_PER_CLASS if dups else 0)]
        for name, pixels in files:
            Image.fromarray(pixels).save(root / c / name)
            t += 1
            os.utime(root / c / name, (t, t))
    if broken:
        (root / CLASSES[0] / "broken.png").write_bytes(b"this is not a png")
        whole = (root / CLASSES[1] / "img_000.png").read_bytes()
        (root / CLASSES[1] / "cut.png").write_bytes(whole[:len(whole) // 2])     # a header, half the pixels
    return root


def dup_ids(domain) -> dict[str, list[str]]:
    """The copies per split, known from the file names (not from pixels)."""
    return {name: [i for i in s.ids.tolist() if Path(i).name.startswith("dup_")]
            for name, s in domain.splits.as_dict().items()}


# ---------------------------------------------------------------- the report ----

def test_copies_across_splits_are_reported_as_leaks_with_their_counts(tmp_path):
    domain = ImageFolderDomain(str(make_folder(tmp_path / "data")))
    report = build_data_report(domain)
    dups = dup_ids(domain)
    assert dups["train"] and sum(len(v) for k, v in dups.items() if k != "train")   # the split put copies both sides
    leaks = {o.b: o for o in report.leaks}
    assert {b: o.images for b, o in leaks.items()} == {b: len(ids) for b, ids in dups.items() if b != "train" and ids}
    for b, o in leaks.items():
        assert o.a == "train" and all(x in dups["train"] and y in dups[b] for x, y in o.examples)
    within = {o.a: o.images for o in report.within_split}
    assert within == {s: len(ids) - 1 for s, ids in dups.items() if len(ids) > 1}
    assert report.label_conflicts == 1                                # one image, three labels
    n = len(CLASSES) * (30 + DUPS_PER_CLASS)
    assert report.images == n and report.unreadable_count == 0
    assert report.splits["train"].per_class == dict(Counter(CLASSES[lab] for lab in domain.splits.train.labels))
    assert report.sizes.median_hw == (16, 16) and report.sizes.median_side == 16 and report.channels == 3
    text = "\n".join(summary_lines(report))
    for b, o in leaks.items():
        assert f"LEAK train->{b}: {o.images} {b} image(s)" in text
    assert report.figures()["leaks"] == {f"train->{b}": o.images for b, o in leaks.items()}


def test_no_copies_no_leak_and_broken_files_are_listed_not_fatal(tmp_path):
    root = make_folder(tmp_path / "data", dups=False, broken=True)
    domain = ImageFolderDomain(str(root), skip_bad_images=True)     # the domain leaves broken.png out
    report = build_data_report(domain)
    assert report.leaks == [] and report.overlaps == [] and report.label_conflicts == 0
    found = {u.id: u for u in report.unreadable}
    assert report.unreadable_count == 2 and set(found) == {"bee/cut.png", str(root / "ant" / "broken.png")}
    assert found["bee/cut.png"].split in ("train", "val", "recall", "delta", "drift")   # decoding failed
    assert "cannot read image" in found["bee/cut.png"].error
    assert found[str(root / "ant" / "broken.png")].split == "left out"                  # never in a split
    assert report.images == 3 * 30 + 1 and report.sizes.distinct == 1                    # cut.png is in a split
    text = "\n".join(summary_lines(report))
    assert "Unreadable files: 2" in text and "bee/cut.png" in text and "none (no leak)" in text


class CopiedDigits(DigitsDomain):
    """The digits with every 40th image replaced by a copy of image 0 (an in-memory task with copies
    across splits and labels)."""

    def load_all(self):
        samples, names = super().load_all()
        samples.source.array[::40] = samples.source.array[0]
        return samples, names


@pytest.mark.parametrize("domain_cls", [DigitsDomain, CopiedDigits])
def test_digits_duplicates_match_an_independent_count(domain_cls):
    from sklearn.datasets import load_digits

    domain = domain_cls()
    report = build_data_report(domain)
    raw = load_digits().images                 # the domain's pixels before its 0..16 -> 0..255 scaling
    if domain_cls is CopiedDigits:
        raw[::40] = raw[0]
    digest = {f"digits-{i}": hashlib.sha1(raw[i].tobytes()).hexdigest() for i in range(len(raw))}
    splits = {name: [digest[i] for i in s.ids.tolist()] for name, s in domain.splits.as_dict().items()}
    train = set(splits["train"])
    expected_leaks = {b: sum(d in train for d in ds) for b, ds in splits.items() if b != "train"}
    assert {o.b: o.images for o in report.leaks} == {b: n for b, n in expected_leaks.items() if n}
    assert {o.a: o.images for o in report.within_split} == \
        {s: len(ds) - len(set(ds)) for s, ds in splits.items() if len(ds) > len(set(ds))}
    assert (domain_cls is CopiedDigits) == bool(report.leaks) == bool(report.label_conflicts)
    assert report.images == 1797 and len(report.class_names) == 10 and report.channels == 1
    assert report.sizes.min_hw == report.sizes.max_hw == (8, 8) and report.sizes.distinct == 1
    assert report.smallest_class == min(report.splits["train"].per_class.items(), key=lambda kv: (kv[1], kv[0]))


def test_pixel_digest_sees_pixels_and_shape_not_files():
    a = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert pixel_digest(a) == pixel_digest(a.copy())
    assert pixel_digest(a) != pixel_digest(a.reshape(4, 12, 1))        # same bytes, other shape
    b = a.copy()
    b[0, 0, 0] += 1
    assert pixel_digest(a) != pixel_digest(b)


def test_json_round_trip_reuse_and_rebuild_when_the_data_changes(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10, dups=False)
    path = tmp_path / "ws" / "logs" / "data_report.json"
    first, built = ensure_data_report(ImageFolderDomain(str(root)), path)
    assert built and load_data_report(path) == first
    again, built = ensure_data_report(ImageFolderDomain(str(root)), path)
    assert not built and again == first
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "bee" / "new.png")     # the data changes
    changed, built = ensure_data_report(ImageFolderDomain(str(root)), path)
    assert built and changed.fingerprint != first.fingerprint and changed.images == first.images + 1
    assert load_data_report(path).fingerprint == changed.fingerprint
    img = root / "ant" / "img_000.png"                    # rewritten in place, its mtime put back
    st = img.stat()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    rewritten, built = ensure_data_report(ImageFolderDomain(str(root)), path)
    assert built and rewritten.fingerprint != changed.fingerprint
    assert rewritten.overlaps and rewritten.images == changed.images     # two all-zero images: copies
    changed = rewritten
    path.write_text("{torn")                                                              # a torn file: rebuilt
    assert load_data_report(path) is None
    assert ensure_data_report(ImageFolderDomain(str(root)), path)[1]
    save_data_report(path, changed)
    assert json.loads(path.read_text())["fingerprint"] == changed.fingerprint == \
        domain_fingerprint(ImageFolderDomain(str(root)))


# ------------------------------------------------------------ the cycle step ----

def cycle_cfg(tmp_path: Path, root: Path, base_url: str | None = None) -> DaemonConfig:
    trainer = tmp_path / "task.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"domain": "image_folder",
                                                             "domain_args": {"root": str(root)}})))
    builder = {"builder": {"base_url": base_url, "model": "tiny", "max_attempts": 1}} if base_url else {}
    return validate(DaemonConfig, {
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "daemon_poll_seconds": 0,
        "mentor_enabled": False, "evo_period_cycles": 1000, "phase": {"schedule": "off"},
        "evolution": {"rules": {"per_class_accuracy_floor": None}}, "adaptive_timer": {"min_seconds": 0},
        "sandbox": "optional", **builder}, "<test>")


def test_the_first_cycle_reports_the_data_in_the_workpad_the_events_and_the_paper(tmp_path, llm_server):
    # The Builder (a scripted LLM) researches: the cycle starts no run, so the test stays quick.
    body = {"action": "research", "run_label": "read-the-data-report", "strategy_dimension": "evaluation",
            "rationale": "Reading the data report before choosing the first experiment on this task."}
    llm_server.script({"content": json.dumps(body)})
    cfg = cycle_cfg(tmp_path, make_folder(tmp_path / "data"), llm_server.base_url)
    ws = workspace_of(cfg).ensure()
    loop = build_loop(cfg, ws, lambda: False, lambda *_: None)
    state = run_cycle(loop, LoopState())
    events = list(EventLog(ws.events))
    [report_event] = [e for e in events if e["kind"] == "data_report"]
    [leak_event] = [e for e in events if e["kind"] == "data_leak"]
    [cycle] = [CycleRecord.from_event(e) for e in events if e["kind"] == "cycle"]
    report = load_data_report(ws.data_report)
    leaks = {f"train->{o.b}": o.images for o in report.leaks}
    assert leaks and report_event["leaks"] == leaks and report_event["images"] == report.images == 102
    assert report_event["cycle_trace_id"] == cycle.trace and cycle.data_report == f"built {report.fingerprint[:12]}"
    assert leak_event["level"] == "error" and leak_event["pairs"] == leaks and "DATA LEAK" in leak_event["message"]
    assert cycle.decision.action == "research" and cycle.run is None
    assert "LEAK train->" in json.dumps(llm_server.requests[0]["body"]["messages"])    # the Builder saw it
    workpad = ws.workpad.read_text()
    exploration = workpad[workpad.index("## Data Exploration"):]
    assert "Data report (image_folder" in exploration and "LEAK train->" in exploration
    assert loop.task_profile.native_size == 16 and loop.task_profile.channels == 3
    # the offline policy, where the cycle asks it, describes this task, not the digits
    offline = offline_decision(loop, "", [], 2)
    assert "Task image_folder: 3 classes, 102 images" in offline.data_exploration_update
    assert "training sizes tried [24, 32, 40]" in offline.data_exploration_update
    assert offline.train_overlay == {}                                    # the baseline: the config as it is
    # the next cycle on the same data reuses the report: nothing new announced
    rec = CycleRecord(cycle=state.cycle + 1, trace="c-next")
    refresh_data_report(loop, rec)
    assert rec.data_report == f"reused {report.fingerprint[:12]}" and ws.workpad.read_text() == workpad
    assert sum(e["kind"] == "data_report" for e in EventLog(ws.events)) == 1
    paper = paper_report(load_data(ws.root, 5, ""))
    top, data = paper[:paper.index("## Abstract")], paper[paper.index("## Data"):paper.index("## Method")]
    assert "WARNING: data leak" in top and all(f"train -> {o.b}: {o.images} image" in top for o in report.leaks)
    assert "102 images, 3 classes, 3 channel(s)" in data and "**Leak train ->" in data
    assert "Data leak:" in paper[paper.index("## Limitations"):]


def test_a_report_that_cannot_be_built_never_stops_the_cycle(tmp_path):
    cfg = cycle_cfg(tmp_path, tmp_path / "missing")
    ws = workspace_of(cfg).ensure()
    said: list[str] = []
    loop = build_loop(cfg, ws, lambda: False, said.append)
    for n in (1, 2):
        rec = CycleRecord(cycle=n, trace=f"c{n}")
        refresh_data_report(loop, rec)                     # raises nothing
        assert rec.data_report.startswith("failed: DomainError") and "missing" in rec.data_report
    failed = [e for e in EventLog(ws.events) if e["kind"] == "data_report_failed"]
    assert len(failed) == 1 and len(said) == 1 and loop.task_profile is None     # once per reason
    assert "## Data\n\nNo data report" in paper_report(load_data(ws.root, 5, ""))


def test_the_profile_names_configured_weights_only_when_they_exist(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10, dups=False)
    report = build_data_report(ImageFolderDomain(str(root)))
    weights = tmp_path / "w.safetensors"
    cfg = cycle_cfg(tmp_path, root)
    assert task_profile(report, {"name": "resnet18", "pretrained": str(weights)}, cfg).pretrained is False
    weights.write_bytes(b"x")
    profile = task_profile(report, {"name": "resnet18", "pretrained": str(weights)}, cfg)
    assert profile.pretrained == str(weights) and profile.backbone == "resnet18" and profile.has_weights
    assert task_profile(report, {"pretrained": True}, cfg).backbone == "resnet10t"
    assert task_profile(report, {}, cfg).has_weights is False


# ------------------------------------------------------- the task-aware policy ----

BASE = read_yaml(REPO / "config/trainer/digits.yaml")


def test_image_sizes_sit_around_the_native_size():
    assert image_sizes_around(8) == [24, 32, 40]
    assert image_sizes_around(64) == [48, 64, 80]
    assert image_sizes_around(224) == [160, 192, 224]
    for native in (1, 8, 17, 33, 64, 100, 128, 129, 224, 300, 640, 4000):
        sizes = image_sizes_around(native)
        assert len(sizes) >= 2 and all(s % 8 == 0 and 16 <= s <= 1024 for s in sizes), (native, sizes)


def profile(**kw) -> TaskProfile:
    fields = {"native_size": 64, "channels": 3, "num_classes": 5, "train_images": 4000, "images": 6000,
              "domain": "image_folder"} | kw
    return TaskProfile(**fields)


def test_the_baseline_describes_the_task_and_without_a_profile_stays_digits():
    assert "Embedded task: 10 digit classes" in builder_decision(PolicyInput(1, [])).data_exploration_update
    text = builder_decision(PolicyInput(1, [], profile=profile(leaks="3 val image(s) are exact pixel copies")
                                        )).data_exploration_update
    assert "5 classes, 6000 images (4000 for training), native size about 64 px, 3 channel(s)" in text
    assert "[48, 64, 80]" in text and "LEAK: 3 val image(s)" in text and "digit" not in text


def test_every_choice_of_a_profiled_space_round_trips_and_validates(tmp_path):
    weights = tmp_path / "w.safetensors"
    p = profile(backbone="resnet18", pretrained=str(weights))
    space = space_for(p)
    assert space["preprocessing"][1] == [48, 64, 80] and "flip_color" in space["augmentation"][1]
    assert space["model_arch"][1][0] == "resnet18" + PRETRAINED_TAG
    assert "flip_color" not in space_for(profile(channels=1))["augmentation"][1]
    for param, choices in space.values():
        for choice in choices:
            cfg = deep_merge(BASE, overlay_of({param: choice}, p))
            validate(TrainerConfig, cfg, "offline")
            assert params_of(cfg)[param] == choice, (param, choice)
    on = deep_merge(BASE, overlay_of({"model": "resnet18" + PRETRAINED_TAG}, p))["model"]
    off = deep_merge(deep_merge(BASE, {"model": {"pretrained": str(weights)}}), overlay_of({"model": "resnet14t"}, p))
    assert on == {"name": "resnet18", "pretrained": str(weights)}
    assert off["model"]["pretrained"] is False                # configured weights never load into another model
    # a pretrained run the profile has no weights for keeps the base config's model.pretrained
    assert overlay_of({"model": "resnet50" + PRETRAINED_TAG}, p) == {"model": {"name": "resnet50"}}


def test_a_profiled_policy_explores_its_own_space_and_still_knows_old_runs():
    p = profile(backbone="resnet10t", pretrained=True)
    history, seen = [], {"image_size": set(), "model": set()}
    old = deep_merge(BASE, {"data": {"image_size": 32}})                 # a run from the digits space
    assert params_of(old)["image_size"] == 32
    history.append(RunRecord("old", 0, old, True, 0.5, "preprocessing"))
    for cycle in range(1, 16):
        d = builder_decision(PolicyInput(cycle, list(history), profile=p), seed=1)
        cfg = deep_merge(BASE, d.train_overlay)
        validate(TrainerConfig, cfg, "offline")
        params = params_of(cfg)
        if d.strategy_dimension == "preprocessing":
            seen["image_size"].add(params["image_size"])
        if d.strategy_dimension == "model_arch":
            seen["model"].add(params["model"])
        history.append(RunRecord(d.run_label, cycle, cfg, True, 0.6 + 0.01 * cycle, d.strategy_dimension))
    assert seen["image_size"] and seen["image_size"] <= {48, 64, 80}
    flat = [RunRecord(r.label, r.cycle, r.config, True, 0.9 if i == 1 else 0.8, r.dimension)
            for i, r in enumerate(history)]
    review = mentor_review(PolicyInput(20, flat, profile=p), builder_decision(PolicyInput(20, flat, profile=p)))
    assert review.challenge is not None
    assert params_of(deep_merge(BASE, review.challenge.train_overlay))["model"] in space_for(p)["model_arch"][1]
