"""Per-run budget (evolution_scheduler.md 'Budget'): every cap is checked while the run goes,
and the first breach raises BudgetExceeded at once. None means no cap."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

from loop.config import BudgetCaps
from loop.errors import BudgetExceeded
from loop.journal.metrics import BudgetUsed
from loop.util.fsutil import folder_size_bytes

GB = 1024**3
CLOCK = time.monotonic     # the budget's clock (a test swaps in a virtual one: limits without waiting)


def now() -> float:
    return CLOCK()


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (GB if sys.platform == "darwin" else 1024**2)


def cpu_seconds() -> float:
    """User + system CPU of this process and the children it waited for (loader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class BudgetMeter:
    """Measures what a run has used and raises BudgetExceeded on the first cap it breaks."""

    def __init__(self, caps: BudgetCaps, run_dir: Path, device: torch.device,
                 steps: int = 0, images: int = 0, elapsed_seconds: float = 0.0):
        self.caps, self.run_dir, self.device = caps, run_dir, device
        self.used = BudgetUsed(steps=steps, tokens_processed=images)
        self._elapsed_before = elapsed_seconds
        self._started = now()

    @property
    def elapsed_seconds(self) -> float:
        return self._elapsed_before + now() - self._started

    def _breach(self, cap: str, used: float) -> None:
        raise BudgetExceeded(cap, getattr(self.caps, cap), used)

    def before_step(self) -> None:
        """Refuse the next optimizer step if it would exceed max_steps."""
        if self.caps.max_steps is not None and self.used.steps + 1 > self.caps.max_steps:
            self._breach("max_steps", self.used.steps + 1)

    def after_step(self, batch_images: int) -> None:
        self.used.steps += 1
        self.used.tokens_processed += batch_images
        self.check_running()

    def measure(self) -> None:
        """Bring walltime and peak memory up to date (no checks)."""
        u = self.used
        u.walltime_minutes = self.elapsed_seconds / 60.0
        u.cpu_memory_gb = peak_rss_gb()
        if self.device.type == "cuda":
            u.gpu_memory_gb = torch.cuda.max_memory_allocated(self.device) / GB

    def check_running(self) -> None:
        """Walltime, memory and images seen: cheap enough to check after every step."""
        self.measure()
        c, u = self.caps, self.used
        if c.max_tokens_processed is not None and u.tokens_processed > c.max_tokens_processed:
            self._breach("max_tokens_processed", u.tokens_processed)
        if c.max_walltime_minutes is not None and u.walltime_minutes > c.max_walltime_minutes:
            self._breach("max_walltime_minutes", u.walltime_minutes)
        if c.max_gpu_memory_gb is not None and u.gpu_memory_gb > c.max_gpu_memory_gb:
            self._breach("max_gpu_memory_gb", u.gpu_memory_gb)
        if c.max_cpu_memory_gb is not None and u.cpu_memory_gb > c.max_cpu_memory_gb:
            self._breach("max_cpu_memory_gb", u.cpu_memory_gb)

    def check_disk(self) -> None:
        self.used.disk_gb = folder_size_bytes(self.run_dir) / GB
        if self.caps.max_disk_gb is not None and self.used.disk_gb > self.caps.max_disk_gb:
            self._breach("max_disk_gb", self.used.disk_gb)


# ---- fitting a run under its walltime cap ----
FIT_CHECK_STEPS = 20      # steps timed before the fit (enough to pass the first batches' warm-up)
FIT_SAFETY = 0.9          # plan to use at most this share of the cap: evaluation and checkpoints vary
EVAL_SHARE = 0.35         # a validation image costs about this share of a training image (forward only)


def epoch_seconds_estimate(step_seconds: float, steps_per_epoch: int, train_images: int, val_images: int) -> float:
    """One epoch's seconds from the measured seconds per step, its validation pass included."""
    return step_seconds * steps_per_epoch * (1 + EVAL_SHARE * val_images / max(train_images, 1))


def epochs_that_fit(cap_seconds: float, epoch_start_elapsed: float, epoch_seconds: float, done: int,
                    stop_epoch: int) -> int:
    """The last epoch a run can finish under FIT_SAFETY of its cap, from the elapsed seconds at the
    start of the epoch it is in (`done` epochs finished before it); `stop_epoch` when the rest fits."""
    room = FIT_SAFETY * cap_seconds - epoch_start_elapsed
    return min(stop_epoch, done + int(room // max(epoch_seconds, 1e-9)))


class CapFit:
    """Times a run's first steps, then brings its stop epoch forward to what its walltime cap has room
    for (the first run on a task would otherwise meet the cap blind, and lose every epoch to it)."""

    def __init__(self, cap_minutes: float | None, steps_per_epoch: int, train_images: int, val_images: int,
                 clock=now):
        self.clock = clock
        self.cap_seconds = cap_minutes * 60 if cap_minutes else None
        self.pending = self.cap_seconds is not None
        self.sizes = (steps_per_epoch, train_images, val_images)
        self.first_step_at: float | None = None
        self.steps = 0
        self.estimate: float | None = None      # seconds an epoch, once measured

    def due_after_step(self) -> bool:
        """Count a step; True once FIT_CHECK_STEPS more have been timed after the first one."""
        if not self.pending:
            return False
        self.steps += 1
        if self.first_step_at is None:
            self.first_step_at = self.clock()
        return self.steps - 1 >= FIT_CHECK_STEPS

    def due_at_epoch_end(self) -> bool:
        return self.pending and self.steps >= 2

    def fit(self, epoch_start_elapsed: float, done: int, stop_epoch: int, cap_minutes: float) -> tuple[int, str]:
        """(the epoch to stop after, what to log; '' when the rest fits). BudgetExceeded when not
        even the epoch under way fits."""
        self.pending = False
        step_seconds = (self.clock() - self.first_step_at) / (self.steps - 1)
        self.estimate = epoch_seconds_estimate(step_seconds, *self.sizes)
        stop = epochs_that_fit(self.cap_seconds, epoch_start_elapsed, self.estimate, done, stop_epoch)
        head = (f"cap fit: about {self.estimate / 60:.1f} min an epoch (timed over {self.steps - 1} steps) under the "
                f"{cap_minutes:g}-min walltime cap")
        if stop <= done:
            projected = round((epoch_start_elapsed + self.estimate) / 60, 3)
            raise BudgetExceeded("max_walltime_minutes", cap_minutes, projected,
                                 note=f"{head}: not even epoch {done + 1} fits (projected {projected:g} min); a "
                                      "smaller image size, model or data share, or a larger cap, would")
        if stop >= stop_epoch:
            return stop_epoch, ""
        return stop, (f"{head}: {stop} of {stop_epoch} epoch(s) fit; stopping after epoch {stop} with its "
                      "checkpoint (a continuation, run.resume_from, trains the rest)")
