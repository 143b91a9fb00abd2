"""A fresh start (the seed's clean_fresh): empty the workspace, optionally keeping the stored login
and the data link. Refused while the daemon or a PHASE run works on it (each named, with its pid and
how to stop it); runs an earlier daemon left behind are ended first (they would write into the wiped
folders). The dashboard is stopped by the caller (`llmloop reset`), which sits above this layer.
Archive entries are read-only by design, so they are made writable first."""
from __future__ import annotations

import shutil
import stat
from pathlib import Path

from loop.errors import LoopError
from loop.util.workspace import Workspace

KEEP_ALWAYS = {"README.md"}


def refuse_while_running(ws: Workspace) -> None:
    """A LoopError naming what still works on `ws` (the daemon, a PHASE run) and how to stop it."""
    from loop.daemon.process import running_pid
    from loop.phase.marker import running as phase_running

    pid = running_pid(ws)
    if pid is not None:
        raise LoopError(f"the daemon is running on {ws.root} (pid {pid}); stop it first: llmloop stop --wait 120 "
                        f"(as a service: systemctl --user stop <name>-daemon.service, see `llmloop service status`)")
    phase = phase_running(ws.root)
    if phase is not None:
        raise LoopError(f"PHASE run {phase.run_id} is running on {ws.root} (pid {phase.pid}, started "
                        f"{phase.started_utc}); let it finish or stop it: kill {phase.pid} (started by the timer: "
                        f"systemctl --user stop <name>-phase.service)")


def stop_leftover_runs(ws: Workspace) -> list[dict]:
    """End every process a daemon of `ws` started and left behind (tagged LLMLOOP_OWNER, loop/run/kill.py)."""
    from loop.run.kill import OWNER_TAG, kill_tree
    from loop.run.sandbox_setup import owner_tag

    return kill_tree(tag=owner_tag(ws.root), tag_key=OWNER_TAG)


def reset_workspace(ws: Workspace, credentials_file: Path, keep_login: bool, keep_data_link: bool,
                    say=lambda line: None) -> int:
    refuse_while_running(ws)
    for proc in stop_leftover_runs(ws):
        say(f"stopped a leftover run process of this workspace (pid {proc['pid']}: {proc['cmdline']})")
    removed = 0
    if ws.root.exists():
        for entry in ws.root.iterdir():
            if entry.name in KEEP_ALWAYS or (keep_data_link and entry.name == "data"):
                continue
            _remove(entry)
            removed += 1
    if not keep_login and credentials_file.exists():
        credentials_file.unlink()
        removed += 1
    return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    for sub in path.rglob("*"):                 # read-only archive folders
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(sub.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    shutil.rmtree(path)
