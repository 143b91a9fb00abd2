"""Supervised subprocesses: each run in its own process group (and, through loop/run/sandbox.py, its own
PID namespace), stdout/stderr to a log file, a walltime limit and a no-progress limit that end the
whole tree. Every run carries LLMLOOP_RUN_TAG in its environment, so processes that left the group
(`setsid`) are still found and killed; every kill goes through loop/run/kill.py's `kill_tree`, and
loop/run/reaper.py uses the same tags after a daemon restart."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from pydantic import BaseModel

from loop.run.kill import RUN_TAG, kill_tree, same_process
from loop.util.fsutil import read_regular_text

# ------------------------------------------------ the daemon's active run ----

class ActiveRun(BaseModel):
    """The run a cycle started, as state.json keeps it (enough to re-attach after a crash)."""

    label: str
    trace_id: str
    kind: str                       # train | command
    argv: list[str]
    run_dir: str
    log_path: str
    exit_file: str
    pid: int
    create_time: float
    started_at: float
    cycle_started: int
    config_path: str | None = None  # the trainer YAML, for auto-repair's fallback patch
    retry_of: str | None = None
    monitor_cycles: int = 0
    walltime_limit_seconds: float | None = None
    stall_seconds: float | None = None      # no new output for this long: killed as stalled
    run_tag: str = ""                       # LLMLOOP_RUN_TAG of every process of the run
    sandbox: str = "none"                   # bubblewrap | none
    executor: str = "local"                 # local | ray (loop/run/executor.py)
    device: str = ""                        # cuda:N | cpu: the device slot it trains on
    slot: int | None = None
    task: str = ""                          # the executor's own name for it (a Ray actor's name)
    fingerprint: str = ""                   # what a train run trains (its RunPlan's; loop/journal/fingerprint.py)
    recipe: str = ""
    resume_from: str | None = None          # a continuation: the screen's folder
    dimension: str | None = None            # the strategy dimension of the decision that started it


@dataclass(frozen=True)
class PreparedRun:
    """A run made ready to start, on this machine or a cluster worker: the whole command (the exit
    file wrapper around the sandboxed argv) and its environment."""

    run_tag: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    exit_file: Path


def prepare_run(label: str, trace_id: str, argv: list[str], run_dir: Path, cwd: Path, env: dict[str, str],
                sandbox=None, extra_env: dict[str, str] | None = None, reads: tuple[str, ...] = (),
                walltime_seconds: float | None = None) -> PreparedRun:
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path, exit_file = run_dir / "run.log", run_dir / "exit_code"
    exit_file.unlink(missing_ok=True)
    run_tag = f"{trace_id}:{label}"
    if sandbox is not None:
        sandbox.prepare(run_dir, outputs_of(argv, run_dir))
        gpus = (extra_env or {}).get("CUDA_VISIBLE_DEVICES")
        env = {**sandbox.env(run_dir, run_tag), **(extra_env or {})}
        command = sandbox.command(argv, run_dir, cwd, gpus=None if gpus is None else
                                  [int(g) for g in gpus.split(",") if g.strip().isdigit()], reads=reads)
    else:
        env, command = {**env, **(extra_env or {}), RUN_TAG: run_tag}, list(argv)
    # runwrap stays outside the sandbox (it must write the exit file whatever the run does); it holds
    # the walltime, sets the sandbox's rlimits and makes the run's cgroup
    limits = [a for name, value in (sandbox.limits() if sandbox is not None else {}).items()
              for a in ("--limit", f"{name}={value}")]
    limits += [a for name, value in (sandbox.caps() if sandbox is not None else {}).items()
               for a in ("--cap", f"{name}={value}")]
    walltime = ["--walltime", f"{walltime_seconds:g}"] if walltime_seconds else []
    wrapped = [sys.executable, "-m", "loop.run.runwrap", str(exit_file), *walltime, *limits, "--", *command]
    return PreparedRun(run_tag, wrapped, env, log_path, exit_file)


def outputs_of(argv: list[str], run_dir: Path) -> tuple[Path, ...]:
    """The folders a trainer command writes inside its run folder (its `--out`)."""
    out = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--out"]
    return tuple(o for o in out if o.resolve().is_relative_to(run_dir.resolve()))


def launch(label: str, trace_id: str, kind: str, argv: list[str], run_dir: Path, cycle: int, cwd: Path,
           env: dict[str, str], config_path: str | None = None, retry_of: str | None = None,
           walltime_limit_seconds: float | None = None, sandbox=None,
           stall_seconds: float | None = None, extra_env: dict[str, str] | None = None,
           reads: tuple[str, ...] = ()) -> ActiveRun:
    """Start `argv` in its own session (process group), inside `sandbox` (a loop.run.sandbox.Sandbox)
    when one is given, wrapped so its exit code lands in a file. `extra_env` (a device slot's
    CUDA_VISIBLE_DEVICES and thread share) reaches the run inside the sandbox too."""
    prepared = prepare_run(label, trace_id, argv, run_dir, cwd, env, sandbox, extra_env, reads,
                           walltime_limit_seconds)
    log_path, exit_file, run_tag, wrapped, env = (prepared.log_path, prepared.exit_file, prepared.run_tag,
                                                  prepared.command, prepared.env)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return ActiveRun(label=label, trace_id=trace_id, kind=kind, argv=argv, run_dir=str(run_dir),
                     log_path=str(log_path), exit_file=str(exit_file), pid=proc.pid,
                     create_time=psutil.Process(proc.pid).create_time(), started_at=time.time(),
                     cycle_started=cycle, config_path=config_path, retry_of=retry_of,
                     walltime_limit_seconds=walltime_limit_seconds, stall_seconds=stall_seconds,
                     run_tag=run_tag, sandbox="bubblewrap" if sandbox is not None and sandbox.active else "none")


_CHILDREN: dict[int, subprocess.Popen] = {}    # runs this process started (so it can reap them)


def is_alive(run: ActiveRun) -> bool:
    """The run's process still exists and is the same process (pid reuse is checked)."""
    child = _CHILDREN.get(run.pid)
    if child is not None and child.poll() is not None:
        return False
    return same_process(run.pid, run.create_time) is not None


def exit_code(run: ActiveRun) -> int | None:
    """The run's exit code from its exit file; None if it died without writing one (killed)."""
    try:
        return int(read_regular_text(run.exit_file).split()[0])      # in the run's folder: never a link
    except (OSError, ValueError):
        return None


def kill_run(run: ActiveRun) -> None:
    """End the run's whole tree: its process group (TERM, then KILL), then any process that still
    carries its tag (a grandchild that called setsid; inside a sandbox the PID namespace has
    already taken those down with it); the Popen, if this process started it, is reaped."""
    kill_tree(run.pid, popen=_CHILDREN.pop(run.pid, None), create_time=run.create_time, tag=run.run_tag or None)


def hit_walltime(run: ActiveRun) -> bool:
    """Whether runwrap killed the run at its walltime (its exit file says so)."""
    try:
        return "walltime" in read_regular_text(run.exit_file)
    except OSError:
        return False


def last_progress(run: ActiveRun) -> float:
    """When the run last wrote anything: its log or any file in its folder (two levels deep)."""
    newest = run.started_at
    root = Path(run.run_dir)
    for path in [Path(run.log_path), *root.glob("*"), *root.glob("*/*")]:
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest


def reap_child(run: ActiveRun) -> None:
    """Collect the exit status of a run this process started (no zombie left behind)."""
    child = _CHILDREN.pop(run.pid, None)
    if child is not None:
        child.wait(timeout=5)
