"""The retention sweep's rules on a synthetic workspace of real files (run folders the way the
trainer leaves them, archive entries frozen by the real archive functions, GEN_HEAD moved by the
real cutover), and the free-space floor against this machine's real disk."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from loop.archive import freeze as archive
from loop.archive.paths import ModelPaths
from loop.archive.proposal import Proposal, ProposalHashes
from loop.archive.pruned import MARKER, read_marker, run_pruned
from loop.config.sections import RetentionConfig
from loop.errors import ArchiveTampered
from loop.journal.events import EventLog
from loop.journal.history import RunRecord, append_history
from loop.retention.disk import DiskGuard
from loop.retention.sweep import sweep
from loop.run.supervise import ActiveRun
from loop.util.fsutil import atomic_write_text, folder_size_bytes
from loop.util.workspace import Workspace
from tests.conftest import add_archive_entry, run_cli

WEIGHTS = 40_000          # bytes of a fake weights file: big enough to measure, small enough to be quick
DAY = 86400


def model_folder(folder: Path, tag: str) -> Path:
    """A run's out/ folder with the trainer's file names (weights as opaque bytes: nothing loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes((tag.encode() * WEIGHTS)[:WEIGHTS])
    for name in ("config.json", "train_args.json", "metrics.json"):
        (folder / name).write_text(json.dumps({"of": tag}) + "\n")
    (folder / "train.log").write_text(f"epoch 1 of {tag}\n")
    return folder


def add_run(ws: Workspace, label: str, cycle: int, score: float, ok: bool = True, verdict: str | None = "below",
            checkpoint: bool = False, age_days: float = 0, **extra) -> Path:
    folder = ws.runs / f"{label}-c{cycle:05d}-abc123"
    out = model_folder(folder / "out", label)
    if checkpoint:
        (out / "checkpoint.pt").write_bytes(b"c" * WEIGHTS)
    (folder / "run.log").write_text(f"supervisor log of {label}\n")
    if age_days:
        then = time.time() - age_days * DAY
        os.utime(folder, (then, then))
    append_history(ws, RunRecord(label=label, cycle=cycle, config={"run": {"seed": cycle}}, ok=ok,
                                 score=score if ok else 0.0, trace=f"c{cycle:05d}-abc123", run_dir=str(out),
                                 verdict=verdict if ok else "failed", **extra))
    return folder


def entry(ws: Workspace, tmp: Path, name: str, gen: int, score: float, status: str = "PASS", parent: str = "",
          promoted: bool = False) -> Path:
    src = model_folder(tmp / "src" / name, name)
    return add_archive_entry(ModelPaths(ws.root), src, name, gen, status=status, parent=parent, promoted=promoted,
                             score=score)


def head_to(ws: Workspace, name: str) -> None:
    from loop.archive.promotion import cutover

    cutover(ModelPaths(ws.root), name)


def propose(ws: Workspace, name: str, head: str | None) -> None:
    paths = ModelPaths(ws.root)
    proposal = Proposal(current_head=head, proposed_head=name, reason="test", improvement=0.01, score=0.5,
                        head_score=None, metrics=None, gates={}, timestamp="2026-01-01T00:00:00Z",
                        hashes=ProposalHashes(model="m", manifest="m", hashes_csv="h"))
    atomic_write_text(paths.proposal, proposal.model_dump_json(indent=2) + "\n")


def weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "out" / "model.safetensors").exists()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


# ------------------------------------------------------------------ archive ----

def test_archive_keeps_head_lineage_promoted_proposal_and_top_k(ws, tmp_path):
    # G1 <- G2 <- G3 (HEAD); G4 promoted once (a rollback target); G9 proposed; the rest by score
    names = {i: f"llmloop-G{i:03d}-a-20260101-00000{i}" for i in range(1, 10)}
    scores = {1: 0.10, 2: 0.20, 3: 0.30, 4: 0.15, 5: 0.90, 6: 0.80, 7: 0.40, 8: 0.50, 9: 0.05}
    for i, name in names.items():
        parent = names[i - 1] if i in (2, 3) else ""
        entry(ws, tmp_path, name, i, scores[i], parent=parent, promoted=i in (1, 2, 3, 4))
    entry(ws, tmp_path, "llmloop-G010-f-20260101-000010", 10, 0.0, status="FAIL - gates: recall")
    head_to(ws, names[3])
    propose(ws, names[9], names[3])
    paths = ModelPaths(ws.root)
    before = {n: (paths.entry(n) / "model.safetensors").read_bytes() for n in names.values()}

    result = sweep(ws, RetentionConfig(keep_top_k=2, max_workspace_gb=None))

    pruned = {p.name for p in result.pruned}
    assert pruned == {names[7], names[8]}                    # PASS, outside the top 2 (G5, G6), unprotected
    assert result.bytes_freed == 2 * WEIGHTS
    for name in names.values():
        folder = paths.entry(name)
        assert weights(folder) == (name not in pruned)
        assert (folder / "metrics.json").exists() and (folder / "train.log").exists()   # the record stays
        if name not in pruned:
            assert (folder / "model.safetensors").read_bytes() == before[name]
    assert weights(paths.entry("llmloop-G010-f-20260101-000010"))       # failed today: kept 7 days
    marker = read_marker(paths.entry(names[7]))
    assert marker.names() == {"model.safetensors"} and "outside the top 2" in marker.reason
    assert {name: probs for name, probs in archive.verify_archive(paths).items() if probs} == {}
    with pytest.raises(ArchiveTampered, match="pruned by retention"):
        archive.require_intact(paths, names[7])
    assert archive.require_intact(paths, names[3]) == paths.entry(names[3])
    assert sweep(ws, RetentionConfig(keep_top_k=2, max_workspace_gb=None)).pruned == []   # nothing twice


