"""A fresh start (the seed's clean_fresh): empty the workspace, optionally keeping the stored login
and the data link. Refused while the daemon runs. Archive entries are read-only by design, so they
are made writable first."""
from __future__ import annotations

import shutil
import stat
from pathlib import Path

from loop.errors import LoopError
from loop.util.workspace import Workspace

KEEP_ALWAYS = {"README.md"}


def reset_workspace(ws: Workspace, credentials_file: Path, keep_login: bool, keep_data_link: bool) -> int:
    from loop.daemon.process import running_pid

    pid = running_pid(ws)
    if pid is not None:
        raise LoopError(f"the daemon is running (pid {pid}); stop it first: llmloop stop --wait 120")
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
