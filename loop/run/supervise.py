"""A supervised run and its watch, in one place: what a run is (`ActiveRun`, made by one
constructor), what an executor must do for it (`Executor`, the contract the local and the Ray
executors keep), how it starts (`launch`: its own process group and, through loop/run/sandbox.py,
its own PID namespace, stdout/stderr to a log file, its exit code to a file) and the watch loop
(`monitor`, `monitor_many`, `run_all`) with everything it checks: alive, the walltime, progress.

Every run carries LLMLOOP_RUN_TAG in its environment, so processes that left the group (`setsid`)
are still found and killed; every kill goes through loop/run/kill.py's `kill_tree`, and
loop/run/reaper.py uses the same tags after a daemon restart."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

import psutil
from pydantic import BaseModel

from loop.run.kill import RUN_TAG, kill_tree, same_process
from loop.run.plan import RunPlan
from loop.util.fsutil import atomic_write_json, read_regular_text

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
    executor: str = "local"                 # local | ray (the Executor that runs it)
    device: str = ""                        # cuda:N | cpu: the device slot it trains on
    slot: int | None = None
    task: str = ""                          # the executor's own name for it (a Ray actor's name)
    fingerprint: str = ""                   # what a train run trains (its RunPlan's; loop/journal/fingerprint.py)
    recipe: str = ""
    resume_from: str | None = None          # a continuation: the screen's folder
    dimension: str | None = None            # the strategy dimension of the decision that started it

    @classmethod
    def started(cls, plan: RunPlan, prepared: "PreparedRun", pid: int, create_time: float, cycle: int,
                retry_of: str | None = None, sandbox=None, **placement) -> "ActiveRun":
        """The one constructor: `plan` just started as process `pid` (its runwrap, here or on a worker).
        `placement` is the executor's say: executor, device, slot, task, or a stall limit it cannot keep."""
        return cls(**{**dict(
            label=plan.label, trace_id=plan.trace_id, kind=plan.kind, argv=plan.argv, run_dir=str(plan.run_dir),
            log_path=str(prepared.log_path), exit_file=str(prepared.exit_file), pid=pid, create_time=create_time,
            started_at=time.time(), cycle_started=cycle, config_path=plan.config_path, retry_of=retry_of,
            walltime_limit_seconds=plan.walltime_limit_seconds, stall_seconds=plan.stall_seconds,
            run_tag=prepared.run_tag, sandbox="bubblewrap" if sandbox is not None and sandbox.active else "none",
            fingerprint=plan.fingerprint, recipe=plan.recipe, resume_from=plan.resume_from), **placement})


class Executor(Protocol):
    """Where runs execute, as the watch loop and the cycle use it; kept by LocalExecutor
    (loop/run/local_executor.py) and RayExecutor (loop/run/ray_executor.py)."""

    kind: str

    def submit(self, plan: RunPlan, cycle: int, retry_of: str | None = None,
               should_stop: Callable[[], bool] = lambda: False, on_wait: Callable[[], None] | None = None,
               wait: bool = True) -> ActiveRun | None:
        """Start `plan` (waiting for room unless `wait` is False); None when it did not start."""

    def alive(self, run: ActiveRun) -> bool:
        """Whether the run is still going."""

    def kill(self, run: ActiveRun) -> None:
        """End the run's whole tree, and collect it."""

    def collect(self, run: ActiveRun) -> None:
        """The run is over: its folder complete on this host, its room given back."""

    def adopt(self, run: ActiveRun) -> bool:
        """After a restart: whether this run, started by an earlier daemon, is still going."""

    def cancel_strays(self, keep: set[str]) -> list[str]:
        """End this workspace's runs the executor still has whose run tag is not in `keep`."""

    def describe(self, run: ActiveRun) -> str:
        """Where the run trains, in words."""

    def close(self) -> None:
        """Done with it: end what it holds open (a Ray driver process). Runs in flight go on."""


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


