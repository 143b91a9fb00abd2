"""One owner for PHASE: with `phase.scheduler: systemd` (what `llmloop service install` starts the
daemon with) a systemd timer starts PHASE, and the daemon never does, even inside an open window;
it pauses at a cycle boundary for the run the timer started and ingests it as it ingests its own.
PHASE's record of itself (loop/phase/marker.py) is what the daemon (and `llmloop reset`) read."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from loop.archive.paths import ModelPaths
from loop.archive.promotion import cutover
from loop.errors import ConfigError
from loop.journal.events import EventLog
from loop.ops.units import UnitSpec, phase_service
from loop.phase import marker
from loop.phase.results import completion_signal
from tests._daemon_fixtures import waiting_daemon, waiting_llm_fixture  # noqa: F401 - the `waiting_llm` fixture
from tests.conftest import REPO, add_archive_entry, tiny_config_dict, wait_for


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"])


def record_of(proc: subprocess.Popen, ws: Path, run_id: str) -> marker.PhaseStarted:
    """The record a PHASE process with `proc`'s pid would write (the file, as PHASE writes it)."""
    rec = marker.PhaseStarted(run_id=run_id, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                              started_utc="2026-01-01T03:00:00Z")
    marker.started_path(ws, run_id).parent.mkdir(parents=True, exist_ok=True)
    marker.started_path(ws, run_id).write_text(rec.model_dump_json())
    return rec


def test_the_record_tells_a_running_phase_from_an_ended_one(tmp_path):
    proc = sleeper()
    try:
        rec = record_of(proc, tmp_path, "r1")
        assert marker.latest(tmp_path) == rec and marker.running(tmp_path) == rec
        alive = marker.Liveness(rec)
        assert alive.poll() is None
        proc.kill()
        proc.wait()
        assert marker.running(tmp_path) is None and alive.poll() == -1       # gone without its signal
        assert marker.latest(tmp_path) == rec                                # the record stays
    finally:
        proc.kill()
    stale = rec.model_copy(update={"create_time": rec.create_time - 100})   # a pid reused by another process
    assert not marker.is_alive(stale)
    with pytest.raises(ConfigError, match="run-id"):
        marker.record_start(tmp_path, "../escape")


