"""Process trees (loop/run/supervise.py, loop/run/reaper.py): a run's whole tree dies on timeout, stop or
stall, `setsid` grandchildren included, with and without the sandbox; a restarted daemon reaps
what an earlier daemon left behind before it launches anything, and re-adopts the active run.
All real processes; the checks scan the host's process table."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO, wait_for

from loop.config import DaemonConfig
from loop.cycle.state import LoopState
from loop.journal.events import EventLog
from loop.run.local_executor import LocalExecutor
from loop.run.plan import RunPlan
from loop.run.sandbox_setup import find_bwrap, load_sandbox
from loop.run.supervise import ActiveRun, is_alive, kill_run, launch, monitor

HAS_BWRAP = shutil.which("bwrap") is not None and find_bwrap(os.geteuid() == 0)[1] is None
TREE = "setsid sleep 300 & setsid sh -c 'sleep 301 & sleep 302' & sleep 303"
PATIENCE_S = 120   # how long wait_for may poll: it returns as soon as true, so only a hang costs this


# Tags of their own per test run: runs are killed by tag (owner, trace:label), and two test runs on one
# machine must not kill each other's processes.
UNIQUE = uuid.uuid4().hex[:8]
TREE_OWNER = f"tree-test-{UNIQUE}"


def tagged(key: str, value: str) -> list[int]:
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def command_plan(name: str, trace: str, command: str, run_dir: Path, walltime: float | None = None,
                 stall: float | None = None) -> RunPlan:
    return RunPlan(name, trace, "command", ["bash", "-c", command], run_dir, walltime, stall)


def start(tmp_path: Path, name: str, command: str, sandboxed: bool, walltime: float | None = None,
          stall: float | None = None) -> ActiveRun:
    ws = tmp_path / "ws"
    sandbox = load_sandbox(DaemonConfig(), REPO, ws) if sandboxed else None
    env = {**os.environ, "LLMLOOP_OWNER": TREE_OWNER} if not sandboxed else os.environ.copy()
    return launch(command_plan(name, f"t{UNIQUE}", command, ws / "runs" / name, walltime, stall), 1, REPO, env,
                  sandbox=sandbox)


def tree_started(run: ActiveRun, count: int) -> bool:
    return len(tagged("LLMLOOP_RUN_TAG", run.run_tag)) >= count


@pytest.mark.parametrize("sandboxed", [pytest.param(True, marks=pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")),
                                       False])
@pytest.mark.slow
def test_walltime_kills_the_whole_tree_setsid_grandchildren_included(tmp_path, sandboxed):
    run = start(tmp_path, f"timeout-{sandboxed}", TREE, sandboxed, walltime=3)
    wait_for(lambda: tree_started(run, 4), PATIENCE_S, "the run's processes")
    assert monitor(LocalExecutor(REPO), run, 30, lambda: False) == "timed_out"
    wait_for(lambda: not tagged("LLMLOOP_RUN_TAG", run.run_tag), PATIENCE_S, "every process of the run to be gone")
    assert not is_alive(run)


@pytest.mark.parametrize("sandboxed", [pytest.param(True, marks=pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")),
                                       False])
@pytest.mark.slow
def test_stop_kills_the_whole_tree(tmp_path, sandboxed):
    run = start(tmp_path, f"stop-{sandboxed}", TREE, sandboxed)
    wait_for(lambda: tree_started(run, 4), PATIENCE_S, "the run's processes")
    assert monitor(LocalExecutor(REPO), run, 0.5, lambda: True) == "stopping"
    kill_run(run)
    wait_for(lambda: not tagged("LLMLOOP_RUN_TAG", run.run_tag), PATIENCE_S, "every process of the run to be gone")


@pytest.mark.slow
def test_a_run_that_stops_making_progress_is_killed_as_stalled(tmp_path):
    from loop.run.judge import outcome_of

    run = start(tmp_path, "stall", "echo started; sleep 300", HAS_BWRAP, stall=1.5)
    # the bound is the monitor's own window: without stall detection it would answer "running" at its end
    assert monitor(LocalExecutor(REPO), run, 60, lambda: False, poll_seconds=0.1) == "stalled"
    assert not tagged("LLMLOOP_RUN_TAG", run.run_tag)
    assert outcome_of(run, "stalled").status == "stalled"


@pytest.mark.slow
def test_a_run_that_keeps_writing_is_not_stalled(tmp_path):
    run = start(tmp_path, "busy", "for i in $(seq 1 12); do echo tick $i; sleep 0.25; done", False, stall=1.5)
    assert monitor(LocalExecutor(REPO), run, 30, lambda: False, poll_seconds=0.1) == "finished"


def write_config(tmp_path: Path) -> Path:
    data = {"workspace": str(tmp_path / "ws"), "daemon_poll_seconds": 0.2, "default_monitor_seconds": 1,
            "stale_orphan_idle_cycles": 50, "phase": {"schedule": "off"},
            "adaptive_timer": {"min_seconds": 0, "max_seconds": 1},
            "sandbox": "required" if HAS_BWRAP else "optional"}
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_restart_after_kill_9_reaps_leftovers_and_readopts_the_active_run(tmp_path):
    """What a daemon killed with -9 leaves: the run state.json names (re-adopted: same pid and
    create_time) and a process state.json does not know (an evolution candidate, a run started
    just before the crash): killed before anything is launched."""
    cfg_path = write_config(tmp_path)
    ws = tmp_path / "ws"
    cfg = DaemonConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
    sandbox = load_sandbox(cfg, REPO, ws)
    runs = ws / "runs"
    active = launch(command_plan("active", f"c00001-a{UNIQUE[:5]}", "sleep 300", runs / "active"), 1, REPO,
                    dict(os.environ), sandbox=sandbox)
    stray = launch(command_plan("stray", f"c00001-b{UNIQUE[:5]}", TREE, runs / "stray"), 1, REPO,
                   dict(os.environ), sandbox=sandbox)
    try:
        wait_for(lambda: tree_started(stray, 4), PATIENCE_S, "the stray run's processes")
        LoopState(cycle=1, active_run=active).save(ws / "state.json")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-m", "loop.cli.main", "start", "--foreground", "--max-cycles", "1",
                               "--daemon-config", str(cfg_path)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr
        start_event = next(e for e in EventLog(ws / "events.jsonl") if e["kind"] == "daemon_start")
        reaped = start_event["reaped"]
        assert stray.pid in [k["pid"] for k in reaped["killed"]]
        assert active.pid in reaped["adopted"] and reaped["adopted_run"] == "active"
        assert not tagged("LLMLOOP_RUN_TAG", stray.run_tag), "the stray run's tree survived the restart"
        assert is_alive(active), "the active run was killed instead of re-adopted"
        cycle = next(e for e in EventLog(ws / "events.jsonl") if e["kind"] == "cycle")
        assert cycle["followed_run"]["label"] == "active"
    finally:
        kill_run(active)
        kill_run(stray)


def test_a_reused_pid_is_not_adopted(tmp_path):
    """The pid in state.json now belongs to another process (create_time differs): not adopted,
    and not killed either unless it carries this workspace's tag."""
    from loop.run.reaper import reap_leftovers

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        reaped = reap_leftovers("no-such-owner", bystander.pid, psutil.Process(bystander.pid).create_time() - 100)
        assert reaped["adopted"] == [] and reaped["killed"] == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_readopting_keeps_the_runs_setsid_processes(tmp_path):
    """Without the sandbox's PID namespace, a grandchild of the adopted run that left the tree
    with setsid is found by the run's tag and kept, not reaped as a stray."""
    from loop.run.reaper import reap_leftovers

    run = start(tmp_path, "adopt", "setsid sleep 304 & sleep 305", False)
    try:
        wait_for(lambda: tree_started(run, 3), PATIENCE_S, "the run's processes")
        escaped = [p for p in tagged("LLMLOOP_RUN_TAG", run.run_tag)
                   if psutil.Process(p).cmdline()[:2] == ["sleep", "304"]]
        reaped = reap_leftovers(TREE_OWNER, run.pid, run.create_time, run.run_tag)
        assert reaped["killed"] == [] and set(escaped) <= set(reaped["adopted"])
        assert all(psutil.pid_exists(p) for p in escaped)
    finally:
        kill_run(run)


