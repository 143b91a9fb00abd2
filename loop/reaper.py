"""Find and end processes by the tags the daemon puts in their environment.

Every process a daemon starts for a workspace carries LLMLOOP_OWNER (one per workspace) and, for a
run, LLMLOOP_RUN_TAG (one per run). Environments are inherited, so a grandchild that left the
process group with `setsid` still carries them. After a `kill -9` of the daemon, a restart calls
`reap_leftovers` before it launches anything: the run state.json says is active is re-adopted (pid
and create_time must both match, so a reused pid is not mistaken for it); every other tagged
process is killed.
"""
from __future__ import annotations

import os

import psutil

CREATE_TIME_TOLERANCE_S = 1.0


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


def kill_processes(procs: list[psutil.Process], timeout: float = 5.0) -> list[int]:
    """SIGKILL each process; returns the pids that were killed (and are gone)."""
    killed = []
    for proc in procs:
        try:
            proc.kill()
            killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs([p for p in procs if p.pid in killed], timeout=timeout)
    return killed


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < CREATE_TIME_TOLERANCE_S and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def reap_leftovers(owner: str, keep_pid: int | None = None, keep_create_time: float | None = None,
                   keep_tag: str | None = None) -> dict:
    """Kill every process tagged with this workspace's owner except the run to re-adopt: its
    descendants and, by its run tag, any of its processes that left the tree with setsid.
    Returns {"adopted": [pids], "killed": [{pid, cmdline}]} for the start event."""
    keep: set[int] = set()
    adopted = same_process(keep_pid, keep_create_time) if keep_pid and keep_create_time else None
    if adopted is not None:
        keep = {adopted.pid, *(c.pid for c in _descendants(adopted))}
        if keep_tag:
            keep |= {p.pid for p in tagged_processes("LLMLOOP_RUN_TAG", keep_tag)}
    leftovers = [p for p in tagged_processes("LLMLOOP_OWNER", owner) if p.pid not in keep]
    described = [{"pid": p.pid, "cmdline": _cmdline(p)} for p in leftovers]
    killed = set(kill_processes(leftovers))
    return {"adopted": sorted(keep), "killed": [d for d in described if d["pid"] in killed]}


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
