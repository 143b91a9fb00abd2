"""The shared KD/CNN trainer. Every training run, the Builder's or an evolution candidate's,
goes through `train()`, which reads top to bottom:

    setup (setup.py: domain, model, teachers, data, optimizer) -> resume (epoch.py: resume_state)
    -> epochs (epoch.py: train_one_epoch under the budget, then checkpoint_state) -> evaluate ->
    write the run folder

Run folder: model.safetensors, config.json (ModelFileConfig), train_args.json (the resolved
TrainerConfig, itself a valid --config), metrics.json (RunMetrics), train.log, and while the run
is unfinished checkpoint.pt for --resume.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Callable

import torch

from loop.domains import SpicaDomain
from loop.errors import BudgetExceeded, ConfigError
from loop.journal.metrics import METRICS_FILE, BudgetBreach, EpochRecord, EvalMetrics, RunMetrics
from loop.trainer.budget import BudgetMeter, CapFit, cpu_seconds
from loop.trainer.checkpoint import (
    CHECKPOINT_FILE,
    TRAIN_ARGS_FILE,
    continuation_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stopped_at_walltime,
)
from loop.trainer.config import TrainerConfig
from loop.trainer.epoch import Progress, StopPlan, checkpoint_state, resume_state, train_one_epoch
from loop.trainer.metrics import predict_logits, score_logits, versions
from loop.trainer.models import save_model_folder
from loop.trainer.setup import Session, build_session
from loop.trainer.tensorboard import EpochBoard, open_board
from loop.util.fsutil import atomic_write_text
from loop.util.progress import ProgressLog, format_seconds

LOG_FILE = "train.log"


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
    s = build_session(cfg, domain, log)
    # ---- run folder: what this run is ----
    atomic_write_text(out_dir / TRAIN_ARGS_FILE, cfg.model_dump_json(indent=2) + "\n")
    atomic_write_text(out_dir / "config.json", json.dumps(s.model_cfg.model_dump(), indent=2) + "\n")
    state = resume_state(s, ckpt, log)
    # a resumed (killed) run spends its own walltime on; a continuation is a run of its own, with a
    # cap of its own (a run its cap stopped could otherwise never be continued)
    meter = BudgetMeter(cfg.budget, out_dir, s.device, steps=state.step, images=state.images,
                        elapsed_seconds=0.0 if cfg.run.resume_from else state.elapsed_seconds)
    metrics = start_metrics(s, state, log)
    finish = functools.partial(finish_metrics, metrics, meter, state, out_dir,
                               state.images if cfg.run.resume_from else 0)   # a continuation's images/s: its own
    val = None                           # the last epoch's validation: the model it scored is the final one
    stop = StopPlan(CapFit(cfg.budget.max_walltime_minutes, s.steps_per_epoch, len(s.train_ds), len(s.val_ds)),
                    cfg.budget.max_walltime_minutes, metrics, log, cfg.stop_epoch)
    try:
        meter.check_disk()
        for epoch in range(state.epoch, cfg.stop_epoch):
            if epoch >= stop.stop_epoch:
                break
            t0, epoch_start = time.monotonic(), meter.elapsed_seconds
            totals = train_one_epoch(s, state, epoch, meter, stop, log, epoch_start)
            val = validate(s)
            seen = max(totals.seen, 1)
            record = EpochRecord(epoch=epoch + 1, train_loss=round(float(totals.loss_sum) / seen, 6),
                                 train_accuracy=round(float(totals.correct) / seen, 6),
                                 val_loss=round(val.loss, 6), val_accuracy=round(val.accuracy, 6),
                                 lr=s.optimizer.param_groups[0]["lr"], seconds=round(time.monotonic() - t0, 3))
            state.curve.append(record)
            state.epoch, state.images = epoch + 1, meter.used.tokens_processed
            state.elapsed_seconds = meter.elapsed_seconds
            save_checkpoint(out_dir, checkpoint_state(s, state))
            eta = (stop.stop_epoch - state.epoch) * (time.monotonic() - t0)
            log.line(f"epoch {state.epoch}/{cfg.run.epochs} loss {record.train_loss:.4f} "
                     f"train_acc {record.train_accuracy:.4f} val_acc {record.val_accuracy:.4f} "
                     f"lr {record.lr:.5f} {record.seconds:.1f}s eta {format_seconds(eta)} "
                     f"(checkpoint saved epoch={state.epoch})")
            if board is not None:
                board.epoch(record, totals.seen)
            meter.check_disk()
            if on_epoch is not None:
                on_epoch(record)
        meter.check_running()            # the last epoch's evaluation and checkpoint count too
    except BudgetExceeded as exc:
        metrics.budget_breach = BudgetBreach(cap=exc.cap, limit=exc.limit, used=exc.used)
        if not stopped_at_walltime(exc, state.epoch, out_dir, s.model, log):
            metrics.error = str(exc)
            save_model_folder(out_dir, s.model, s.model_cfg)   # kept for the archive's forensics
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
    metrics.eval = val if val is not None else validate(s)
    save_model_folder(out_dir, s.model, s.model_cfg)
    if not cfg.run.keep_checkpoint and state.epoch == cfg.run.epochs:   # a screen keeps it to be continued
        (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    finish("ok")
    log.line(f"done: val accuracy {metrics.eval.accuracy:.4f}, {metrics.steps} steps, "
             f"{format_seconds(metrics.walltime_seconds)}, {metrics.images_per_second:.0f} images/s -> {out_dir}")
    return metrics


def validate(s: Session) -> EvalMetrics:
    """The model as it is now, scored on the whole validation split (timm's `validate`)."""
    return score_logits(predict_logits(s.model, s.val_images, s.normalize, s.cfg.data.eval_batch_size, s.autocast),
                        s.val_labels, s.domain.class_names)


def start_metrics(s: Session, state: Progress, log: ProgressLog) -> RunMetrics:
    """The run's metrics as it starts (status running), and its first log line."""
    cfg = s.cfg
    metrics = RunMetrics(status="running", run_label=cfg.run.label, model_name=cfg.model.name,
                         domain=cfg.data.domain, seed=cfg.run.seed, device=str(s.device),
                         epochs_planned=cfg.run.epochs, resumed_from=cfg.run.resume_from,
                         epochs_at_start=state.epoch, budget=cfg.budget,
                         kd_teacher=cfg.kd.teacher,
                         kd_stabilizer=cfg.kd.stabilizer if s.teacher else None, versions=versions())
    log.total = s.total_steps
    log.line(f"train {cfg.model.name} on {s.domain.name}: {len(s.train_ds)} train / {len(s.val_ds)} val images, "
             f"{s.domain.num_classes} classes, {cfg.data.image_size}px, device {s.device}, amp {s.use_amp}, "
             f"{s.workers} loader worker(s), sampling {cfg.data.sampling.strategy}, kd {'on' if s.kd else 'off'}, "
             f"{cfg.run.epochs} epochs x {s.steps_per_epoch} steps"
             + (f", stopping after {cfg.stop_epoch} (a screen)" if cfg.stop_epoch < cfg.run.epochs else ""))
    return metrics


def finish_metrics(metrics: RunMetrics, meter: BudgetMeter, state: Progress, out_dir: Path, images_before: int,
                   status: str) -> RunMetrics:
    """The run's final figures into metrics.json (`images_before`: images a continued run's
    predecessor saw, left out of this run's images/s)."""
    meter.measure()
    metrics.status = status
    metrics.steps, metrics.epochs_completed = meter.used.steps, state.epoch
    metrics.loss_start = state.loss_start
    metrics.loss_final = state.curve[-1].train_loss if state.curve else None
    metrics.curve = state.curve
    metrics.walltime_seconds = round(meter.elapsed_seconds, 3)
    metrics.walltime_minutes = round(meter.elapsed_seconds / 60.0, 4)
    seen_here = meter.used.tokens_processed - images_before
    metrics.images_per_second = round(seen_here / max(meter.elapsed_seconds, 1e-9), 2)
    metrics.budget_used = meter.used
    metrics.cpu_seconds = round(cpu_seconds(), 2)
    metrics.write(out_dir)
    return metrics
