"""Learning-rate schedules, stepped once per optimizer step: timm's cosine with warmup,
torch's one-cycle, or constant."""
from __future__ import annotations

import torch

from loop.trainer.config import ScheduleConfig


class StepSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                 steps_per_epoch: int):
        self.name = cfg.name
        base_lr = optimizer.param_groups[0]["lr"]
        self.impl = None
        if cfg.name == "cosine":
            from timm.scheduler import CosineLRScheduler

            warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
            self.impl = CosineLRScheduler(optimizer, t_initial=max(1, total_steps),
                                          lr_min=base_lr * cfg.min_lr_ratio, warmup_t=warmup,
                                          warmup_lr_init=base_lr * 0.01, t_in_epochs=False)
        elif cfg.name == "onecycle":
            self.impl = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lr,
                                                            total_steps=max(1, total_steps),
                                                            pct_start=cfg.pct_start)

    def after_step(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if self.name == "cosine":
            self.impl.step_update(num_updates=step)
        elif self.name == "onecycle":
            self.impl.step()

    def state_dict(self) -> dict:
        return self.impl.state_dict() if self.impl is not None else {}

    def load_state_dict(self, state: dict, step: int) -> None:
        if self.name == "onecycle":
            self.impl.load_state_dict(state)
        elif self.name == "cosine":
            self.impl.step_update(num_updates=step)
