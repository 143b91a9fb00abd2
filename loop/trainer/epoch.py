"""One epoch and the state that outlives it, split the way timm's train.py splits its script:
`resume_state` (the checkpoint back into the session), `train_one_epoch` (the steps under the
budget), `checkpoint_state` (what an epoch boundary saves for --resume)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loop.journal.metrics import EpochRecord, RunMetrics
from loop.trainer.budget import BudgetMeter, CapFit
from loop.trainer.checkpoint import CHECKPOINT_FILE
from loop.trainer.data import train_loader
from loop.trainer.losses import training_loss
from loop.trainer.sampling import epoch_order, sample_weights
from loop.trainer.setup import Session
from loop.util.progress import ProgressLog


@dataclass
class Progress:
    """What survives an epoch boundary (and goes into the checkpoint)."""

    epoch: int = 0                 # epochs completed
    step: int = 0
    images: int = 0
    elapsed_seconds: float = 0.0
    loss_start: float | None = None
    curve: list[EpochRecord] = field(default_factory=list)


@dataclass
class EpochTotals:
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int


@dataclass
class StopPlan:
    """The epoch a run stops after: the config's, brought forward when the walltime cap has no room
    for all (CapFit measures the epochs as they run)."""

    capfit: CapFit
    cap_minutes: float | None
    metrics: RunMetrics
    log: ProgressLog
    stop_epoch: int

    def fit(self, epoch_start: float, done: int) -> None:
        try:
            stop, note = self.capfit.fit(epoch_start, done, self.stop_epoch, self.cap_minutes)
        finally:        # measured even when not one epoch fits: the cost model learns from it
            self.metrics.epoch_seconds_estimate = round(self.capfit.estimate, 3)
        if note:
            self.log.line(note)
            self.metrics.stopped_at_cap = True
        self.stop_epoch = stop


def resume_state(s: Session, ckpt: dict | None, log: ProgressLog) -> Progress:
    """A fresh Progress, or the checkpoint's: weights, optimizer, scaler, schedule, per-sample losses
    and the random state come back as the last finished epoch left them."""
    if ckpt is None:
        return Progress()
    s.model.load_state_dict(ckpt["model"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scaler.load_state_dict(ckpt["scaler"])
    state = Progress(epoch=ckpt["epoch"], step=ckpt["step"], images=ckpt["images"],
                     elapsed_seconds=ckpt["elapsed_seconds"], loss_start=ckpt["loss_start"],
                     curve=[EpochRecord(**r) for r in ckpt["curve"]])
    s.schedule.load_state_dict(ckpt["schedule"], state.step)
    s.tracker.losses = ckpt["sample_losses"].numpy().copy()
    torch.set_rng_state(ckpt["rng_cpu"])
    if s.on_cuda and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"])
    source = f"{s.cfg.run.resume_from}/" if s.cfg.run.resume_from else ""
    log.line(f"resumed from {source}{CHECKPOINT_FILE}: {state.epoch} epoch(s) done, step {state.step}")
    return state


def checkpoint_state(s: Session, state: Progress) -> dict:
    """What `resume_state` needs to go on exactly where this epoch boundary is."""
    return {
        "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
        "schedule": s.schedule.state_dict(), "epoch": state.epoch, "step": state.step,
        "images": state.images, "elapsed_seconds": state.elapsed_seconds, "loss_start": state.loss_start,
        "curve": [r.model_dump() for r in state.curve],
        "sample_losses": torch.from_numpy(s.tracker.losses.copy()), "rng_cpu": torch.get_rng_state(),
        **({"rng_cuda": torch.cuda.get_rng_state()} if s.on_cuda else {}),
    }


def train_one_epoch(s: Session, state: Progress, epoch: int, meter: BudgetMeter, stop: StopPlan,
                    log: ProgressLog, epoch_start: float) -> EpochTotals:
    """The steps of one epoch: sampling order, forward (with the teachers), loss, backward, the
    schedule, the budget after every step and the cap fit where it is due."""
    cfg, device = s.cfg, s.device
    s.model.train()
    weights = sample_weights(cfg.data.sampling, s.train_samples.labels, s.train_samples.ages, s.tracker.snapshot())
    order = epoch_order(weights, len(s.train_ds), cfg.run.seed, epoch)
    if s.augment is not None:
        s.augment.set_random_seed(cfg.run.seed * 1000 + epoch)
    loader = train_loader(s.train_ds, order, s.batch_size, s.workers, pin_memory=s.on_cuda)
    totals = EpochTotals(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0)
    track = cfg.data.sampling.strategy == "hard_example_weighted"
    for images_u8, labels, index in loader:
        meter.before_step()
        x = s.normalize(images_u8)
        y = labels.to(device, non_blocking=True)
        with s.autocast():
            logits = s.model(x)
            t_logits = s.teacher.logits(images_u8) if s.teacher is not None else None
            s_logits = s.stabilizer.logits(images_u8) if s.stabilizer is not None else None
        loss, per_sample = training_loss(logits, y, cfg.loss.label_smoothing, s.kd, t_logits, s_logits)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            s.scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.optim.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        state.step += 1
        s.schedule.after_step(state.step)
        if track:
            s.tracker.update(index.numpy(), per_sample.float().cpu().numpy())
        meter.after_step(len(labels))
        if stop.capfit.due_after_step():
            stop.fit(epoch_start, epoch)
        totals.loss_sum += loss.detach() * len(labels)
        totals.correct += (logits.detach().argmax(1) == y).sum()
        totals.seen += len(labels)
        if state.loss_start is None:
            state.loss_start = round(float(loss.detach()), 6)
        if state.step % cfg.run.log_every_steps == 0:
            log.update(state.step, f"epoch {epoch + 1}/{cfg.run.epochs} "
                                   f"loss {float(totals.loss_sum) / totals.seen:.4f}")
    if stop.capfit.due_at_epoch_end():
        stop.fit(epoch_start, epoch)
    return totals
