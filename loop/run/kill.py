"""Ending processes, one way. `kill_tree` is the one kill path: it signals a process group (TERM,
then KILL) and then kills every process that carries a tag in its environment. `same_process` is the
one check that a pid still names the process that was started (same pid and create_time), so a
reused pid is never signalled nor re-adopted.

Every process a daemon starts for a workspace carries LLMLOOP_OWNER (one per workspace) and, for a
run, LLMLOOP_RUN_TAG (one per run; PHASE's is `phase:<run id>`). Environments are inherited, so a
grandchild that left the process group with `setsid` still carries them; inside the sandbox the PID
namespace takes those down with the group anyway.

Callers: loop/run/supervise.py (a run's walltime, stall or stop; a candidate's timeout), the
daemon's PHASE stop (loop/daemon/phase_pause.py) and loop/run/reaper.py (a restart's leftovers).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable

import psutil

RUN_TAG = "LLMLOOP_RUN_TAG"
OWNER_TAG = "LLMLOOP_OWNER"
CREATE_TIME_TOLERANCE_S = 1.0
GRACE_S = 5.0                 # how long TERM (then KILL) gets before the next step


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live (not zombie) process `pid` if it was created at `create_time`; None otherwise."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < CREATE_TIME_TOLERANCE_S and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def tagged_processes(key: str, value: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment has key=value."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def kill_tree(pid: int | None = None, *, popen: subprocess.Popen | None = None, create_time: float | None = None,
              tag: str | None = None, tag_key: str = RUN_TAG, spare: Callable[[psutil.Process], bool] = lambda _: False,
              grace_s: float = GRACE_S) -> list[dict]:
    """End a process tree: TERM to the process group led by `pid` and KILL if its leader outlives
    `grace_s`; then SIGKILL every process (but this one and those `spare` holds to, asked of each
    just before its kill) whose environment has `tag_key`=`tag`; then reap `popen`.

    The group is signalled only while its leader is provably the process meant: `popen` (the
    Popen that started it) has not exited and, with `create_time`, `same_process` holds. Without
    `pid` only the tagged processes are killed. Returns [{pid, cmdline}] of the tagged processes
    that were killed."""
    if pid is not None:
        if popen is None and create_time is None:
            raise ValueError("kill_tree: a pid alone may have been reused; give its Popen or its create_time")
        _end_group(pid, lambda: _leader_alive(pid, popen, create_time), grace_s)
    killed = _kill_tagged(tag_key, tag, spare, grace_s) if tag else []
    if popen is not None:
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:      # unkillable (uninterruptible sleep): not worth a hang
            pass
    return killed


def _leader_alive(pid: int, popen: subprocess.Popen | None, create_time: float | None) -> bool:
    if popen is not None and popen.poll() is not None:
        return False
    return create_time is None or same_process(pid, create_time) is not None


def _end_group(pid: int, alive: Callable[[], bool], grace_s: float) -> None:
    """TERM, then KILL, to process group `pid`, each while `alive()`, each given `grace_s` to work."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)


def _kill_tagged(key: str, value: str, spare: Callable[[psutil.Process], bool], grace_s: float) -> list[dict]:
    """SIGKILL every process tagged key=value that `spare` does not hold to; [{pid, cmdline}] of those killed."""
    procs = [p for p in tagged_processes(key, value) if not spare(p)]
    described = {p.pid: _cmdline(p) for p in procs}      # read before they die
    killed = []
    for proc in procs:
        try:
            proc.kill()
            killed.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    wait_exited(killed, grace_s)
    return [{"pid": p.pid, "cmdline": described[p.pid]} for p in killed]


def wait_exited(procs: list[psutil.Process], seconds: float) -> bool:
    """Whether every one of `procs` exits within `seconds`. One that is this process's child is
    reaped; another that has exited but is not reaped yet (a zombie: only its own parent can reap
    it) counts as exited at once, where psutil.wait_procs would wait out the timeout for it."""
    deadline = time.monotonic() + seconds
    pending = list(procs)
    while True:
        pending = [p for p in pending if not _exited(p)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _exited(proc: psutil.Process) -> bool:
    try:
        proc.wait(timeout=0)                  # reaps it where it is this process's child
        return True
    except psutil.TimeoutExpired:
        pass
    except psutil.NoSuchProcess:
        return True
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