def launch(plan: RunPlan, cycle: int, cwd: Path, env: dict[str, str], sandbox=None, retry_of: str | None = None,
           extra_env: dict[str, str] | None = None, **placement) -> ActiveRun:
    """Start `plan` in its own session (process group), inside `sandbox` (a loop.run.sandbox.Sandbox)
    when one is given, wrapped so its exit code lands in a file. `extra_env` (a device slot's
    CUDA_VISIBLE_DEVICES and thread share) reaches the run inside the sandbox too; `placement` goes
    to `ActiveRun.started`."""
    prepared = prepare_run(plan.label, plan.trace_id, plan.argv, plan.run_dir, cwd, env, sandbox, extra_env,
                           plan.reads, plan.walltime_limit_seconds)
    with open(prepared.log_path, "ab") as log:
        proc = subprocess.Popen(prepared.command, cwd=cwd, env=prepared.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return ActiveRun.started(plan, prepared, proc.pid, psutil.Process(proc.pid).create_time(), cycle, retry_of,
                             sandbox, **placement)


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


def record_placement(run: ActiveRun) -> None:
    """Where the run trains, in its own folder (placement.json), beside its log and outputs."""
    try:
        atomic_write_json(Path(run.run_dir) / "placement.json",
                          {"executor": run.executor, "device": run.device, "slot": run.slot, "task": run.task,
                           "run_tag": run.run_tag})
    except OSError:
        pass        # the run goes on; its cycle event carries the device too


# ------------------------------------------------------------ the watch loop ----

MonitorStatus = Literal["finished", "running", "stopping", "timed_out", "stalled"]

def monitor(executor: Executor, run: ActiveRun, seconds: float, should_stop, poll_seconds: float = 0.25
            ) -> MonitorStatus:
    """Watch the run for up to `seconds`: 'finished', 'running' (window over), 'stopping' (stop was
    requested), 'timed_out' (past its walltime limit) or 'stalled' (no output for stall_seconds);
    the last two kill it."""
    deadline = time.monotonic() + seconds
    next_progress_check = 0.0
    while True:
        if not executor.alive(run):
            reap_child(run)
            executor.collect(run)
            if hit_walltime(run):          # its own wrapper killed it at the walltime: what remains, too
                executor.kill(run)
                return "timed_out"
            return "finished"
        if run.walltime_limit_seconds and time.time() - run.started_at > run.walltime_limit_seconds:
            executor.kill(run)
            return "timed_out"
        if run.stall_seconds and time.monotonic() >= next_progress_check:
            next_progress_check = time.monotonic() + min(5.0, run.stall_seconds / 4)
            if time.time() - last_progress(run) > run.stall_seconds:
                executor.kill(run)
                return "stalled"
        if should_stop():
            return "stopping"
        if time.monotonic() >= deadline:
            return "running"
        time.sleep(poll_seconds)


def monitor_many(executor: Executor, runs: list[ActiveRun], seconds: float, should_stop,
                 poll_seconds: float = 0.25) -> dict[str, MonitorStatus]:
    """Watch several runs for up to `seconds`, returning as soon as one of them ends (or a stop is
    asked for): run tag -> what `monitor` would say of it ('running' for those still going)."""
    deadline = time.monotonic() + seconds
    while True:
        statuses = {run.run_tag: monitor(executor, run, 0, should_stop, poll_seconds=0) for run in runs}
        if any(s != "running" for s in statuses.values()) or time.monotonic() >= deadline:
            return statuses
        time.sleep(poll_seconds)


def run_all(executor: Executor, plans: list[RunPlan], max_parallel: int, cycle: int = 0,
            poll_seconds: float = 0.2, on_finish=None) -> dict[str, str]:
    """Run `plans` (at most `max_parallel` at once, and only on free slots); returns each label's
    monitor status ('finished', 'timed_out', 'stalled'). Interrupted, it kills what it started."""
    pending, running, status = list(plans), [], {}
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                run = executor.submit(pending[0], cycle, wait=not running)   # never wait while holding none
                if run is None:
                    break
                pending.pop(0)
                running.append(run)
            time.sleep(poll_seconds)
            for run in list(running):
                state = monitor(executor, run, 0, lambda: False, poll_seconds=0)
                if state != "running":
                    running.remove(run)
                    status[run.label] = state
                    if on_finish:
                        on_finish(run, state)
    finally:
        for run in running:
            executor.kill(run)
    return status
