"""The local executor: each run a supervised subprocess in the run sandbox on this machine, on a
device slot of the workspace's pool (loop/run/slots.py): one GPU, or a share of the CPU threads. It
keeps the `Executor` contract of loop/run/supervise.py."""
from __future__ import annotations

from pathlib import Path

from loop.run.plan import RunPlan, child_env
from loop.run.slots import SlotPool
from loop.run.supervise import ActiveRun, is_alive, kill_run, launch, record_placement


class LocalExecutor:
    """Runs on this machine, one per device slot (every slot when `pool` is None)."""

    kind = "local"

    def __init__(self, repo_root: Path, sandbox=None, pool: SlotPool | None = None):
        self.repo_root = Path(repo_root)
        self.sandbox = sandbox
        self.pool = pool

    # ---- the contract ----
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
        placement = {"device": slot.device, "slot": slot.index} if slot is not None else {}
        try:
            run = launch(plan, cycle, self.repo_root, child_env(self.repo_root), self.sandbox, retry_of,
                         slot.env() if slot else None, executor=self.kind, **placement)
        except BaseException:
            if self.pool is not None:
                self.pool.release(holder)
            raise
        if slot is not None:
            self.pool.bind(slot, holder, run.pid, run.create_time)
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

    def close(self) -> None:
        """Nothing held open: each run's slot lease goes with the run."""

    # ---- helpers ----
    def release(self, run: ActiveRun) -> None:
        if self.pool is not None:
            self.pool.release(f"{run.trace_id}:{run.label}")