def test_verify_still_catches_what_the_marker_does_not_excuse(ws, tmp_path):
    names = [f"llmloop-G00{i}-a-20260101-00000{i}" for i in (1, 2, 3)]
    for i, name in enumerate(names, start=1):
        entry(ws, tmp_path, name, i, 0.1 * i)
    paths = ModelPaths(ws.root)
    sweep(ws, RetentionConfig(keep_top_k=1, max_workspace_gb=None))
    pruned = paths.entry(names[0])
    assert read_marker(pruned) is not None
    archive.make_writable(pruned)
    (pruned / "EVAL.md").unlink()                                     # a file the marker does not list
    archive.make_read_only(pruned)
    problems = archive.verify_archive(paths)[names[0]]
    assert problems == [f"{names[0]}: EVAL.md is missing"]
    # a marker planted to excuse a deletion it did not make, with the wrong digest: caught
    other = paths.entry(names[2])                                    # the top 1: kept whole
    archive.make_writable(other)
    (other / "model.safetensors").unlink()
    (other / MARKER).write_text(json.dumps({"pruned_at": "x", "reason": "forged", "files": [
        {"name": "model.safetensors", "sha256": "0" * 64, "bytes": 1}]}))
    archive.make_read_only(other)
    assert any("does not record with that sha256" in p for p in archive.verify_archive(paths)[names[2]])
    assert any("model.safetensors is missing" in p for p in archive.verify_archive(paths)[names[2]])


