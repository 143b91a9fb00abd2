"""QTIME: the repeated evaluations of one model, epochs x slices x replicas of them.

  replica r, slice s   a bootstrap resample (with replacement, same size) of the domain's fixed
                       evaluation set (val + recall + delta + drift), drawn from seed (r, s); every
                       model sees the same resamples, so comparisons are paired
  epoch e              one pass over that slice; pass 0 is plain, later passes add a seeded
                       sub-pixel test-time shift per image (up to 1 px, seed (r, s, e)) so repeats
                       differ
Their mean, std and interval (stats.py) plus the model's plain per-split accuracies make its
ModelResult.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from loop.archive.probes import LoadedModel, accuracy
from loop.config import PhaseConfig
from loop.domains import SampleSet, SpicaDomain
from loop.domains.pixels import PixelView
from loop.phase.results import ModelResult
from loop.phase.stats import mean_ci, r6
from loop.trainer.metrics import predict_logits

EVAL_SPLITS = ("val", "recall", "delta", "drift")   # the fixed sets PHASE resamples (never train)
EVAL_BATCH = 256
JITTER_PX = 1.0             # most a test-time shift moves an image, in pixels per axis


def evaluation_set(domain: SpicaDomain) -> SampleSet:
    """The fixed union PHASE resamples, in EVAL_SPLITS order."""
    splits = domain.splits
    out = getattr(splits, EVAL_SPLITS[0])
    for name in EVAL_SPLITS[1:]:
        out = out.concat(getattr(splits, name))
    return out


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def slice_index(replica: int, slice_: int, size: int) -> np.ndarray:
    """The bootstrap resample of slice s in replica r: the same for every model."""
    return np.random.default_rng([replica, slice_]).integers(0, size, size=size)


def jitter_shifts(n: int, seed: int, max_shift_px: float = JITTER_PX) -> torch.Tensor:
    """(n, 2) seeded sub-pixel offsets in [-max_shift_px, max_shift_px] per axis."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 2), generator=g) * 2 - 1) * max_shift_px


def jitter(images: torch.Tensor, seed: int, max_shift_px: float = JITTER_PX) -> torch.Tensor:
    """Translate each uint8 NCHW image by a seeded sub-pixel offset (bilinear, edges replicated):
    light enough to keep the task, enough that repeats differ."""
    return shift_images(images, jitter_shifts(len(images), seed, max_shift_px))


def jittered_logits(model: LoadedModel, images, idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Logits of the jittered images at `idx`, a batch at a time (the same shifts as one `jitter`
    call over all of them), so an evaluation pool is never one float tensor."""
    shifts = jitter_shifts(len(idx), seed)
    return torch.cat([predict_logits(model.model, shift_images(images[idx[i:i + EVAL_BATCH]],
                                                               shifts[i:i + EVAL_BATCH]),
                                     model.normalize, EVAL_BATCH)
                      for i in range(0, len(idx), EVAL_BATCH)]) if len(idx) else torch.empty(0)


def shift_images(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2 / w      # affine_grid works in [-1, 1] units
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def qtime_accuracies(model: LoadedModel, images: PixelView, labels: torch.Tensor, qt: PhaseConfig,
                     tick) -> list[float]:
    """replicas x slices x epochs accuracies of `model`; `tick()` after each one."""
    plain = torch.cat([model.logits(s) for s in EVAL_SPLITS]).argmax(1) == labels   # pass 0, reused
    out = []
    for r in range(qt.replicas):
        for s in range(qt.slices):
            idx = torch.from_numpy(slice_index(r, s, len(labels)))
            for e in range(qt.epochs):
                if e == 0:
                    correct = plain[idx]
                else:
                    logits = jittered_logits(model, images, idx, seed_of(r, s, e))
                    correct = logits.argmax(1) == labels[idx]
                out.append(float(correct.float().mean()))
                tick()
    return out


def evaluate(model: LoadedModel, images: PixelView, labels: torch.Tensor, qt: PhaseConfig, is_head: bool,
             tick) -> ModelResult:
    """QTIME statistics of one model plus its plain per-split accuracies."""
    mean, std, low, high = mean_ci(qtime_accuracies(model, images, labels, qt, tick), qt.confidence)
    return ModelResult(accuracy_mean=r6(mean), accuracy_std=r6(std), ci_low=r6(low), ci_high=r6(high),
                       n=qt.epochs * qt.slices * qt.replicas, recall=r6(accuracy(model, "recall")),
                       generalize=r6(accuracy(model, "delta")), val=r6(accuracy(model, "val")), is_head=is_head)
