"""The shared KD/CNN trainer. Every training run, the Builder's or an evolution candidate's,
goes through `train()`, which reads top to bottom:

    setup (domain, model, teachers, data, optimizer) -> resume -> epochs of steps under the
    budget -> evaluate -> write the run folder

Run folder: model.safetensors, config.json (ModelFileConfig), train_args.json (the resolved
TrainerConfig, itself a valid --config), metrics.json (RunMetrics), train.log, and while the run
is unfinished checkpoint.pt for --resume.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from loop.domains import SampleSet, SpicaDomain, require_spica, resolve_domain
from loop.errors import BudgetExceeded, ConfigError
from loop.trainer.budget import BudgetBreach, BudgetMeter, CapFit, cpu_seconds
from loop.trainer.checkpoint import (
    CHECKPOINT_FILE,
    TRAIN_ARGS_FILE,
    continuation_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stopped_at_walltime,
)
from loop.trainer.config import TrainerConfig
from loop.trainer.data import ImageDataset, Normalizer, auto_workers, build_augment, train_loader
from loop.trainer.losses import training_loss
from loop.trainer.metrics import METRICS_FILE, EpochRecord, RunMetrics, predict_logits, score_logits, versions
from loop.trainer.models import ModelFileConfig, create_initial_model, load_model_folder, save_model_folder
from loop.trainer.sampling import LossTracker, epoch_order, sample_weights
from loop.trainer.schedule import StepSchedule
from loop.trainer.tensorboard import EpochBoard, open_board
from loop.util.fsutil import atomic_write_text
from loop.util.progress import ProgressLog, format_seconds

LOG_FILE = "train.log"


# ------------------------------------------------------------------ helpers ----

def pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda was asked for but torch sees no CUDA device")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def take_fraction(samples: SampleSet, fraction: float, seed: int) -> SampleSet:
    """A stratified share of the training split (fixed by the domain's split seed)."""
    if fraction >= 1.0:
        return samples
    idx = np.arange(len(samples))
    keep, _ = train_test_split(idx, train_size=fraction, random_state=seed, stratify=samples.labels)
    return samples.subset(np.sort(keep))


@dataclass
class FrozenModel:
    """A teacher or stabilizer: frozen, in eval mode, fed with its own input normalisation."""

    model: torch.nn.Module
    normalize: Normalizer
    image_size: int

    @torch.no_grad()
    def logits(self, batch_u8: torch.Tensor) -> torch.Tensor:
        x = self.normalize(batch_u8)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model(x)


def load_frozen(folder: str | None, key: str, domain: SpicaDomain, device: torch.device,
                channels_last: bool) -> FrozenModel | None:
    if not folder:
        return None
    model, mcfg = load_model_folder(folder, device)
    if mcfg.num_classes != domain.num_classes or mcfg.in_chans != domain.in_chans:
        raise ConfigError(f"{key}: {folder} has {mcfg.num_classes} classes / {mcfg.in_chans} channels; "
                          f"the domain has {domain.num_classes} / {domain.in_chans}")
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return FrozenModel(model, Normalizer(mcfg.mean, mcfg.std, device, channels_last), mcfg.image_size)


@dataclass
class Progress:
    """What survives an epoch boundary (and goes into the checkpoint)."""

    epoch: int = 0                 # epochs completed
    step: int = 0
    images: int = 0
    elapsed_seconds: float = 0.0
    loss_start: float | None = None
    curve: list[EpochRecord] = field(default_factory=list)


# -------------------------------------------------------------------- train ----

def train(cfg: TrainerConfig, out_dir: str | Path, resume: bool = False,
          domain: SpicaDomain | None = None, on_epoch: Callable[[EpochRecord], None] | None = None
          ) -> RunMetrics:
    """Train one model as `cfg` says into `out_dir`; returns its metrics (also in metrics.json).

    Raises BudgetExceeded after writing metrics.json (status budget_exceeded, the cap named)
    and the weights reached so far; raises ConfigError/UnsupportedModelError/DomainError on bad
    input before any training starts. `on_epoch` (in-process callers: a benchmark's pruner) sees
    each epoch's record; an exception it raises ends the run as failed and propagates.
    """
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(out_dir) if resume else None
    if ckpt is None and cfg.run.resume_from:
        ckpt = continuation_checkpoint(cfg)
    if not resume and ((out_dir / METRICS_FILE).exists() or (out_dir / CHECKPOINT_FILE).exists()):
        raise ConfigError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    board = open_board(out_dir, cfg.run.tensorboard)     # None unless run.tensorboard
    log = ProgressLog(out_dir / LOG_FILE, cfg.run.label or "train", total=1)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, out_dir, ckpt, log, domain, on_epoch, board)
    finally:
        torch.set_num_threads(threads)      # run.threads is this run's, not the caller's
        log.close()
        if board is not None:
            board.close()