@pytest.mark.slow
def test_readopting_a_run_that_is_making_processes_kills_none_of_them(tmp_path):
    """A run that is starting up (runwrap -> bwrap -> bwrap's init) makes processes while the
    sweep runs. A list of the run's processes made before the sweep missed those born after it,
    and the sweep killed them as strays (seen in CI: a run re-adopted at a restart died with 137)."""
    from loop.run.reaper import reap_leftovers

    run = start(tmp_path, "busy", "while true; do sleep 0.002 & sh -c 'sleep 0.002' & wait; done", False)
    try:
        wait_for(lambda: tree_started(run, 3), PATIENCE_S, "the run's processes")
        for _ in range(5):
            reaped = reap_leftovers(TREE_OWNER, run.pid, run.create_time, run.run_tag)
            assert reaped["killed"] == [], reaped["killed"]
        assert is_alive(run)
    finally:
        kill_run(run)


@pytest.mark.skipif(not HAS_BWRAP, reason="no bwrap")
def test_phase_sandbox_outlives_the_process_that_started_it(tmp_path):
    """PHASE is started straight into bwrap (no runwrap between): without --die-with-parent it
    survives a daemon crash, as the resume-on-signal design needs."""
    script = f"""
import os, subprocess, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from loop.config import DaemonConfig
from loop.run.sandbox_setup import load_sandbox
ws = Path({str(tmp_path / 'ws')!r})
sandbox = load_sandbox(DaemonConfig(), Path({str(REPO)!r}), ws)
phase_dir = ws / "phase"
sandbox.prepare(phase_dir)
env = dict(sandbox.env(phase_dir, "phase:survivor"))
subprocess.Popen(sandbox.command(["sleep", "306"], phase_dir, Path({str(REPO)!r}), die_with_parent=False),
                 env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os._exit(0)        # the "daemon" dies at once
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    try:
        wait_for(lambda: tagged("LLMLOOP_RUN_TAG", "phase:survivor"), PATIENCE_S, "PHASE's processes")
        time.sleep(1.0)
        alive = tagged("LLMLOOP_RUN_TAG", "phase:survivor")
        assert any(psutil.Process(p).cmdline()[:2] == ["sleep", "306"] for p in alive)
    finally:
        for pid in tagged("LLMLOOP_RUN_TAG", "phase:survivor"):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
