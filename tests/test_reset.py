"""`llmloop reset` (what scripts/clean_fresh.sh runs) keeps track of what the workspace runs: it
stops the dashboard serving the workspace and the run processes an earlier daemon left behind, and
refuses, naming the process and how to stop it, while the daemon or a PHASE run works on it."""
from __future__ import annotations

import os
import socket
import subprocess

import psutil
import pytest
import yaml
from filelock import FileLock

from loop.phase import marker
from loop.run.kill import OWNER_TAG
from loop.run.sandbox_setup import owner_tag
from loop.util.workspace import Workspace
from tests.conftest import REPO, cli_here, exited, run_cli


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws"),
                                      "credentials_file": str(tmp_path / "creds.json")}))
    ws = Workspace(tmp_path / "ws").ensure()
    (ws.root / "events.jsonl").write_text("{}\n")
    return ["--daemon-config", str(config), "--root", str(REPO)], ws


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reset_stops_the_dashboard_and_leftover_runs(setup, capsys):
    pytest.importorskip("uvicorn", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")
    from loop.dashboard import background

    cfg, ws = setup
    serving = background.start_detached(ws, cfg[1], REPO, free_port(), say=lambda _: None)
    assert serving is not None and background.running(ws) == serving
    # a run an earlier daemon of this workspace started and left behind (tagged as every run is)
    leftover = subprocess.Popen(["sleep", "300"], env=dict(os.environ, **{OWNER_TAG: owner_tag(ws.root)}))
    stranger = subprocess.Popen(["sleep", "300"])                # not this workspace's: left alone
    try:
        done = run_cli("reset", *cfg, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"stopped the dashboard serving {ws.root} (pid {serving.pid}, {serving.url})" in done.stdout
        assert f"stopped a leftover run process of this workspace (pid {leftover.pid}" in done.stdout
        assert exited(serving.pid)
        assert leftover.wait(timeout=30) == -9 and stranger.poll() is None
        assert not (ws.root / "events.jsonl").exists() and not (ws.root / "logs").exists()
        assert "no dashboard is serving" in cli_here(capsys, "dashboard", *cfg, "--stop").stdout   # in-process
    finally:
        background.stop(ws)
        for proc in (leftover, stranger):
            proc.kill()
            proc.wait()


def test_reset_refuses_while_phase_runs(setup):
    cfg, ws = setup
    phase = subprocess.Popen(["sleep", "300"])          # stands in for the PHASE process its record names
    try:
        record = marker.PhaseStarted(run_id="night-1", pid=phase.pid,
                                     create_time=psutil.Process(phase.pid).create_time(),
                                     started_utc="2026-01-01T03:00:00Z")
        marker.started_path(ws.root, "night-1").parent.mkdir(parents=True, exist_ok=True)
        marker.started_path(ws.root, "night-1").write_text(record.model_dump_json())
        refused = run_cli("reset", *cfg, "--yes")
        assert refused.returncode == 1
        assert f"PHASE run night-1 is running on {ws.root} (pid {phase.pid}" in refused.stderr
        assert f"kill {phase.pid}" in refused.stderr and "systemctl --user stop" in refused.stderr
        assert (ws.root / "events.jsonl").exists() and phase.poll() is None       # nothing touched
    finally:
        phase.kill()
        phase.wait()
    assert run_cli("reset", *cfg, "--yes").returncode == 0                # PHASE gone: the record is stale
    assert not (ws.root / "phase").exists()


def test_reset_refuses_while_the_daemon_holds_the_workspace(setup):
    cfg, ws = setup
    lock = FileLock(str(ws.lock))           # what a live daemon holds (loop/daemon/process.py)
    with lock.acquire(timeout=5):
        ws.pid.write_text(f"{os.getpid()}\n")
        refused = run_cli("reset", *cfg, "--yes")
    assert refused.returncode == 1
    assert f"the daemon is running on {ws.root} (pid {os.getpid()}); stop it first: llmloop stop" in refused.stderr
    assert (ws.root / "events.jsonl").exists()


def test_a_dashboard_that_exited_unreaped_counts_as_stopped_at_once():
    """A zombie has exited; only its parent can reap it (a foreground daemon started with --dashboard
    reaps its dashboard when it exits). Stopping one must not wait out the SIGTERM grace for it: reset
    once spent 10 s of its 16 here (the deadline is 600 s below: a wait for it fails by timeout)."""
    import sys
    import time

    from loop.run.kill import wait_exited

    # a parent that starts a child which exits at once and is never waited for: a zombie not ours to reap
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time; p = subprocess.Popen(['true']); "
                               "print(p.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = psutil.Process(int(parent.stdout.readline()))
        t0 = time.monotonic()
        assert wait_exited([zombie], 600)
        assert time.monotonic() - t0 < 120 and exited(zombie.pid)
    finally:
        parent.kill()
        parent.wait()
