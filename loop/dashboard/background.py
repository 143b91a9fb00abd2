"""The dashboard as a background process: `llmloop start --dashboard` starts it detached, a server
records itself in <workspace>/logs/dashboard.pid while it serves, and `llmloop dashboard --stop`
stops the one recorded there. `llmloop stop` leaves it running on purpose: it reads files only, so
the morning's page (and the final reports' state) stays browsable after the daemon has stopped.

Nothing here imports starlette or uvicorn: `llmloop start` needs neither unless asked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import psutil

from loop.run.kill import wait_exited
from loop.util.fsutil import atomic_write_text
from loop.util.workspace import Workspace

PID_FILE = "dashboard.pid"        # under <workspace>/logs/: who serves this workspace, as JSON
LOG_FILE = "dashboard.log"        # the detached server's output, 0600 (it holds the printed token)
START_WAIT_SECONDS = 30           # the first read of a long night's workspace takes a few seconds
STOP_WAIT_SECONDS = 10

# Where this package is imported from: the detached server gets it on PYTHONPATH, as the daemon does.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


@dataclass
class Serving:
    """A dashboard serving a workspace, as its pid file records it."""

    pid: int
    create_time: float            # with the pid: a reused pid is not taken for the dashboard
    url: str
    token_file: str
    workspace: str


def pid_path(ws: Workspace) -> Path:
    return ws.logs / PID_FILE


def log_path(ws: Workspace) -> Path:
    return ws.logs / LOG_FILE


def record(ws: Workspace, url: str, token_file: Path) -> Serving:
    """Called by the server itself once it is about to serve."""
    me = Serving(os.getpid(), psutil.Process().create_time(), url, str(Path(token_file).resolve()),
                 str(ws.root))
    atomic_write_text(pid_path(ws), json.dumps(asdict(me)) + "\n")
    return me


def forget(ws: Workspace, pid: int) -> None:
    """Remove the pid file if it still names `pid` (a newer server may have replaced it)."""
    found = read_record(ws)
    if found is not None and found.pid == pid:
        pid_path(ws).unlink(missing_ok=True)


def read_record(ws: Workspace) -> Serving | None:
    try:
        return Serving(**json.loads(pid_path(ws).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def running(ws: Workspace) -> Serving | None:
    """The dashboard serving `ws`, if its recorded process is alive (a stale file reads as none)."""
    found = read_record(ws)
    if found is None:
        return None
    try:
        alive = psutil.Process(found.pid)
        if abs(alive.create_time() - found.create_time) > 1.0 or alive.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return found


# ------------------------------------------------------------------ start ----

def start_detached(ws: Workspace, config_path: str | Path, root: Path, port: int,
                   say: Callable[[str], None]) -> Serving | None:
    """The dashboard of `ws` (`config_path` and `root` as the daemon got them) on 127.0.0.1:`port`,
    started in its own session unless one already serves `ws`. Waits until it answers (at most
    START_WAIT_SECONDS); None, with the reason said, if it could not start: the caller (the
    daemon's start) goes on either way."""
    if (serving := running(ws)) is not None:
        say(f"dashboard: already serving {ws.root} at {serving.url} (pid {serving.pid}); "
            f"the action token is in {serving.token_file} (mode 0600)")
        return serving
    missing = [m for m in ("starlette", "uvicorn") if find_spec(m) is None]
    if missing:
        say(f"dashboard: not started: {', '.join(missing)} not installed (pip install 'llmloop[dashboard]')")
        return None
    proc = spawn(ws, config_path, root, port)
    serving = wait_until_serving(ws, proc)
    if serving is None:
        say(f"dashboard: did not come up on 127.0.0.1:{port} ({why_not(proc, ws)}); see {log_path(ws)}. "
            f"The daemon is not affected; `llmloop dashboard` starts one by hand.")
        return None
    say(f"dashboard: {serving.url} (pid {serving.pid}, log {log_path(ws)}); the action token is in "
        f"{serving.token_file} (mode 0600); `llmloop dashboard --stop` stops it (`llmloop stop` leaves it up)")
    return serving


def spawn(ws: Workspace, config_path: str | Path, root: Path, port: int) -> subprocess.Popen:
    ws.logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    # 0600: the server prints its token once, and here that print lands in this file
    fd = os.open(log_path(ws), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "loop.cli", "dashboard", "--daemon-config",
                                 str(Path(config_path).resolve()), "--root", str(root), "--workspace", str(ws.root),
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait_until_serving(ws: Workspace, proc: subprocess.Popen) -> Serving | None:
    """The record of `proc` once it answers for `ws` over HTTP (another program that holds the port
    answers something else, and `proc` then exits on its bind error)."""
    deadline = time.monotonic() + START_WAIT_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        found = read_record(ws)
        if found is not None and found.pid == proc.pid and answers_for(found.url, ws):
            return found
        time.sleep(0.2)
    return None


def answers_for(url: str, ws: Workspace) -> bool:
    try:
        with urllib.request.urlopen(url + "api/status", timeout=5) as r:
            served = json.loads(r.read()).get("workspace")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(served, str) and Path(served).resolve() == ws.root.resolve()


def why_not(proc: subprocess.Popen, ws: Workspace) -> str:
    if proc.poll() is None:
        return f"pid {proc.pid} still starting after {START_WAIT_SECONDS}s; left running"
    try:
        lines = log_path(ws).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return f"it exited with code {proc.returncode}" + (f": {lines[-1].strip()[:300]}" if lines else "")


# ------------------------------------------------------------------- stop ----

def stop(ws: Workspace, wait_seconds: float = STOP_WAIT_SECONDS) -> Serving | None:
    """SIGTERM to the dashboard serving `ws` (SIGKILL after `wait_seconds`); the one stopped, or None."""
    serving = running(ws)
    if serving is None:
        pid_path(ws).unlink(missing_ok=True)          # a stale record: nothing to stop
        return None
    try:
        proc = psutil.Process(serving.pid)
        proc.send_signal(signal.SIGTERM)
        # exited counts as soon as it is a zombie: its parent (a foreground daemon started with
        # --dashboard) reaps it only when it exits itself
        if not wait_exited([proc], wait_seconds):
            proc.kill()
            wait_exited([proc], 5)
    except psutil.NoSuchProcess:
        pass
    forget(ws, serving.pid)
    return serving
