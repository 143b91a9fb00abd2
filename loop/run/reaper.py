"""A restart's sweep: find and end what an earlier daemon of this workspace left behind.

Every process a daemon starts for a workspace carries LLMLOOP_OWNER (one per workspace) and, for a
run, LLMLOOP_RUN_TAG (one per run); see loop/run/kill.py. After a `kill -9` of the daemon, a restart
calls `reap_leftovers` before it launches anything: the run state.json says is active is re-adopted
(pid and create_time must both match, so a reused pid is not mistaken for it); every other tagged
process is killed.
"""
from __future__ import annotations

import psutil

from loop.run.kill import OWNER_TAG, RUN_TAG, kill_tree, same_process


def reap_leftovers(owner: str, keep_pid: int | None = None, keep_create_time: float | None = None,
                   keep_tag: str | None = None, also_keep: list[tuple[int, float, str]] = ()) -> dict:
    """Kill every process tagged with this workspace's owner except the runs to re-adopt (the one
    named, and each (pid, create_time, run tag) in `also_keep`): their descendants and, by run
    tag, any of their processes that left the tree with setsid.
    Returns {"adopted": [pids], "killed": [{pid, cmdline}]} for the start event."""
    roots: set[int] = set()
    tags: set[str] = set()
    for pid, create_time, tag in [(keep_pid, keep_create_time, keep_tag), *also_keep]:
        adopted = same_process(pid, create_time) if pid and create_time else None
        if adopted is not None:
            roots.add(adopted.pid)
            tags |= {tag} if tag else set()
    kept: set[int] = set()

    def spare(proc: psutil.Process) -> bool:
        """Asked of each process just before its kill, not from a list made earlier: a run that is
        starting up (runwrap -> bwrap -> bwrap's init) makes new processes while the sweep runs."""
        if proc.pid in roots or _run_tag(proc) in tags or any(p.pid in roots for p in _parents(proc)):
            kept.add(proc.pid)
            return True
        return False

    killed = kill_tree(tag=owner, tag_key=OWNER_TAG, spare=spare)
    for pid in roots:                              # the whole kept trees, for the start event
        kept |= {pid, *(c.pid for c in _descendants(pid))}
    return {"adopted": sorted(kept), "killed": killed}


def _run_tag(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(RUN_TAG)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def _parents(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.parents()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
