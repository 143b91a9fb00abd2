"""Supervised subprocesses: each run in its own process group, stdout/stderr to a log file, a
walltime limit that ends the whole group. (The daemon's monitor window builds on this.)"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


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


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


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
                    kill_group(proc)
                    job.timed_out, code = True, proc.returncode
                if code is not None:
                    job.returncode, job.seconds = code, round(elapsed, 3)
                    running.remove((job, proc))
                    if on_finish:
                        on_finish(job)
    finally:
        for _job, proc in running:        # interrupted: leave no orphans behind
            kill_group(proc)
    return jobs
