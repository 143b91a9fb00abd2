"""KD loss on known logits, computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from loop.trainer.config import KDConfig
from loop.trainer.losses import kd_divergence, kd_target, training_loss


def softmax(xs, t=1.0):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_target_blends_teacher_and_stabilizer():
    t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    got = kd_target(t, 2.0, s, 0.25)[0].tolist()
    pt, ps = softmax([2.0, 0.0], 2.0), softmax([0.0, 2.0], 2.0)
    want = [0.75 * a + 0.25 * b for a, b in zip(pt, ps)]
    assert got == pytest.approx(want, abs=1e-6)
    assert kd_target(t, 2.0, s, 0.0)[0].tolist() == pytest.approx(pt, abs=1e-6)


def test_kd_divergence_known_value():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[0.5, 0.3, 0.2]])
    q = softmax([1.0, 0.0, -1.0], 2.0)
    kl = sum(p * math.log(p / qq) for p, qq in zip([0.5, 0.3, 0.2], q))
    assert kd_divergence(student, target, 2.0).item() == pytest.approx(4.0 * kl, abs=1e-6)
    assert kd_divergence(torch.tensor([[0.3, 0.7]]), kd_target(torch.tensor([[0.3, 0.7]]), 3.0), 3.0).item() \
        == pytest.approx(0.0, abs=1e-6)


def test_training_loss_blend_of_hard_and_soft():
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    stab = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    kd = KDConfig(teacher="t", stabilizer="s", alpha=0.3, beta=0.7, temperature=2.0, stabilizer_weight=0.4)
    loss, per_sample = training_loss(student, labels, 0.0, kd, teacher, stab)
    ce = [-math.log(softmax(r)[y]) for r, y in zip(student.tolist(), [0, 1])]
    kls = []
    for s_row, t_row, z_row in zip(student.tolist(), teacher.tolist(), stab.tolist()):
        p = [0.6 * a + 0.4 * b for a, b in zip(softmax(t_row, 2.0), softmax(z_row, 2.0))]
        q = softmax(s_row, 2.0)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    want = 0.3 * sum(ce) / 2 + 0.7 * 4.0 * sum(kls) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert per_sample.tolist() == pytest.approx(ce, rel=1e-5)


def test_without_teacher_it_is_label_smoothed_ce():
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    loss, _ = training_loss(logits, labels, 0.1, KDConfig(), None)
    p = softmax([2.0, 0.0])
    want = -(0.95 * math.log(p[0]) + 0.05 * math.log(p[1]))
    assert loss.item() == pytest.approx(want, rel=1e-5)
