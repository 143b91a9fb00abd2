"""Training losses: cross-entropy with label smoothing, and logit distillation from a teacher
(GEN_HEAD) blended with a stabilizer (its parent). Logit targets only; no weight averaging."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from loop.trainer.config import KDConfig


def kd_target(teacher_logits: torch.Tensor, temperature: float,
              stabilizer_logits: torch.Tensor | None = None, stabilizer_weight: float = 0.0) -> torch.Tensor:
    """Soft target: the teacher's softened distribution, blended with the stabilizer's."""
    target = F.softmax(teacher_logits.float() / temperature, dim=-1)
    if stabilizer_logits is not None and stabilizer_weight > 0:
        stab = F.softmax(stabilizer_logits.float() / temperature, dim=-1)
        target = (1.0 - stabilizer_weight) * target + stabilizer_weight * stab
    return target


def kd_divergence(student_logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(target || softmax(student / T)), averaged over the batch (Hinton et al.)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean") * temperature**2


def training_loss(student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                  kd: KDConfig | None = None, teacher_logits: torch.Tensor | None = None,
                  stabilizer_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, per-sample hard-label CE for hard-example tracking).

    Without a teacher: CE(labels) with label smoothing.
    With one: alpha * CE(labels) + beta * T^2 * KL(blend(teacher, stabilizer) || student).
    """
    per_sample = F.cross_entropy(student_logits.float(), labels, reduction="none",
                                 label_smoothing=label_smoothing)
    hard = per_sample.mean()
    if kd is None or teacher_logits is None:
        return hard, per_sample.detach()
    target = kd_target(teacher_logits, kd.temperature, stabilizer_logits, kd.stabilizer_weight)
    loss = kd.alpha * hard + kd.beta * kd_divergence(student_logits, target, kd.temperature)
    return loss, per_sample.detach()
