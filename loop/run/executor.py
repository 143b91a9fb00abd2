"""Where runs execute, behind one interface: submit a planned run, ask whether it is alive, kill it,
collect its folder, and after a daemon restart re-adopt it or cancel it. The daemon's runs and the
evolution window's candidates all go through `Executor`; nothing above it knows which one it has.

  local  a supervised subprocess in the run sandbox on this machine, on a device slot of the
         workspace's pool (loop/run/slots.py): one GPU, or a share of the CPU threads
  ray    the same sandboxed command as a task on a Ray cluster (loop/run/ray_executor.py); Ray's own
         resources (`num_gpus_per_run`, `num_cpus_per_run`) place it

Every run ends the same way for the code above: an exit code in `<run_dir>/exit_code`, the log in
`<run_dir>/run.log` and the trainer's folder in `<run_dir>/out`, on this host.
"""
from __future__ import annotations

import time
from pathlib import Path

from loop.run.plan import RunPlan, child_env
from loop.run.slots import DeviceSlot, SlotPool
from loop.run.supervise import ActiveRun, is_alive, kill_run, launch


class Executor:
    """The local executor (and the interface every executor keeps)."""

    kind = "local"

    def __init__(self, repo_root: Path, sandbox=None, pool: SlotPool | None = None):
        self.repo_root = Path(repo_root)
        self.sandbox = sandbox
        self.pool = pool

    # ---- the interface ----
    def submit(self, plan: RunPlan, cycle: int, retry_of: str | None = None, should_stop=lambda: False,
               on_wait=None, wait: bool = True) -> ActiveRun | None:
        """Start `plan` on a free slot; waits for one unless `wait` is False (then None when none is
        free). None also when `should_stop` turned true while waiting."""
        holder = f"{plan.trace_id}:{plan.label}"
        slot = None
        if self.pool is not None:
            slot = self.pool.acquire(holder, should_stop, on_wait=on_wait) if wait else self.pool.try_acquire(holder)
            if slot is None:
                return None
        try:
            run = launch(plan.label, plan.trace_id, plan.kind, plan.argv, plan.run_dir, cycle, self.repo_root,
                         child_env(self.repo_root), config_path=plan.config_path, retry_of=retry_of,
                         walltime_limit_seconds=plan.walltime_limit_seconds, sandbox=self.sandbox,
                         stall_seconds=plan.stall_seconds, reads=plan.reads, extra_env=slot.env() if slot else None)
        except BaseException:
            if self.pool is not None:
                self.pool.release(holder)
            raise
        if slot is not None:
            self.pool.bind(slot, holder, run.pid, run.create_time)
            run = run.model_copy(update={"device": slot.device, "slot": slot.index})
        run = run.model_copy(update={"executor": self.kind})
        record_placement(run)
        return run

    def alive(self, run: ActiveRun) -> bool:
        return is_alive(run)

    def kill(self, run: ActiveRun) -> None:
        kill_run(run)
        self.release(run)

    def collect(self, run: ActiveRun) -> None:
        """The run is over: its folder is complete on this host (nothing to fetch locally) and its
        slot goes back to the pool."""
        self.release(run)

    def adopt(self, run: ActiveRun) -> bool:
        """After a restart: is this run, started by an earlier daemon, still going? (Its slot lease
        names its process, so it keeps the slot.)"""
        return is_alive(run)

    def cancel_strays(self, keep: set[str]) -> list[str]:
        """Runs of this workspace the executor still has that no state names (none locally: the
        reaper finds leftover processes by their owner tag)."""
        return []

    def describe(self, run: ActiveRun) -> str:
        return f"{run.device} via {self.kind}" if run.device else self.kind

    # ---- helpers ----
    def release(self, run: ActiveRun) -> None:
        if self.pool is not None:
            self.pool.release(f"{run.trace_id}:{run.label}")


def record_placement(run: ActiveRun) -> None:
    """Where the run trains, in its own folder (placement.json), beside its log and outputs."""
    from loop.util.fsutil import atomic_write_json

    try:
        atomic_write_json(Path(run.run_dir) / "placement.json",
                          {"executor": run.executor, "device": run.device, "slot": run.slot, "task": run.task,
                           "run_tag": run.run_tag})
    except OSError:
        pass        # the run goes on; its cycle event carries the device too


def monitor(executor: Executor, run: ActiveRun, seconds: float, should_stop, poll_seconds: float = 0.25) -> str:
    """Watch the run for up to `seconds`: 'finished', 'running' (window over), 'stopping' (stop was
    requested), 'timed_out' (past its walltime limit) or 'stalled' (no output for stall_seconds);
    the last two kill it."""
    from loop.run.supervise import hit_walltime, last_progress, reap_child

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
                 poll_seconds: float = 0.25) -> dict[str, str]:
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


def executor_for(cfg, repo_root: Path, ws_root: Path, sandbox=None) -> Executor:
    """The configured executor (`executor.kind`), with the workspace's slot pool for local runs. A
    Ray cluster must answer now (loop/run/ray_link.py): else RayUnavailable, within a minute."""
    from loop.run.slots import pool_for

    if cfg.executor.kind == "ray":
        from loop.run.ray_executor import RayExecutor

        executor = RayExecutor(cfg.executor, repo_root, ws_root, sandbox,
                               local=lambda: Executor(repo_root, sandbox, pool_for(cfg, ws_root)),
                               wait_seconds=min(cfg.default_monitor_seconds, cfg.max_monitor_seconds))
        executor.connect()
        return executor
    return Executor(repo_root, sandbox, pool_for(cfg, ws_root))


def check_executor(cfg) -> None:
    """The quick start-up check, before anything else starts: a Ray GCS must accept a connection."""
    if cfg.executor.kind == "ray":
        from loop.run.ray_link import check_reachable

        check_reachable(cfg.executor)


__all__ = ["DeviceSlot", "Executor", "check_executor", "executor_for", "monitor", "monitor_many", "run_all"]
