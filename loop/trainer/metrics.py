"""The evaluation that fills a run's metrics.json; the file's models live torch-free in
loop/journal/metrics.py."""
from __future__ import annotations

import platform

import numpy as np
import torch
import torch.nn.functional as F

from loop.journal.metrics import EvalMetrics
from loop.verdict.noise import pack_correct, unpack_correct  # noqa: F401 (re-exported)


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
