"""What an operator does to a daemon from outside it: start one detached (its own session, output to
logs/daemon.log) and ask it to stop (the STOP_REQUESTED file and SIGTERM, honoured within one cycle)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loop.daemon.process import PACKAGE_PARENT, AlreadyRunning, running_pid
from loop.errors import LoopError
from loop.util.workspace import Workspace


def start_background(config_path: str, root: Path, ws: Workspace, extra_args: list[str]) -> int:
    """Start the daemon detached (its own session, output to logs/daemon.log); returns its pid."""
    pid = running_pid(ws)
    if pid is not None:
        raise AlreadyRunning(f"the daemon is already running on {ws.root} (pid {pid})")
    ws.ensure()
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    with open(ws.daemon_log, "ab") as log:
        written = log.tell()                     # what this start writes comes after
        proc = subprocess.Popen([sys.executable, "-m", "loop.cli", "start", "--foreground", "--daemon-config",
                                 str(Path(config_path).resolve()), "--root", str(root), "--workspace", str(ws.root),
                                 *extra_args], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            why = start_error(ws.daemon_log, written)
            raise LoopError(f"the daemon exited at start (code {proc.returncode}){why}; see {ws.daemon_log}")
        if ws.pid.exists() and running_pid(ws) is not None:
            return proc.pid
        time.sleep(0.1)
    return proc.pid


def start_error(log: Path, offset: int) -> str:
    """The last `error:` line a daemon that failed at start wrote to its log past `offset` ("" when none)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read(20000).decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    return f": {lines[-1][len('error: '):]}" if lines else ""


def request_stop(ws: Workspace, wait_seconds: float = 0) -> bool:
    """Ask the daemon to finish its cycle and exit; True when it is (or already was) stopped."""
    pid = running_pid(ws)
    if pid is None:
        return True
    ws.stop_request.write_text(f"requested {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    if pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        if running_pid(ws) is None:
            return True
        time.sleep(0.2)
    return running_pid(ws) is None
