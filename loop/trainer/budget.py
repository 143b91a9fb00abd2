"""Per-run budget (evolution_scheduler.md 'Budget'): every cap is checked while the run goes,
and the first breach raises BudgetExceeded at once. None means no cap."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from pydantic import BaseModel

from loop.config import BudgetCaps
from loop.errors import BudgetExceeded
from loop.util.fsutil import folder_size_bytes

GB = 1024**3


class BudgetUsed(BaseModel):
    steps: int = 0
    walltime_minutes: float = 0.0
    gpu_memory_gb: float = 0.0        # peak CUDA memory allocated (0 on CPU)
    cpu_memory_gb: float = 0.0        # peak resident memory of the training process
    tokens_processed: int = 0         # images seen by the student
    disk_gb: float = 0.0              # size of the run folder


class BudgetBreach(BaseModel):
    cap: str
    limit: float
    used: float


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (GB if sys.platform == "darwin" else 1024**2)


class BudgetMeter:
    """Measures what a run has used and raises BudgetExceeded on the first cap it breaks."""

    def __init__(self, caps: BudgetCaps, run_dir: Path, device: torch.device,
                 steps: int = 0, images: int = 0, elapsed_seconds: float = 0.0):
        self.caps, self.run_dir, self.device = caps, run_dir, device
        self.used = BudgetUsed(steps=steps, tokens_processed=images)
        self._elapsed_before = elapsed_seconds
        self._started = time.monotonic()

    @property
    def elapsed_seconds(self) -> float:
        return self._elapsed_before + time.monotonic() - self._started

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
