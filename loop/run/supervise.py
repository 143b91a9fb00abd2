"""Supervised subprocesses: each run in its own process group (and, through loop/run/sandbox.py, its own
PID namespace), stdout/stderr to a log file, a walltime limit and a no-progress limit that end the
whole tree. Every run carries LLMLOOP_RUN_TAG in its environment, so processes that left the group
(`setsid`) are still found and killed; every kill goes through loop/run/kill.py's `kill_tree`, and
loop/run/reaper.py uses the same tags after a daemon restart."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pydantic import BaseModel

from loop.run.kill import RUN_TAG, kill_tree, same_process


@dataclass
class Job:
    name: str
    argv: list[str]
    log_path: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    timeout_seconds: float | None = None
    # ---- filled in while running ----
    pid: int | None = None
    returncode: int | None = None
    timed_out: bool = False
    started: float = field(default=0.0)
    seconds: float = 0.0


def start(job: Job) -> subprocess.Popen:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(job.log_path, "ab")
    proc = subprocess.Popen(job.argv, cwd=job.cwd, env=job.env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    job.pid, job.started = proc.pid, time.monotonic()
    return proc


def _stop_job(job: Job, proc: subprocess.Popen) -> None:
    """End a job's whole tree: its process group, then every process carrying its run tag."""
    kill_tree(proc.pid, popen=proc, tag=(job.env or {}).get(RUN_TAG))


def run_parallel(jobs: list[Job], max_parallel: int, poll_seconds: float = 0.2,
                 on_finish=None) -> list[Job]:
    """Run `jobs`, at most `max_parallel` at a time; returns them with returncodes filled in."""
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                job = pending.pop(0)
                running.append((job, start(job)))
            time.sleep(poll_seconds)
            for job, proc in list(running):
                code = proc.poll()
                elapsed = time.monotonic() - job.started
                if code is None and job.timeout_seconds and elapsed > job.timeout_seconds:
                    _stop_job(job, proc)
                    job.timed_out, code = True, proc.returncode
                if code is not None:
                    job.returncode, job.seconds = code, round(elapsed, 3)
                    running.remove((job, proc))
                    if on_finish:
                        on_finish(job)
    finally:
        for job, proc in running:         # interrupted: leave no orphans behind
            _stop_job(job, proc)
    return jobs


# ------------------------------------------------ the daemon's active run ----

class ActiveRun(BaseModel):
    """The run a cycle started, as state.json keeps it (enough to re-attach after a crash)."""

    label: str
    trace_id: str
    kind: str                       # train | command
    argv: list[str]
    run_dir: str
    log_path: str
    exit_file: str
    pid: int
    create_time: float
    started_at: float
    cycle_started: int
    config_path: str | None = None  # the trainer YAML, for auto-repair's fallback patch
    retry_of: str | None = None
    monitor_cycles: int = 0
    walltime_limit_seconds: float | None = None
    stall_seconds: float | None = None      # no new output for this long: killed as stalled
    run_tag: str = ""                       # LLMLOOP_RUN_TAG of every process of the run
    sandbox: str = "none"                   # bubblewrap | none


def launch(label: str, trace_id: str, kind: str, argv: list[str], run_dir: Path, cycle: int, cwd: Path,
           env: dict[str, str], config_path: str | None = None, retry_of: str | None = None,
           walltime_limit_seconds: float | None = None, sandbox=None,
           stall_seconds: float | None = None) -> ActiveRun:
    """Start `argv` in its own session (process group), inside `sandbox` (a loop.run.sandbox.Sandbox)
    when one is given, wrapped so its exit code lands in a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path, exit_file = run_dir / "run.log", run_dir / "exit_code"
    exit_file.unlink(missing_ok=True)
    run_tag = f"{trace_id}:{label}"
    if sandbox is not None:
        sandbox.prepare(run_dir)
        env, command = sandbox.env(run_dir, run_tag), sandbox.command(argv, run_dir, cwd)
    else:
        env, command = {**env, RUN_TAG: run_tag}, list(argv)
    # runwrap stays outside the sandbox (it must write the exit file whatever the run does).
    wrapped = [sys.executable, "-m", "loop.run.runwrap", str(exit_file), "--", *command]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return ActiveRun(label=label, trace_id=trace_id, kind=kind, argv=argv, run_dir=str(run_dir),
                     log_path=str(log_path), exit_file=str(exit_file), pid=proc.pid,
                     create_time=psutil.Process(proc.pid).create_time(), started_at=time.time(),
                     cycle_started=cycle, config_path=config_path, retry_of=retry_of,
                     walltime_limit_seconds=walltime_limit_seconds, stall_seconds=stall_seconds,
                     run_tag=run_tag, sandbox="bubblewrap" if sandbox is not None and sandbox.active else "none")


_CHILDREN: dict[int, subprocess.Popen] = {}    # runs this process started (so it can reap them)


def is_alive(run: ActiveRun) -> bool:
    """The run's process still exists and is the same process (pid reuse is checked)."""
    child = _CHILDREN.get(run.pid)
    if child is not None and child.poll() is not None:
        return False
    return same_process(run.pid, run.create_time) is not None


def exit_code(run: ActiveRun) -> int | None:
    """The run's exit code from its exit file; None if it died without writing one (killed)."""
    try:
        return int(Path(run.exit_file).read_text().strip())
    except (OSError, ValueError):
        return None


def kill_run(run: ActiveRun) -> None:
    """End the run's whole tree: its process group (TERM, then KILL), then any process that still
    carries its tag (a grandchild that called setsid; inside a sandbox the PID namespace has
    already taken those down with it); the Popen, if this process started it, is reaped."""
    kill_tree(run.pid, popen=_CHILDREN.pop(run.pid, None), create_time=run.create_time, tag=run.run_tag or None)


def last_progress(run: ActiveRun) -> float:
    """When the run last wrote anything: its log or any file in its folder (two levels deep)."""
    newest = run.started_at
    root = Path(run.run_dir)
    for path in [Path(run.log_path), *root.glob("*"), *root.glob("*/*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest


def monitor(run: ActiveRun, seconds: float, should_stop, poll_seconds: float = 0.25) -> str:
    """Watch the run for up to `seconds`: 'finished', 'running' (window over), 'stopping' (stop was
    requested), 'timed_out' (past its walltime limit) or 'stalled' (no output for stall_seconds);
    the last two kill the whole tree."""
    deadline = time.monotonic() + seconds
    next_progress_check = 0.0
    while True:
        if not is_alive(run):
            child = _CHILDREN.pop(run.pid, None)
            if child is not None:
                child.wait(timeout=5)
            return "finished"
        if run.walltime_limit_seconds and time.time() - run.started_at > run.walltime_limit_seconds:
            kill_run(run)
            return "timed_out"
        if run.stall_seconds and time.monotonic() >= next_progress_check:
            next_progress_check = time.monotonic() + min(5.0, run.stall_seconds / 4)
            if time.time() - last_progress(run) > run.stall_seconds:
                kill_run(run)
                return "stalled"
        if should_stop():
            return "stopping"
        if time.monotonic() >= deadline:
            return "running"
        time.sleep(poll_seconds)
