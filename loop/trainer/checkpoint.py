"""The resume checkpoint: everything a killed run needs to continue to the same result.
Written atomically at each epoch end; read back with weights_only=True (no pickled code). A
continuation resumes another run's checkpoint (`continuation_checkpoint`); a run that reaches its
walltime cap stops at its last one (`stopped_at_walltime`)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from loop.errors import BudgetExceeded, ConfigError
from loop.trainer.config import TrainerConfig, continuation_mismatch
from loop.util.fsutil import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_ARGS_FILE = "train_args.json"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def stopped_at_walltime(exc: BudgetExceeded, epochs_done: int, out_dir: Path, model: torch.nn.Module, log) -> bool:
    """A walltime cap reached after an epoch's checkpoint: the run stops there, its model put back to
    that checkpoint, instead of failing (the epochs it trained are kept and can be continued)."""
    ckpt = load_checkpoint(out_dir) if exc.cap == "max_walltime_minutes" and epochs_done else None
    if ckpt is None:
        return False
    model.load_state_dict(ckpt["model"])
    log.line(f"walltime cap reached ({exc}): stopping at epoch {ckpt['epoch']} with its checkpoint; a "
             "continuation (run.resume_from) trains the rest")
    return True


def continuation_checkpoint(cfg: TrainerConfig) -> dict:
    """The checkpoint of the screen `run.resume_from` names, after checking this config continues
    that very run (same data, model, recipe, seed and schedule length)."""
    source = Path(cfg.run.resume_from)
    ckpt = load_checkpoint(source)
    if ckpt is None:
        raise ConfigError(f"run.resume_from: {source} holds no {CHECKPOINT_FILE} (only a screen, a run with "
                          "run.stop_after_epochs, keeps one)")
    try:
        screen = json.loads((source / TRAIN_ARGS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"run.resume_from: {source / TRAIN_ARGS_FILE} unreadable: {exc}") from None
    differ = continuation_mismatch(screen, cfg.model_dump(mode="json"))
    if differ:
        raise ConfigError(f"run.resume_from: this config differs from the screen's in {', '.join(differ)}; "
                          "a continuation must train the same run on")
    if ckpt["epoch"] >= cfg.stop_epoch:
        raise ConfigError(f"run.resume_from: the screen already trained {ckpt['epoch']} epoch(s); nothing "
                          f"left to continue to {cfg.stop_epoch}")
    return ckpt
