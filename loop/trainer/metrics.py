"""metrics.json of a run (RunMetrics) and the evaluation that fills it."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from loop.config import BudgetCaps
from loop.trainer.budget import BudgetBreach, BudgetUsed
from loop.util.fsutil import atomic_write_text, read_regular_text
from loop.verdict.noise import pack_correct, unpack_correct  # noqa: F401 (re-exported)

METRICS_FILE = "metrics.json"


class EvalMetrics(BaseModel):
    accuracy: float
    loss: float
    count: int
    per_class_accuracy: dict[str, float] = Field(default_factory=dict)
    # which images were right (np.packbits, hex; sample order), so two runs can be compared image by
    # image (a paired test, loop/verdict/noise.py); '' when not recorded
    correct: str = ""


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


class RunMetrics(BaseModel):
    status: Literal["running", "ok", "budget_exceeded", "failed"]
    error: str | None = None
    run_label: str | None = None
    model_name: str
    domain: str
    seed: int
    device: str
    # ---- training curve summary ----
    steps: int = 0
    epochs_completed: int = 0
    epochs_planned: int = 0
    resumed_from: str | None = None    # a screened run this one continued (run.resume_from)
    epochs_at_start: int = 0           # epochs already done when this process began (resume, continuation)
    loss_start: float | None = None
    loss_final: float | None = None
    walltime_seconds: float = 0.0
    walltime_minutes: float = 0.0
    images_per_second: float = 0.0     # images seen / run time, per-epoch validation and checkpoints included
    cpu_seconds: float = 0.0           # user + system CPU of this process and its loader workers, start-up included
    curve: list[EpochRecord] = Field(default_factory=list)
    # ---- evaluation ----
    eval: EvalMetrics | None = None
    # ---- budget ----
    budget: BudgetCaps = Field(default_factory=BudgetCaps)
    budget_used: BudgetUsed = Field(default_factory=BudgetUsed)
    budget_breach: BudgetBreach | None = None
    # stopped by its walltime cap (fitted at the start, or reached) with its last epoch's checkpoint
    # kept: a lower-fidelity result that a continuation (run.resume_from) trains on from there
    stopped_at_cap: bool = False
    epoch_seconds_estimate: float | None = None   # measured over the first steps (the cap fit)
    # ---- provenance ----
    kd_teacher: str | None = None
    kd_stabilizer: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)

    def write(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / METRICS_FILE, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunMetrics":
        return cls.model_validate_json(read_regular_text(Path(run_dir) / METRICS_FILE))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, normalize, batch_size: int,
                   autocast=None) -> torch.Tensor:
    """Logits (float32, CPU) for a uint8 NCHW tensor, in batches, model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size])
        if autocast is not None:
            with autocast():
                out.append(model(x).float().cpu())
        else:
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def score_logits(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> EvalMetrics:
    """Accuracy, mean CE loss and per-class accuracy of logits against labels."""
    if len(labels) == 0:
        return EvalMetrics(accuracy=0.0, loss=0.0, count=0)
    preds = logits.argmax(dim=1)
    correct = (preds == labels).numpy()
    lab = labels.numpy()
    per_class = {}
    for idx, name in enumerate(class_names):
        mask = lab == idx
        if mask.any():
            per_class[name] = round(float(correct[mask].mean()), 6)
    return EvalMetrics(accuracy=float(correct.mean()), loss=float(F.cross_entropy(logits, labels)),
                       count=int(len(lab)), per_class_accuracy=per_class, correct=pack_correct(correct))


def versions() -> dict[str, str]:
    """What trained the run. albumentations' version from its package metadata: importing it costs
    a second a run (and runs without augmentation never need it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        augment_version = version("albumentations")
    except PackageNotFoundError:
        augment_version = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": version("timm"),
            "albumentations": augment_version}


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()