def test_archive_list_and_verify_say_pruned(ws, tmp_path):
    names = [f"llmloop-G00{i}-a-20260101-00000{i}" for i in (1, 2)]
    for i, name in enumerate(names, start=1):
        entry(ws, tmp_path, name, i, 0.1 * i)
    sweep(ws, RetentionConfig(keep_top_k=1, max_workspace_gb=None))
    listed = run_cli("archive", "list", "--workspace", str(ws.root))
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if names[0] in ln)
    assert "[pruned: model.safetensors by retention" in line
    assert "pruned" not in next(ln for ln in listed.stdout.splitlines() if names[1] in ln)
    verified = run_cli("archive", "verify", "--workspace", str(ws.root))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 of 2 archive entries intact" in verified.stdout and "[pruned:" in verified.stdout


def test_an_entry_killed_mid_prune_is_finished_by_the_next_sweep(ws, tmp_path):
    names = [f"llmloop-G00{i}-a-20260101-00000{i}" for i in (1, 2)]
    for i, name in enumerate(names, start=1):
        entry(ws, tmp_path, name, i, 0.1 * i)
    paths = ModelPaths(ws.root)
    folder = paths.entry(names[0])
    sha = dict(archive._recorded_hashes((folder / archive.HASHES).read_text())[0])["model.safetensors"]
    # as a kill after the marker's rename and before the unlink leaves it: writable, weights still there
    folder.chmod(0o755)
    (folder / MARKER).write_text(json.dumps({"pruned_at": "t", "reason": "r", "files": [
        {"name": "model.safetensors", "sha256": sha, "bytes": WEIGHTS}]}))
    (folder / f".{MARKER}.x1.tmp").write_text("half")
    assert archive.verify_archive(paths)[names[0]]                       # writable, a temp file added
    result = sweep(ws, RetentionConfig(keep_top_k=5, max_workspace_gb=None))
    assert names[0] in result.repaired and not weights(folder)
    assert all(not p for p in archive.verify_archive(paths).values())


# --------------------------------------------------------------------- runs ----

def test_runs_keep_incumbent_top_k_continuations_active_and_young_failures(ws):
    best = add_run(ws, "best", 1, 0.90, verdict="first")
    top2 = add_run(ws, "second", 2, 0.75)
    low = [add_run(ws, f"low{i}", 2 + i, 0.30 + i / 100) for i in range(1, 4)]
    screens = [add_run(ws, f"screen{i}", 10 + i, 0.5 + i / 10, verdict="screen", checkpoint=True, fidelity=0.34)
               for i in range(4)]
    capped = add_run(ws, "capped", 20, 0.2, checkpoint=True, stopped_at_cap=True, fidelity=0.5)
    young_fail = add_run(ws, "young-fail", 21, 0, ok=False, age_days=1)
    old_fail = add_run(ws, "old-fail", 22, 0, ok=False, checkpoint=True, age_days=30)
    flight = ws.runs / "in-flight-c00023-abc123"
    model_folder(flight / "out", "in-flight")
    active = [ActiveRun(label="in-flight", trace_id="t", kind="train", argv=[], run_dir=str(flight),
                        log_path=str(flight / "run.log"), exit_file="", pid=1, create_time=0, started_at=0,
                        cycle_started=23)]

    result = sweep(ws, RetentionConfig(keep_top_k=2, max_workspace_gb=None, keep_failed_runs_days=7), active)

    pruned = {p.name for p in result.pruned}
    # top 2 ok runs by score: screen3 (0.8), best (0.9); screens ranked 1-2 among screens stay continuable
    assert pruned == {low[0].name, low[1].name, low[2].name, top2.name, screens[0].name, screens[1].name,
                      old_fail.name}
    for folder in (best, screens[2], screens[3], capped, young_fail, flight):
        assert weights(folder), folder.name
    assert (capped / "out" / "checkpoint.pt").exists() and (screens[3] / "out" / "checkpoint.pt").exists()
    for folder in low + [top2, old_fail]:
        assert not weights(folder) and not (folder / "out" / "checkpoint.pt").exists()
        for kept in ("out/metrics.json", "out/config.json", "out/train_args.json", "out/train.log", "run.log"):
            assert (folder / kept).exists(), f"{folder.name}/{kept}"
        assert run_pruned(folder / "out")
    old = next(p for p in result.pruned if p.name == old_fail.name)
    assert old.files == ["out/checkpoint.pt", "out/model.safetensors"] and old.bytes == 2 * WEIGHTS
    assert "more than 7 days ago" in old.reason


def test_no_age_limit_on_failures_keeps_every_failed_run(ws):
    """keep_failed_runs_days: null keeps failures however old (it once failed the sweep: `None:g`)."""
    add_run(ws, "best", 1, 0.90, verdict="first")
    old_fail = add_run(ws, "old-fail", 2, 0, ok=False, checkpoint=True, age_days=300)
    result = sweep(ws, RetentionConfig(keep_top_k=1, max_workspace_gb=None, keep_failed_runs_days=None), [])
    assert old_fail.name not in {p.name for p in result.pruned} and weights(old_fail)


def test_a_pruned_screen_is_no_longer_offered_for_continuation(ws):
    from loop.agents.ladder import promotable
    from loop.journal.history import read_history

    for i in range(6):
        add_run(ws, f"screen{i}", i + 1, 0.5 + i / 100, verdict="screen", checkpoint=True, fidelity=0.34)
    assert [r.label for r in promotable(read_history(ws))] == ["screen5", "screen4"]
    sweep(ws, RetentionConfig(keep_top_k=1, max_workspace_gb=None))
    left = promotable(read_history(ws))               # the promotable ones were kept whole
    assert [r.label for r in left] == ["screen5", "screen4"]
    shutil.rmtree(ws.runs / "screen5-c00006-abc123" / "out")         # pretend it was continued and pruned
    (ws.runs / "screen4-c00005-abc123" / MARKER).write_text(json.dumps(
        {"pruned_at": "t", "reason": "r", "files": [{"name": "out/checkpoint.pt"}]}))
    assert "screen4" not in [r.label for r in promotable(read_history(ws))]


# ---------------------------------------------------------------- the cap ----

def test_over_the_cap_goes_past_top_k_but_never_past_head_and_its_lineage(ws, tmp_path):
    names = [f"llmloop-G00{i}-a-20260101-00000{i}" for i in range(1, 7)]
    for i, name in enumerate(names, start=1):
        entry(ws, tmp_path, name, i, 0.1 * i, parent=names[i - 2] if i == 2 else "", promoted=i <= 2)
    head_to(ws, names[1])                                           # G2 (parent G1), both promoted
    runs = [add_run(ws, f"r{i}", i, 0.1 * i, verdict="first" if i == 4 else "below") for i in range(1, 5)]
    young_fail = add_run(ws, "young-fail", 9, 0, ok=False, age_days=1)
    cap_gb = (folder_size_bytes(ws.root) - 3 * WEIGHTS + 1000) / 1e9   # room for all but three weights

    result = sweep(ws, RetentionConfig(keep_top_k=10, max_workspace_gb=cap_gb, keep_failed_runs_days=7))

    order = [p.name for p in result.pruned]
    assert order == [young_fail.name, runs[0].name, runs[1].name]  # failures first, then the lowest scores
    assert result.workspace_gb_after <= cap_gb and not result.over_cap
    # a cap below what must stay: everything else goes, HEAD and its lineage stay, and it says so
    tiny = sweep(ws, RetentionConfig(keep_top_k=10, max_workspace_gb=1e-6))
    assert tiny.over_cap
    assert weights(ModelPaths(ws.root).entry(names[0])) and weights(ModelPaths(ws.root).entry(names[1]))
    assert weights(runs[3])                                         # the incumbent (best ok run) stays
    assert not any(weights(ModelPaths(ws.root).entry(n)) for n in names[2:])


# ------------------------------------------------------- links, outside ----

def test_never_follows_a_link_nor_deletes_outside_the_workspace(ws, tmp_path):
    outside = model_folder(tmp_path / "outside" / "out", "outside")
    linked = ws.runs / "linked-c00001-abc123"
    linked.mkdir()
    (linked / "out").symlink_to(outside)                            # a run that made its out/ a link
    append_history(ws, RunRecord(label="linked", cycle=1, config={}, ok=True, score=0.1, run_dir=str(linked / "out")))
    far = model_folder(tmp_path / "elsewhere" / "r" / "out", "far")  # an index row naming a folder outside
    append_history(ws, RunRecord(label="far", cycle=2, config={}, ok=True, score=0.2, run_dir=str(far)))
    weights_link = model_folder(ws.runs / "wlink-c00003-abc123" / "out", "wlink")
    (weights_link / "model.safetensors").unlink()
    (weights_link / "model.safetensors").symlink_to(outside / "model.safetensors")
    append_history(ws, RunRecord(label="wlink", cycle=3, config={}, ok=True, score=0.3, run_dir=str(weights_link)))
    add_run(ws, "best", 4, 0.9, verdict="first")

    result = sweep(ws, RetentionConfig(keep_top_k=1, max_workspace_gb=1e-6))

    assert (outside / "model.safetensors").exists() and (far / "model.safetensors").exists()
    assert (weights_link / "model.safetensors").is_symlink()        # a link is not a weights file to remove
    assert {p.name for p in result.pruned} == set()
    assert any("outside the workspace" in r for r in result.refused)
    assert any("linked-c00001-abc123" in r for r in result.refused)


# --------------------------------------------------------- free space ----

def test_disk_low_is_said_once_and_disk_ok_when_back(ws):
    events = EventLog(ws.events)
    free_gb = shutil.disk_usage(ws.root).free / 1e9
    guard = DiskGuard(RetentionConfig(min_free_gb=free_gb + 1000), ws, events)   # this disk, a floor above it
    low = guard.check("t1")
    assert low is not None and low.path == str(ws.root) and low.min_free_gb == free_gb + 1000
    assert guard.check("t2") is not None
    again = DiskGuard(RetentionConfig(min_free_gb=free_gb + 1000), ws, events)    # a daemon restarted meanwhile
    assert again.check("t3") is not None
    kinds = [e["kind"] for e in events]
    assert kinds == ["disk_low"]
    (event,) = list(events)
    assert set(event) == {"ts", "kind", "cycle_trace_id", "free_gb", "min_free_gb", "path"}
    back = DiskGuard(RetentionConfig(min_free_gb=0.0), ws, events)
    assert back.check("t4") is None and back.check("t5") is None
    assert [e["kind"] for e in events] == ["disk_low", "disk_ok"]
    assert DiskGuard(RetentionConfig(min_free_gb=None), ws, events).check("t6") is None


def test_the_shipped_defaults_prune_nothing_in_a_small_workspace(ws, tmp_path):
    from loop.config import load_daemon_config
    from tests.conftest import REPO

    cfg = load_daemon_config(REPO / "config" / "daemon_config.yaml").retention
    assert cfg == RetentionConfig()
    for i in range(1, 6):
        entry(ws, tmp_path, f"llmloop-G00{i}-a-20260101-00000{i}", i, 0.1 * i)
        add_run(ws, f"r{i}", i, 0.1 * i)
    add_run(ws, "fail", 9, 0, ok=False, age_days=2)
    result = sweep(ws, cfg)
    assert result.pruned == [] and not result.over_cap
