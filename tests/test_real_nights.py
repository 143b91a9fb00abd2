"""The whole daemon as users run it, on what broke a real night (issue 20): an augmented image
folder of thousands of files trained in the real sandbox with loader workers, a configuration that
fails the same way every time (blocked, not looped on), and a digits night with PHASE's window open
at the start that never trains a configuration twice."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.cycle.state import LoopState
from loop.daemon.process import run_daemon, workspace_of
from loop.journal.events import EventLog
from loop.journal.history import read_history
from loop.util.netwatch import MARK
from tests.conftest import REPO, tiny_config_dict

NETWORK_SIGNS = (MARK, "urlopen error", "Error fetching version", "Temporary failure in name resolution")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed here")


def daemon_cfg(tmp_path: Path, trainer: dict, **extra) -> DaemonConfig:
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer))
    data = {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(path),
            "sandbox": "required" if shutil.which("bwrap") else "optional",
            "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
            "phase": {"schedule": "off"}, "evo_period_cycles": 99,
            "evolution": {"rules": {"per_class_accuracy_floor": None}}}
    data.update(extra)
    return validate(DaemonConfig, data, "<test>")


def events(ws, kind: str) -> list[dict]:
    return [e for e in EventLog(ws.root / "events.jsonl") if e["kind"] == kind]


# ------------------------------------------------- an image folder of real size ----

@needs_bwrap
@pytest.mark.slow
def test_an_augmented_image_folder_trains_with_loader_workers_in_the_sandbox(tmp_path, shapes_folder):
    """7,200 PNG files, augmentation on: over 4,096 training images, so the trainer starts loader
    workers, inside bubblewrap as the sandbox user; the run is ok and its log shows no network attempt."""
    trainer = {"data": {"domain": "image_folder", "domain_args": {"root": str(shapes_folder)}, "image_size": 16,
                        "batch_size": 128, "augment": [{"name": "Affine", "args": {"rotate": [-8, 8], "p": 0.5}}]},
               "model": {"name": "resnet10t"}, "schedule": {"name": "cosine", "warmup_epochs": 0},
               "run": {"seed": 1, "epochs": 1, "threads": 2}}
    cfg = daemon_cfg(tmp_path, trainer, default_monitor_seconds=900)
    ws = workspace_of(cfg)
    run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
    runs = read_history(ws)
    assert runs and runs[-1].ok, runs[-1].failure if runs else "no run"
    log = next(Path(runs[-1].run_dir).parent.glob("run.log")).read_text()
    head = next(line for line in log.splitlines() if " train " in line and "loader worker" in line)
    workers = int(head.split(" loader worker")[0].rsplit(" ", 1)[-1])
    train_images = int(head.split(" train / ")[0].rsplit(" ", 1)[-1])
    assert workers >= 1 and train_images > 4096, head
    assert not [s for s in NETWORK_SIGNS if s in log], log[:2000]
    assert events(ws, "cycle")[0]["run"]["sandbox"] == "bubblewrap"


@needs_bwrap
def test_a_network_attempt_in_a_run_shows_in_its_log(tmp_path):
    """The detector the test above relies on: a run that looks a host up says so in its log."""
    cfg = daemon_cfg(tmp_path, tiny_config_dict())
    code = ("from loop.util.netwatch import watch_network; watch_network()\n"
            "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError:\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "loop.cli.main", "sandbox", "run", "--daemon-config",
                          str(write_cfg(tmp_path, cfg)), "--", f"cd {REPO} && python3 -c \"{code}\""],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert f"{MARK} lookup pypi.org:443" in out.stderr + out.stdout, out.stderr


def write_cfg(tmp_path: Path, cfg: DaemonConfig) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"root"})))
    return path


# ------------------------------------------------ a failure seen three times ----

@pytest.mark.slow
def test_a_broken_configuration_blocks_the_daemon_which_says_why_and_moves_on(tmp_path):
    """Every configuration inherits a teacher that does not exist: each fails with one signature.
    Three in a row and the daemon is blocked (status, event, notes), proposes none of them again and
    waits out its back-off; `llmloop unblock` clears it."""
    trainer = tiny_config_dict(data={"train_fraction": 0.05}, kd={"teacher": str(tmp_path / "no-teacher")})
    cfg = daemon_cfg(tmp_path, trainer, max_identical_failures=3, blocked_retry_minutes=60,
                     mentor_every_n_cycles=100)
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=5, say=lambda *_: None)
    runs = read_history(ws)
    assert len(runs) == 3 and not any(r.ok for r in runs)
    assert len({r.signature for r in runs}) == 1
    assert len({r.recipe for r in runs}) == 3                     # three different configurations, each once
    assert state.blocked is not None and state.blocked.count == 3
    assert state.blocked.signature.category == "configuration"
    blocked = events(ws, "blocked")
    assert len(blocked) == 1 and blocked[0]["signature"]["key"] == runs[0].signature
    cycles = events(ws, "cycle")
    assert [c.get("run_outcome", {}).get("status") for c in cycles[:3]] == ["failed"] * 3
    for c in cycles[3:]:                                          # blocked: refused, says why, trains nothing
        assert "run" not in c and not c["quality_gate"]["ok"]
        assert "blocked on" in " ".join(c["quality_gate"]["reasons"])
    assert "not a model folder" in cycles[0]["run_outcome"]["signature"]["message"]
    assert "BLOCKED" in (ws.root / "notes" / "workpad.md").read_text()
    status = subprocess.run([sys.executable, "-m", "loop.cli.main", "status", "--workspace", str(ws.root)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "BLOCKED" in status.stdout and runs[0].signature in status.stdout
    # the Mentor was due (two failures in a row) and did not call it on track
    reviews = [c["mentor"] for c in cycles if c.get("mentor")]
    assert reviews and all(r["verdict"] == "off_track" for r in reviews)
    unblock = subprocess.run([sys.executable, "-m", "loop.cli.main", "unblock", "--workspace", str(ws.root)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "unblocked" in unblock.stdout, unblock.stderr
    assert LoopState.load(ws.state).blocked is None and len(events(ws, "unblocked")) == 1


@pytest.mark.slow
def test_blocked_with_a_short_back_off_tries_another_configuration(tmp_path):
    trainer = tiny_config_dict(data={"train_fraction": 0.05}, kd={"teacher": str(tmp_path / "no-teacher")})
    cfg = daemon_cfg(tmp_path, trainer, max_identical_failures=2, blocked_retry_minutes=0.0001,
                     mentor_every_n_cycles=100, mentor_enabled=False)
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=4, say=lambda *_: None)
    runs = read_history(ws)
    assert len(runs) == 4 and len({r.recipe for r in runs}) == 4       # moved on, never a repeat
    assert state.blocked.count == 4 and len(events(ws, "blocked")) == 1


# ------------------------------------------- a digits night with PHASE at the start ----

@pytest.mark.slow
@pytest.mark.timeout(900)   # 12 trainings and PHASE: about 60 s quiet alone (16: 81 s); over 300 s beside load
def test_a_digits_night_with_phase_open_at_the_start_trains_nothing_twice(tmp_path):
    """PHASE's daily window is open when the daemon starts, as on the night that narrowed the space to
    the baseline. Twelve cycles (Mentor reviews at 4, 8 and 12): every configuration is new
    (continuations and declared seed replicas aside), at least eight distinct ones (nine quiet: the
    baseline's replica and two continuations share a recipe), and PHASE's one-model results narrow
    nothing (decided at the start: more cycles would only train more)."""
    now = datetime.datetime.now()           # a window across midnight is fine (loop/phase/window.py)
    start, end = (now - datetime.timedelta(minutes=5)), (now + datetime.timedelta(minutes=90))
    trainer = tiny_config_dict(data={"train_fraction": 0.05}, run={"epochs": 3})
    cfg = daemon_cfg(tmp_path, trainer, mentor_every_n_cycles=4,
                     phase={"schedule": "daily", "daily_start": start.strftime("%H:%M"),
                            "daily_end": end.strftime("%H:%M"), "epochs": 1, "slices": 2, "replicas": 1,
                            "top_k": 2, "sleep_chunk_seconds": 1},
                     evolution={"candidate_overrides": {"run": {"epochs": 1}},
                                "rules": {"per_class_accuracy_floor": None}})
    ws = workspace_of(cfg)
    run_daemon(cfg, ws, max_cycles=12, say=lambda *_: None)
    runs = read_history(ws)
    assert len(runs) >= 10
    assert events(ws, "phase_integration"), "PHASE did not run at the start"
    state = LoopState.load(ws.state)
    assert not any(v for v in state.phase_recommendations.values()), state.phase_recommendations
    keys = [(r.fingerprint, (r.config.get("run") or {}).get("resume_from")) for r in runs]
    assert len(set(keys)) == len(keys), [r.label for r in runs]
    recipes = [r.recipe for r in runs if not (r.config.get("run") or {}).get("resume_from")]
    replicas = [c for c in events(ws, "cycle") if (c.get("decision") or {}).get("replica_of")]
    assert len(recipes) - len(set(recipes)) <= len(replicas), "a recipe ran twice without a declared replica"
    assert len(set(recipes)) >= 8


# ------------------------------------------------------- bench/night.py, short tier ----

@needs_bwrap
@pytest.mark.slow
@pytest.mark.timeout(1000)  # three cycles: 177 s beside a pip install; its subprocess stops at 900 s
def test_the_short_night_on_an_image_folder(tmp_path, shapes_folder):
    """bench/night.py's short tier as CI runs it: the whole daemon in the background with the shipped
    config on 7,200 PNG files, PHASE open at the start, finish-up at the end. No infrastructure
    failure, no duplicate run, loader workers started, the final report written. Sized in cycles,
    not minutes: the baseline, PHASE, a second cycle, then `llmloop finishup` (bench/night.py asks
    for it) and its final round. A 3-minute night failed in a busy suite (the baseline, slowed by
    the other worker, was still training when the finish-up came: 0 runs); the clock-driven
    finish-up (`--run-hours`) is the operator scripts' test (tests/test_operator.py). Each recipe
    trains one epoch, not the shipped ten (`--epochs 1`): nothing here asserts an accuracy, and the
    ten cost 350 CPU-s of runs, a quarter of the suite's CPU; the night with the shipped epochs is
    bench/night.py's own (RESULTS.md, `night (short)`)."""
    # the session's 7,200 files, linked where the night writes its own (the same files: write_shapes_files
    # finds its marker and writes nothing; 4.5 CPU-s saved)
    shutil.copytree(shapes_folder, tmp_path / "night" / "data" / "folder", copy_function=os.link)
    env = dict(os.environ, LLMLOOP_BENCH_RESULTS=str(tmp_path / "RESULTS.md"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "bench/night.py", "--tier", "short", "--tasks", "shapes_folder",
                          "--cycles", "3", "--epochs", "1", "--work", str(tmp_path / "night")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    night = json.loads((tmp_path / "night" / "shapes_folder.json").read_text())
    assert night["runs"] >= 1 and night["infrastructure_failures"] == 0, night
    assert night["duplicates"] == [] and night["loader_workers"] >= 1, night
    assert night["finish_up"] == "done" and night["report_written"], night
    assert night["phase_runs"] == 1 and not night["stopped_by_bench"], night
    assert "| runs (ok / full-fidelity) |" in (tmp_path / "RESULTS.md").read_text()


def stop_after_runs(ws, runs: int, done: threading.Event) -> None:
    """Ask the daemon to stop (its STOP_REQUESTED file) once `runs` runs are in its history."""
    while not done.wait(0.1):
        try:
            if len(read_history(ws)) >= runs:
                ws.stop_request.write_text("stop\n")
                return
        except (OSError, ValueError):       # the index mid-write: look again
            pass


@pytest.mark.slow
def test_a_run_followed_across_cycles_keeps_its_own_strategy_dimension(tmp_path):
    """A run judged in a later cycle than the one that started it is recorded with its own decision's
    dimension (the offline policy counts dimensions to pick the least tried one). Three judged runs
    are enough: the baseline and its replica (`evaluation`), then the least tried other dimension; the
    daemon is asked to stop then (at most 40 cycles, as before: under load a run spans more of them)."""
    trainer = tiny_config_dict(data={"train_fraction": 0.05}, run={"epochs": 2})
    cfg = daemon_cfg(tmp_path, trainer, default_monitor_seconds=1, mentor_enabled=False)
    ws = workspace_of(cfg)
    done = threading.Event()
    stopper = threading.Thread(target=stop_after_runs, args=(ws, 3, done), daemon=True)
    stopper.start()
    try:
        run_daemon(cfg, ws, max_cycles=40, say=lambda *_: None)    # 1-s windows: each run spans cycles
    finally:
        done.set()
        stopper.join(10)
    started = {c["decision"]["run_label"]: c["decision"]["strategy_dimension"] for c in events(ws, "cycle")
               if c.get("decision") and c.get("run")}
    spans = [c for c in events(ws, "cycle") if c.get("followed_runs")]
    runs = read_history(ws)
    assert spans and runs, "no run was followed into a later cycle"
    for r in runs:
        assert r.dimension == started[r.label], (r.label, r.dimension)