def _train(cfg: TrainerConfig, out_dir: Path, ckpt: dict | None, log: ProgressLog,
           domain: SpicaDomain | None, on_epoch: Callable[[EpochRecord], None] | None,
           board: EpochBoard | None = None) -> RunMetrics:
    # ---- setup: device, domain, model ----
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    on_cuda = device.type == "cuda"
    use_amp = cfg.run.amp == "on" or (cfg.run.amp == "auto" and on_cuda)
    amp_dtype = torch.bfloat16 if (on_cuda and torch.cuda.is_bf16_supported()) or not on_cuda else torch.float16
    channels_last = cfg.run.channels_last == "on" or (cfg.run.channels_last == "auto" and on_cuda)
    domain = require_spica(domain) if domain is not None else resolve_domain(cfg.data.domain, cfg.data.domain_args)
    splits = domain.splits
    mean, std = domain.norm_stats
    seed_everything(cfg.run.seed)
    model, initial_weights = create_initial_model(cfg.model.name, domain.num_classes, domain.in_chans,
                                                  cfg.model.drop_rate, cfg.model.pretrained, log.line,
                                                  **cfg.model.kwargs)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model_cfg = ModelFileConfig(model_name=cfg.model.name, num_classes=domain.num_classes,
                                in_chans=domain.in_chans, image_size=cfg.data.image_size, mean=mean, std=std,
                                class_names=domain.class_names, domain=cfg.data.domain,
                                domain_args=domain.describe(), model_kwargs=cfg.model.kwargs,
                                pretrained=initial_weights)
    teacher = load_frozen(cfg.kd.teacher, "kd.teacher", domain, device, channels_last)
    stabilizer = load_frozen(cfg.kd.stabilizer, "kd.stabilizer", domain, device, channels_last)
    kd = cfg.kd if teacher is not None else None

    # ---- data ----
    train_samples = take_fraction(splits.train, cfg.data.train_fraction, domain.split_seed)
    if cfg.data.replay_ids:
        try:
            train_samples = train_samples.concat(splits.train.select_ids(cfg.data.replay_ids))
        except KeyError as exc:
            raise ConfigError(f"data.replay_ids: not in the domain's train split: {exc.args[0]}") from None
    augment = build_augment(cfg.data.augment, cfg.run.seed)
    train_ds = ImageDataset(train_samples, cfg.data.image_size, augment)
    val_ds = ImageDataset(splits.val, cfg.data.image_size)
    val_images, val_labels = val_ds.all_images(), val_ds.labels
    normalize = Normalizer(mean, std, device, channels_last)
    batch_size = min(cfg.data.batch_size, len(train_ds))
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else \
        auto_workers(len(train_ds), augment is not None, torch.get_num_threads())
    steps_per_epoch = max(1, len(train_ds) // batch_size)
    total_steps = steps_per_epoch * cfg.run.epochs

    # ---- optimizer and schedule ----
    from timm.optim import create_optimizer_v2

    opt_name = "adamw" if cfg.optim.name == "adamw" else ("sgd" if cfg.optim.nesterov else "momentum")
    opt_args = {"momentum": cfg.optim.momentum} if cfg.optim.name == "sgd" else {}
    optimizer = create_optimizer_v2(model, opt=opt_name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                    **opt_args)
    schedule = StepSchedule(optimizer, cfg.schedule, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    tracker = LossTracker(len(train_ds), cfg.data.sampling.hard_momentum)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    # ---- run folder: what this run is ----
    atomic_write_text(out_dir / TRAIN_ARGS_FILE, cfg.model_dump_json(indent=2) + "\n")
    atomic_write_text(out_dir / "config.json", json.dumps(model_cfg.model_dump(), indent=2) + "\n")

    # ---- resume ----
    state = Progress()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = Progress(epoch=ckpt["epoch"], step=ckpt["step"], images=ckpt["images"],
                         elapsed_seconds=ckpt["elapsed_seconds"], loss_start=ckpt["loss_start"],
                         curve=[EpochRecord(**r) for r in ckpt["curve"]])
        schedule.load_state_dict(ckpt["schedule"], state.step)
        tracker.losses = ckpt["sample_losses"].numpy().copy()
        torch.set_rng_state(ckpt["rng_cpu"])
        if on_cuda and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        source = f"{cfg.run.resume_from}/" if cfg.run.resume_from else ""
        log.line(f"resumed from {source}{CHECKPOINT_FILE}: {state.epoch} epoch(s) done, step {state.step}")

    # a resumed (killed) run spends its own walltime on; a continuation is a run of its own, with a
    # cap of its own (a run its cap stopped could otherwise never be continued)
    images_before = state.images         # a continuation's images/s counts its own images
    meter = BudgetMeter(cfg.budget, out_dir, device, steps=state.step, images=state.images,
                        elapsed_seconds=0.0 if cfg.run.resume_from else state.elapsed_seconds)
    metrics = RunMetrics(status="running", run_label=cfg.run.label, model_name=cfg.model.name,
                         domain=cfg.data.domain, seed=cfg.run.seed, device=str(device),
                         epochs_planned=cfg.run.epochs, resumed_from=cfg.run.resume_from,
                         epochs_at_start=state.epoch, budget=cfg.budget,
                         kd_teacher=cfg.kd.teacher,
                         kd_stabilizer=cfg.kd.stabilizer if teacher else None, versions=versions())
    log.total = total_steps
    log.line(f"train {cfg.model.name} on {domain.name}: {len(train_ds)} train / {len(val_ds)} val images, "
             f"{domain.num_classes} classes, {cfg.data.image_size}px, device {device}, amp {use_amp}, "
             f"{workers} loader worker(s), sampling {cfg.data.sampling.strategy}, kd {'on' if kd else 'off'}, "
             f"{cfg.run.epochs} epochs x {steps_per_epoch} steps"
             + (f", stopping after {cfg.stop_epoch} (a screen)" if cfg.stop_epoch < cfg.run.epochs else ""))

    def finish(status: str) -> RunMetrics:
        meter.measure()
        metrics.status = status
        metrics.steps, metrics.epochs_completed = meter.used.steps, state.epoch
        metrics.loss_start = state.loss_start
        metrics.loss_final = state.curve[-1].train_loss if state.curve else None
        metrics.curve = state.curve
        metrics.walltime_seconds = round(meter.elapsed_seconds, 3)
        metrics.walltime_minutes = round(meter.elapsed_seconds / 60.0, 4)
        seen_here = meter.used.tokens_processed - (images_before if cfg.run.resume_from else 0)
        metrics.images_per_second = round(seen_here / max(meter.elapsed_seconds, 1e-9), 2)
        metrics.budget_used = meter.used
        metrics.cpu_seconds = round(cpu_seconds(), 2)
        metrics.write(out_dir)
        return metrics

    # ---- epochs ----
    val = None                           # the last epoch's validation: the model it scored is the final one
    stop_epoch = cfg.stop_epoch          # brought forward when the walltime cap has no room for all
    capfit = CapFit(cfg.budget.max_walltime_minutes, steps_per_epoch, len(train_ds), len(val_ds))

    def fit_to_cap(epoch_start: float, done: int) -> int:
        try:
            stop, note = capfit.fit(epoch_start, done, stop_epoch, cfg.budget.max_walltime_minutes)
        finally:        # measured even when not one epoch fits: the cost model learns from it
            metrics.epoch_seconds_estimate = round(capfit.estimate, 3)
        if note:
            log.line(note)
            metrics.stopped_at_cap = True
        return stop

    try:
        meter.check_disk()
        for epoch in range(state.epoch, cfg.stop_epoch):
            if epoch >= stop_epoch:
                break
            t0, epoch_start = time.monotonic(), meter.elapsed_seconds
            model.train()
            weights = sample_weights(cfg.data.sampling, train_samples.labels, train_samples.ages,
                                     tracker.snapshot())
            order = epoch_order(weights, len(train_ds), cfg.run.seed, epoch)
            if augment is not None:
                augment.set_random_seed(cfg.run.seed * 1000 + epoch)
            loader = train_loader(train_ds, order, batch_size, workers, pin_memory=on_cuda)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            track = cfg.data.sampling.strategy == "hard_example_weighted"
            for images_u8, labels, index in loader:
                meter.before_step()
                x = normalize(images_u8)
                y = labels.to(device, non_blocking=True)
                with autocast():
                    logits = model(x)
                    t_logits = teacher.logits(images_u8) if teacher is not None else None
                    s_logits = stabilizer.logits(images_u8) if stabilizer is not None else None
                loss, per_sample = training_loss(logits, y, cfg.loss.label_smoothing, kd, t_logits, s_logits)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                state.step += 1
                schedule.after_step(state.step)
                if track:
                    tracker.update(index.numpy(), per_sample.float().cpu().numpy())
                meter.after_step(len(labels))
                if capfit.due_after_step():
                    stop_epoch = fit_to_cap(epoch_start, epoch)
                loss_sum += loss.detach() * len(labels)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(labels)
                if state.loss_start is None:
                    state.loss_start = round(float(loss.detach()), 6)
                if state.step % cfg.run.log_every_steps == 0:
                    log.update(state.step, f"epoch {epoch + 1}/{cfg.run.epochs} loss {float(loss_sum) / seen:.4f}")
            if capfit.due_at_epoch_end():
                stop_epoch = fit_to_cap(epoch_start, epoch)
            val = score_logits(predict_logits(model, val_images, normalize, cfg.data.eval_batch_size, autocast),
                               val_labels, domain.class_names)
            record = EpochRecord(epoch=epoch + 1, train_loss=round(float(loss_sum) / max(seen, 1), 6),
                                 train_accuracy=round(float(correct) / max(seen, 1), 6),
                                 val_loss=round(val.loss, 6), val_accuracy=round(val.accuracy, 6),
                                 lr=optimizer.param_groups[0]["lr"], seconds=round(time.monotonic() - t0, 3))
            state.curve.append(record)
            state.epoch, state.images = epoch + 1, meter.used.tokens_processed
            state.elapsed_seconds = meter.elapsed_seconds
            save_checkpoint(out_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "schedule": schedule.state_dict(), "epoch": state.epoch, "step": state.step,
                "images": state.images, "elapsed_seconds": state.elapsed_seconds, "loss_start": state.loss_start,
                "curve": [r.model_dump() for r in state.curve],
                "sample_losses": torch.from_numpy(tracker.losses.copy()), "rng_cpu": torch.get_rng_state(),
                **({"rng_cuda": torch.cuda.get_rng_state()} if on_cuda else {}),
            })
            eta = (stop_epoch - state.epoch) * (time.monotonic() - t0)
            log.line(f"epoch {state.epoch}/{cfg.run.epochs} loss {record.train_loss:.4f} "
                     f"train_acc {record.train_accuracy:.4f} val_acc {record.val_accuracy:.4f} "
                     f"lr {record.lr:.5f} {record.seconds:.1f}s eta {format_seconds(eta)} "
                     f"(checkpoint saved epoch={state.epoch})")
            if board is not None:
                board.epoch(record, seen)
            meter.check_disk()
            if on_epoch is not None:
                on_epoch(record)
        meter.check_running()            # the last epoch's evaluation and checkpoint count too
    except BudgetExceeded as exc:
        metrics.budget_breach = BudgetBreach(cap=exc.cap, limit=exc.limit, used=exc.used)
        if not stopped_at_walltime(exc, state.epoch, out_dir, model, log):
            metrics.error = str(exc)
            save_model_folder(out_dir, model, model_cfg)   # kept for the archive's forensics
            log.line(f"HARD FAIL {exc}")
            finish("budget_exceeded")
            raise
        metrics.stopped_at_cap, val = True, None    # the last checkpoint's weights, scored below
    except Exception as exc:
        metrics.error = f"{type(exc).__name__}: {exc}"
        finish("failed")
        raise

    # ---- evaluate and write ----
    # The last epoch already scored these very weights on the validation set (nothing trains after
    # it); only a resume that found every epoch done has no such pass yet.
    if val is None:
        val = score_logits(predict_logits(model, val_images, normalize, cfg.data.eval_batch_size, autocast),
                           val_labels, domain.class_names)
    metrics.eval = val
    save_model_folder(out_dir, model, model_cfg)
    if not cfg.run.keep_checkpoint and state.epoch == cfg.run.epochs:   # a screen keeps it to be continued
        (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    finish("ok")
    log.line(f"done: val accuracy {metrics.eval.accuracy:.4f}, {metrics.steps} steps, "
             f"{format_seconds(metrics.walltime_seconds)}, {metrics.images_per_second:.0f} images/s -> {out_dir}")
    return metrics