def test_a_signal_means_the_run_ended(tmp_path):
    proc = sleeper()
    try:
        record_of(proc, tmp_path, "r2")
        completion_signal(tmp_path, "r2").write_text("{}")
        assert marker.running(tmp_path) is None
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)  # 106 s quiet before its daemon waited instead of training
def test_the_daemon_pauses_for_and_ingests_the_timers_phase(tmp_path, zoo, waiting_llm):
    """Training is not the subject: the daemon's Builder waits every cycle (tests/_daemon_fixtures.py),
    and PHASE evaluates the two zoo models in the archive."""
    ws = tmp_path / "ws"
    paths = ModelPaths(ws)                       # something for PHASE to evaluate: GEN_HEAD and a PASS entry
    add_archive_entry(paths, zoo["phase-weak"], "m-G001-a", 1, score=0.2)
    add_archive_entry(paths, zoo["phase-strong"], "m-G002-a", 2, score=0.9)
    cutover(paths, "m-G001-a")
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict()))
    config = tmp_path / "daemon.yaml"          # a PHASE window open all day: the daemon would start PHASE now
    config.write_text(yaml.safe_dump({
        "workspace": str(ws), "default_trainer_config": str(trainer), "sandbox": "optional",
        "daemon_poll_seconds": 0, "default_monitor_seconds": 120, "adaptive_timer": {"min_seconds": 0,
                                                                                      "max_seconds": 0.01},
        **waiting_daemon(waiting_llm.base_url),
        # 8 evaluations a model (16 in all: seconds, so the test holds PHASE with SIGSTOP long before it ends)
        "phase": {"schedule": "daily", "daily_start": "00:00", "daily_end": "23:59", "top_k": 1, "epochs": 1,
                  "slices": 4, "replicas": 2, "sleep_chunk_seconds": 0.2},
        "evolution": {"rules": {"per_class_accuracy_floor": None}}}))
    spec = UnitSpec(python=sys.executable, package_parent=str(REPO), root=str(REPO), daemon_config=str(config),
                    workspace=str(ws), daily_start="00:00")
    exec_start = next(line for line in phase_service(spec).splitlines() if line.startswith("ExecStart="))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # what the timer's service runs, word for word
    phase = subprocess.Popen(shlex.split(exec_start.split("=", 1)[1]), cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon, out = None, open(tmp_path / "daemon.out", "wb")
    try:
        wait_for(lambda: marker.latest(ws) is not None, 180, "PHASE's record of its start")
        phase.send_signal(signal.SIGSTOP)        # held mid-run until the daemon has paused for it
        run_id = marker.latest(ws).run_id
        assert not completion_signal(ws, run_id).exists(), "PHASE ended before it could be held"
        daemon = subprocess.Popen([sys.executable, "-m", "loop.cli.main", "start", "--foreground", "--daemon-config",
                                   str(config), "--root", str(REPO), "--phase-scheduler", "systemd", "--tee-log",
                                   "--max-cycles", "3"],
                                  cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)

        def kinds() -> list[dict]:
            return list(EventLog(ws / "events.jsonl")) if (ws / "events.jsonl").exists() else []

        try:
            wait_for(lambda: any(e["kind"] == "phase_pause" for e in kinds()) or daemon.poll() is not None, 240,
                     "the daemon's pause for PHASE")
        finally:
            said = (tmp_path / "daemon.out").read_text(errors="replace")[-3000:]
        assert any(e["kind"] == "phase_pause" for e in kinds()), said
        assert daemon.poll() is None and not any(e["kind"] == "phase_integration" for e in kinds())
        phase.send_signal(signal.SIGCONT)
        assert daemon.wait(timeout=240) == 0 and phase.wait(timeout=120) == 0
    finally:
        phase.send_signal(signal.SIGCONT)
        for proc in (phase, daemon):
            if proc is not None and proc.poll() is None:
                proc.kill()
        out.close()
    events = kinds()
    order = [e["kind"] for e in events]
    start = next(e for e in events if e["kind"] == "daemon_start")
    assert start["phase_scheduler"] == "systemd"
    pause = next(e for e in events if e["kind"] == "phase_pause")
    assert pause["run_id"] == run_id and pause["scheduler"] == "systemd" and pause["pid"] == phase.pid
    assert order.count("phase_pause") == 1 and order.count("phase_integration") == 1      # none of its own
    p, i = order.index("phase_pause"), order.index("phase_integration")
    assert p > order.index("cycle") and "cycle" not in order[p:i]       # paused: no cycle while PHASE ran
    assert next(e for e in events if e["kind"] == "phase_integration")["run_id"] == run_id
    assert "cycle" in order[i:]                                          # and resumed
    state = json.loads((ws / "state.json").read_text())
    assert f"run-{run_id}" in state["phase_done"] and state["fitness_baselines"]
    assert [d.name for d in (ws / "phase").iterdir() if d.is_dir()] == [run_id]    # the daemon started none
    log = (ws / "logs" / "daemon.log").read_text()                       # --tee-log: the workspace log too
    assert f"PHASE {run_id} (started by the systemd timer, pid {phase.pid})" in log


def test_a_timer_phase_that_died_is_logged_once_and_one_that_ended_is_ingested(tmp_path):
    """Found at a cycle boundary without a pause: a timer's PHASE that died without its signal (one
    `phase_failed`, never again), then one that ended while the daemon was down (ingested)."""
    from loop.config import DaemonConfig, validate
    from loop.cycle.state import LoopState
    from loop.daemon.phase_external import timer_phase_if_started
    from loop.daemon.process import build_loop
    from loop.phase.run import run_phase
    from loop.util.workspace import workspace_of

    cfg = validate(DaemonConfig, {"workspace": str(tmp_path / "ws"), "sandbox": "optional",
                                  "phase": {"scheduler": "systemd", "epochs": 1, "slices": 2, "replicas": 1}}, "t")
    ws = workspace_of(cfg).ensure()
    loop = build_loop(cfg, ws, lambda: False, say=lambda *_: None)
    gone = sleeper()
    rec = record_of(gone, ws.root, "night-1")
    gone.kill()
    gone.wait()
    state = timer_phase_if_started(loop, LoopState.load(ws.state))
    state = timer_phase_if_started(loop, state)                        # the next boundary: nothing new
    events = list(EventLog(ws.events))
    assert [e["kind"] for e in events] == ["phase_failed"] and events[0]["run_id"] == "night-1"
    assert "run-night-1" in LoopState.load(ws.state).phase_done

    run_phase(cfg, ws.root, "night-2", progress=False)                  # an empty archive: results all the same
    # its process is gone, its signal is there; its record is the newest
    later = rec.model_copy(update={"run_id": "night-2", "started_utc": "2026-01-02T03:00:00Z"})
    marker.started_path(ws.root, "night-2").write_text(later.model_dump_json())
    state = timer_phase_if_started(loop, state)
    kinds = [e["kind"] for e in EventLog(ws.events)]
    assert kinds == ["phase_failed", "phase_integration"] and "run-night-2" in state.phase_done
