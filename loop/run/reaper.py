"""A restart's sweep: find and end what an earlier daemon of this workspace left behind.

Every process a daemon starts for a workspace carries LLMLOOP_OWNER (one per workspace) and, for a
run, LLMLOOP_RUN_TAG (one per run); see loop/run/kill.py. After a `kill -9` of the daemon, a restart
calls `reap_leftovers` before it launches anything: the run state.json says is active is re-adopted
(pid and create_time must both match, so a reused pid is not mistaken for it); every other tagged
process is killed.
"""
from __future__ import annotations

import psutil

from loop.run.kill import OWNER_TAG, RUN_TAG, kill_tree, same_process, tagged_processes


def reap_leftovers(owner: str, keep_pid: int | None = None, keep_create_time: float | None = None,
                   keep_tag: str | None = None, also_keep: list[tuple[int, float, str]] = ()) -> dict:
    """Kill every process tagged with this workspace's owner except the runs to re-adopt (the one
    named, and each (pid, create_time, run tag) in `also_keep`): their descendants and, by run
    tag, any of their processes that left the tree with setsid.
    Returns {"adopted": [pids], "killed": [{pid, cmdline}]} for the start event."""
    keep: set[int] = set()
    for pid, create_time, tag in [(keep_pid, keep_create_time, keep_tag), *also_keep]:
        adopted = same_process(pid, create_time) if pid and create_time else None
        if adopted is not None:
            keep |= {adopted.pid, *(c.pid for c in _descendants(adopted))}
            if tag:
                keep |= {p.pid for p in tagged_processes(RUN_TAG, tag)}
    killed = kill_tree(tag=owner, tag_key=OWNER_TAG, spare=keep)
    return {"adopted": sorted(keep), "killed": killed}


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
