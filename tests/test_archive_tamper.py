"""Archive tamper campaign (issue 7, fault injection): random tampering with a real archive entry
(frozen by `archive.freeze`) is always caught by `verify`, and nothing promotes or rolls back to it.

Each trial works on a fresh copy of a template workspace (GEN_HEAD -> a promoted G001 entry), adds a
passing G002 entry, proposes it, then tampers with it the way an attacker with write access would
(chmod, change, chmod back, so the folder looks untouched). The entries hold stand-in weights
(random bytes): verification reads bytes, and every refusal comes before anything loads a model.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from loop.archive import freeze as archive
from loop.archive.gates import check_gates
from loop.archive.headswitch import cutover, rollback
from loop.archive.lifecycle import Lifecycle
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.probes import ProbeMetrics
from loop.archive.promotion import approve, propose
from loop.archive.store import load_store, save_store
from loop.candidates.scheduler import spawn_candidates
from loop.candidates.window import CandidateOutcome
from loop.config import DaemonConfig
from loop.errors import ArchiveTampered
from tests.conftest import REPO, add_archive_entry, fault_tier, record_reliability

TRIALS = 3000 if fault_tier() == "long" else 300
HEAD, TARGET = "m-G001-a", "m-G002-a"
KINDS = ("flip", "append", "truncate", "add", "rename", "remove", "rewrite_hashes", "symlink", "dir_swap",
         "rename_entry")


# ------------------------------------------------------------------ fixtures ----

def fake_run(folder: Path, rng: random.Random) -> Path:
    """A run folder with the files freeze copies; the weights are random bytes of a plausible size."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(rng.randbytes(48_000))
    (folder / "config.json").write_text('{"name": "resnet10t", "num_classes": 10}\n')
    (folder / "train_args.json").write_text('{"run": {"epochs": 1}}\n')
    (folder / "train.log").write_text("epoch 1 loss 0.5\n" * 20)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace whose GEN_HEAD is a verified, promoted G001, plus a run folder to freeze G002 from."""
    root = tmp_path_factory.mktemp("tamper")
    rng = random.Random(7)
    paths = ModelPaths(root / "template")
    add_archive_entry(paths, fake_run(root / "run-head", rng), HEAD, 1, promoted=True)
    cutover(paths, HEAD)
    store = load_store(paths)
    store.add(HEAD)
    store.state[store.row(HEAD)] = Lifecycle.FINE_TUNING
    save_store(paths, store)
    return paths, fake_run(root / "run-target", rng)


def fresh_workspace(template, folder: Path) -> ModelPaths:
    """The template copied, plus a passing G002 entry in TRAINING with a pending proposal for it."""
    source, run_dir = template
    shutil.copytree(source.workspace, folder, symlinks=True)
    paths = ModelPaths(folder)
    add_archive_entry(paths, run_dir, TARGET, 2, parent=HEAD)
    store = load_store(paths)
    store.add(TARGET)
    for state in (Lifecycle.GERMINATED, Lifecycle.TRAINING):
        store.transition(TARGET, state)
    assert propose(paths, store, [passing_outcome(paths)], HEAD, None) is not None
    save_store(paths, store)
    return paths


def passing_outcome(paths: ModelPaths) -> CandidateOutcome:
    probes = ProbeMetrics(recall=0.9, generalize=0.9, drift=0.0, violations=0, val_accuracy=0.9, parameters=10)
    return CandidateOutcome(name=TARGET, spec=spawn_candidates(2, 1, 1, ["uniform"])[0], returncode=0,
                            status="PASS", gates=check_gates(probes, None, True, 1, 0, 1), probes=probes,
                            archive_path=str(paths.entry(TARGET)))


def remove_workspace(paths: ModelPaths) -> None:
    for entry in paths.archive.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            archive.make_writable(entry)
    shutil.rmtree(paths.workspace)


# -------------------------------------------------------------------- tamper ----

def tamper(paths: ModelPaths, kind: str, rng: random.Random, name: str = TARGET) -> str:
    """Apply one tamper of `kind` to the entry `name`; returns what was done."""
    entry = paths.entry(name)
    archive.make_writable(entry)
    files = sorted(p for p in entry.iterdir())
    victim = rng.choice(files)
    if kind == "flip":
        data = bytearray(victim.read_bytes())
        offset = rng.randrange(len(data))
        data[offset] ^= rng.randrange(1, 256)
        victim.write_bytes(bytes(data))
        done = f"flipped byte {offset} of {victim.name}"
    elif kind == "append":
        with open(victim, "ab") as fh:
            fh.write(rng.randbytes(rng.randint(1, 64)))
        done = f"appended to {victim.name}"
    elif kind == "truncate":
        size = victim.stat().st_size
        os.truncate(victim, rng.randrange(size))
        done = f"truncated {victim.name}"
    elif kind == "add":
        name = rng.choice([".hidden", "extra.txt", "model.safetensors.bak", "EVAL.md~", "payload.py"])
        (entry / name).write_bytes(rng.randbytes(rng.randint(0, 256)))
        done = f"added {name}"
    elif kind == "rename":
        new = victim.with_name(rng.choice([victim.name + ".old", victim.name.upper(), "_" + victim.name]))
        victim.rename(new)
        done = f"renamed {victim.name} -> {new.name}"
    elif kind == "remove":
        victim.unlink()
        done = f"removed {victim.name}"
    elif kind == "rewrite_hashes":     # change a file, then make hashes.csv agree with it
        victim = rng.choice([p for p in files if p.name != archive.HASHES])
        victim.write_bytes(victim.read_bytes() + b"\n# edited\n")
        (entry / archive.HASHES).write_bytes(archive.hashes_csv(entry).encode("utf-8"))
        done = f"edited {victim.name} and rewrote hashes.csv to match"
    elif kind == "symlink":            # same bytes, but served from outside the archive
        outside = paths.workspace / f"outside-{victim.name}"
        shutil.copy2(victim, outside)
        victim.unlink()
        victim.symlink_to(outside)
        done = f"replaced {victim.name} by a symlink to an identical copy outside"
    elif kind == "dir_swap":
        victim.unlink()
        victim.mkdir()
        done = f"replaced {victim.name} by a folder"
    else:                              # rename_entry: the whole folder takes another name
        archive.make_read_only(entry)
        entry.rename(paths.archive / (name + "-renamed"))
        return "renamed the entry folder"
    archive.make_read_only(entry)      # cover the tracks: the folder looks untouched
    return done


# --------------------------------------------------------------------- trials ----

def refused(call) -> bool:
    try:
        call()
    except ArchiveTampered:
        return True
    return False


def assert_head_intact(paths: ModelPaths) -> None:
    assert paths.head_name() == HEAD
    assert archive.require_intact(paths, HEAD) == paths.entry(HEAD)
    assert archive.verify_archive(paths)[HEAD] == []


@pytest.mark.faults
def test_random_tampering_is_caught_and_never_promoted(template, tmp_path):
    rng = random.Random(20260207)
    cfg = DaemonConfig(workspace=str(tmp_path))
    by_kind, caught, promotions_refused, rollbacks_refused = Counter(), Counter(), 0, 0
    started = time.monotonic()
    for trial in range(TRIALS):
        kind = KINDS[trial % len(KINDS)] if trial < len(KINDS) else rng.choice(KINDS)
        paths = fresh_workspace(template, tmp_path / f"t{trial}")
        assert archive.verify_archive(paths) == {HEAD: [], TARGET: []}       # intact before
        done = tamper(paths, kind, rng)
        by_kind[kind] += 1

        report = archive.verify_archive(paths)
        assert report[HEAD] == [] and any(report.values()), (kind, done, report)
        caught[kind] += refused(lambda paths=paths: archive.require_intact(paths, TARGET))
        # promotion: the pending proposal, a new proposal, a direct cutover; rollback to it
        refusals = [refused(lambda paths=paths: approve(cfg, paths.workspace, say=lambda *_: None)),
                    refused(lambda paths=paths: propose(paths, load_store(paths), [passing_outcome(paths)],
                                                        HEAD, None)),
                    refused(lambda paths=paths: cutover(paths, TARGET))]
        assert all(refusals), (kind, done, refusals)
        promotions_refused += all(refusals)
        rollbacks_refused += refused(lambda paths=paths: rollback(paths.workspace, to=TARGET))
        assert_head_intact(paths)
        assert load_store(paths).get(TARGET) == Lifecycle.TRAINING                # nothing moved it
        remove_workspace(paths)
    seconds = round(time.monotonic() - started, 1)
    assert sum(caught.values()) == TRIALS and promotions_refused == TRIALS and rollbacks_refused == TRIALS
    assert set(by_kind) == set(KINDS)
    record_reliability("archive_tamper", trials=TRIALS, caught=sum(caught.values()), by_kind=dict(by_kind),
                       promotions_refused=promotions_refused, rollbacks_refused=rollbacks_refused, seconds=seconds)


def cli(paths: ModelPaths, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "loop.cli.main", *args, "--workspace", str(paths.workspace)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.faults
def test_cli_catches_tampering_and_refuses_with_exit_7(template, tmp_path):
    """Three entries tampered three ways: one `archive verify` names each, and `promote --approve`
    and `rollback --to` exit 7 (ArchiveTampered). Few CLI calls: each one starts Python anew."""
    paths = fresh_workspace(template, tmp_path / "ws")
    source_run = template[1]
    tampered = {TARGET: "flip", "m-G003-a": "add", "m-G004-a": "rewrite_hashes"}
    for gen, name in ((3, "m-G003-a"), (4, "m-G004-a")):
        add_archive_entry(paths, source_run, name, gen, parent=HEAD)
    assert all(not problems for problems in archive.verify_archive(paths).values())
    done = {name: tamper(paths, kind, random.Random(kind), name) for name, kind in tampered.items()}
    verify = cli(paths, "archive", "verify")
    assert verify.returncode == 7 and f"ok   {HEAD}" in verify.stdout, verify.stdout
    assert all(f"FAIL {name}" in verify.stdout for name in tampered), (done, verify.stdout)
    assert "1 of 4 archive entries intact" in verify.stdout
    for args in (("promote", "--approve"), ("rollback", "--to", "m-G004-a")):
        result = cli(paths, *args)
        assert result.returncode == ArchiveTampered.exit_code == 7, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ")
    assert_head_intact(paths)
    assert [r.name for r in read_lineage(paths.lineage) if r.promoted] == [HEAD]
