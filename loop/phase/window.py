"""When PHASE runs: the daily local-time window or every N cycles, and the daemon's pause.

The loop pauses only at a cycle boundary (never mid-evaluation), starts PHASE, sleeps in chunks of
at most 60 s (a stop request is honoured within one chunk), and resumes on PHASE's completion
signal, not at the window's end. Then the results are collapsed into the loop: fitness baselines
updated, underperforming variants flagged, search-space recommendations applied to the offline
policy and shown to the Builder, one integration event logged.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from loop.config import PhaseConfig
from loop.phase.results import phase_root
from loop.util.workspace import ModelPaths


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def daily_window_key(cfg: PhaseConfig, now: dt.datetime) -> str | None:
    """An id of the daily window `now` (local time) falls in, or None outside it. Handles windows
    that cross midnight (e.g. 23:00-02:00): the key is the date the window started."""
    start, end, t = _minutes(cfg.daily_start), _minutes(cfg.daily_end), now.hour * 60 + now.minute
    if start <= end:
        return now.date().isoformat() if start <= t < end else None
    if t >= start:
        return now.date().isoformat()
    if t < end:
        return (now.date() - dt.timedelta(days=1)).isoformat()
    return None


def seconds_until_window(cfg: PhaseConfig, now: dt.datetime) -> float | None:
    """Seconds until the next daily window opens (None for other schedules)."""
    if cfg.schedule != "daily":
        return None
    start = now.replace(hour=_minutes(cfg.daily_start) // 60, minute=_minutes(cfg.daily_start) % 60, second=0,
                        microsecond=0)
    if start <= now:
        start += dt.timedelta(days=1)
    return (start - now).total_seconds()


def window_due(cfg: PhaseConfig, cycle: int, now: dt.datetime, done_keys: list[str]) -> str | None:
    """The key of a PHASE window that is open now and not yet done, else None."""
    if cfg.schedule == "off":
        return None
    if cfg.schedule == "every_n_cycles":
        key = f"cycle-{cycle}"
        return key if cycle > 0 and cycle % cfg.every_n_cycles == 0 and key not in done_keys else None
    day = daily_window_key(cfg, now)
    if day is None:
        return None
    key = f"daily-{day}"
    return None if key in done_keys else key


def start_phase(daemon_config: str | None, workspace: Path, run_id: str, repo_root: Path,
                sandbox=None, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """PHASE as its own process (its own session), so a daemon crash does not take it down; inside
    the run sandbox (a loop.run.sandbox.Sandbox) when one is given, able to write only <workspace>/phase."""
    phase_dir = phase_root(workspace)
    log_dir = phase_dir / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "loop.phase", "run", "--workspace", str(workspace), "--run-id", run_id,
            "--root", str(repo_root)]
    if daemon_config:
        argv += ["--daemon-config", daemon_config]
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    if sandbox is not None:
        sandbox.prepare(phase_dir, (phase_dir,))      # PHASE writes its results folder in it
        # it reads the archive, the lineage and GEN_HEAD; of the rest of the workspace, nothing
        argv = sandbox.command(argv, phase_dir, repo_root, die_with_parent=False, reads=(ModelPaths(workspace).root,))
        # No LLMLOOP_OWNER: PHASE outlives a daemon crash on purpose, and a restart must not reap it.
        env = {k: v for k, v in sandbox.env(phase_dir, f"phase:{run_id}").items() if k != "LLMLOOP_OWNER"}
    env.update(extra_env or {})         # its device slot: one GPU or a share of the CPU threads
    with open(log_dir / "stdout.log", "ab") as log:
        return subprocess.Popen(argv, cwd=repo_root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_signal(signal_path: Path, proc: subprocess.Popen | None, should_stop, chunk_seconds: float,
                    on_chunk=None) -> str:
    """Sleep in chunks until the signal appears ('complete'), a stop is requested ('stopped'), or PHASE
    died without a signal ('phase_failed')."""
    while True:
        if signal_path.exists():
            return "complete"
        if should_stop():
            return "stopped"
        if proc is not None and proc.poll() is not None and not signal_path.exists():
            time.sleep(0.2)                       # the signal is written last: give the rename a moment
            if not signal_path.exists():
                return "phase_failed"
        if on_chunk:
            on_chunk()
        deadline = time.monotonic() + chunk_seconds
        while time.monotonic() < deadline:
            if signal_path.exists() or should_stop():
                break
            time.sleep(min(0.1, chunk_seconds))
