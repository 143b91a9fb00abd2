"""The process around the cycles: single instance (a file lock), state and heartbeat, stop
requests (a file or SIGTERM, honoured within one cycle), and recovery after a crash: a new start
resumes at the next cycle number and re-attaches to (or reaps) the run that was active."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from loop.config import DaemonConfig, LLMRole
from loop.cycle import Loop, run_cycle
from loop.errors import LoopError
from loop.events import EventLog
from loop.runner import is_alive
from loop.state import LoopState
from loop.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]


class AlreadyRunning(LoopError):
    exit_code = 11


def workspace_of(cfg: DaemonConfig, override: str | None = None) -> Workspace:
    root = Path(override or cfg.workspace)
    return Workspace(root if root.is_absolute() else Path.cwd() / root)


def running_pid(ws: Workspace) -> int | None:
    """The pid of a live daemon holding the workspace, or None."""
    lock = FileLock(str(ws.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            return int(ws.pid.read_text().strip())
        except (OSError, ValueError):
            return -1
    lock.release()
    return None


def effective_role(role: LLMRole, credentials_file: str) -> LLMRole:
    """The role's endpoint from the config, or else the one `llmloop login --base-url` stored."""
    if role.base_url:
        return role
    try:
        stored = json.loads(Path(credentials_file).expanduser().read_text())
    except (OSError, ValueError):
        return role
    if not isinstance(stored, dict) or not stored.get("base_url"):
        return role
    return role.model_copy(update={"base_url": stored["base_url"], "model": stored.get("model") or role.model})


def build_loop(cfg: DaemonConfig, ws: Workspace, should_stop, say) -> Loop:
    from loop.agents.llm import for_role, resolve_api_key
    from loop.secrets import known_secrets

    events = EventLog(ws.events)
    current = {"trace": "-"}

    def on_llm_event(event: dict) -> None:   # retries, format fallbacks, repairs: traced to the cycle
        events.append(event.get("kind", "llm"), current["trace"], **{k: v for k, v in event.items() if k != "kind"})

    builder = for_role(effective_role(cfg.builder, cfg.credentials_file), "builder", cfg.credentials_file,
                       on_event=on_llm_event)
    mentor_role = effective_role(cfg.mentor, cfg.credentials_file).model_copy(
        update={k: v for k, v in {"model": cfg.mentor_model, "reasoning_effort": cfg.mentor_reasoning_effort}.items() if v})
    mentor = for_role(mentor_role, "mentor", cfg.credentials_file, on_event=on_llm_event)
    return Loop(cfg=cfg, repo_root=REPO_ROOT, ws=ws, events=events, builder=builder, mentor=mentor,
                current=current,
                secrets=known_secrets() + [k for k in (resolve_api_key(cfg.builder, cfg.credentials_file),
                                                       resolve_api_key(cfg.mentor, cfg.credentials_file)) if k],
                should_stop=should_stop, say=say)


def run_daemon(cfg: DaemonConfig, ws: Workspace, max_cycles: int | None = None, say=print) -> LoopState:
    """Run cycles until stopped (or `max_cycles`). Holds the workspace lock throughout."""
    from loop.agents.prompts import check_rule_budgets

    ws.ensure()
    lock = FileLock(str(ws.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AlreadyRunning(f"the daemon is already running on {ws.root} (pid {running_pid(ws)})") from None
    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ws.pid.write_text(f"{os.getpid()}\n")
        ws.stop_request.unlink(missing_ok=True)
        rules = check_rule_budgets(cfg, REPO_ROOT)

        def should_stop() -> bool:
            return stop["requested"] or ws.stop_request.exists()

        loop = build_loop(cfg, ws, should_stop, say)
        events = loop.events
        torn = events.repair_tail()
        state = LoopState.load(ws.state)
        state.stop_reason = None
        mode = "LLM" if loop.builder is not None else "offline policy (no endpoint configured; no network)"
        events.append("daemon_start", f"start-{state.cycle + 1:05d}", pid=os.getpid(), resume_cycle=state.cycle + 1,
                      builder=mode, mentor="LLM" if loop.mentor is not None else "offline policy",
                      prompt_rules=rules, repaired_torn_event=torn,
                      active_run=state.active_run.label if state.active_run else None,
                      active_run_alive=is_alive(state.active_run) if state.active_run else None)
        say(f"llmloop daemon pid {os.getpid()}: Builder and Mentor use the {mode}; "
            f"resuming at cycle {state.cycle + 1}")
        done = 0
        while not should_stop() and state.stop_reason is None and (max_cycles is None or done < max_cycles):
            state = run_cycle(loop, state)
            done += 1
            sleep_between_cycles(cfg.daemon_poll_seconds, should_stop)
        reason = state.stop_reason or ("stop requested" if should_stop() else f"{done} cycle(s) done")
        events.append("daemon_stop", f"stop-{state.cycle:05d}", reason=reason, cycle=state.cycle)
        say(f"llmloop daemon stopped after cycle {state.cycle}: {reason}")
        return state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ws.pid.unlink(missing_ok=True)
        ws.stop_request.unlink(missing_ok=True)
        lock.release()


def sleep_between_cycles(seconds: float, should_stop, chunk: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not should_stop():
        time.sleep(min(chunk, max(0.0, deadline - time.monotonic())))


def start_background(config_path: str, ws: Workspace, extra_args: list[str]) -> int:
    """Start the daemon detached (its own session, output to logs/daemon.log); returns its pid."""
    pid = running_pid(ws)
    if pid is not None:
        raise AlreadyRunning(f"the daemon is already running on {ws.root} (pid {pid})")
    ws.ensure()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with open(ws.daemon_log, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loop.cli", "start", "--foreground", "--daemon-config",
                                 config_path, "--workspace", str(ws.root), *extra_args], cwd=Path.cwd(), env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise LoopError(f"the daemon exited at start (code {proc.returncode}); see {ws.daemon_log}")
        if ws.pid.exists() and running_pid(ws) is not None:
            return proc.pid
        time.sleep(0.1)
    return proc.pid


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
