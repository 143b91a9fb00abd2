"""The four fixed probes (evolution_scheduler.md step 4, read for an image classifier):
  recall      accuracy on the domain's recall set (older data: no forgetting)
  generalize  accuracy on the delta set (newest data, held out)
  drift       share of the drift set on which the candidate disagrees with GEN_HEAD
  violations  hard rules from config broken (per-class accuracy floor, parameter cap, latency cap)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from loop.archive.gates import ProbeMetrics  # noqa: F401  (re-exported: callers import it from here)
from loop.config import ViolationRules
from loop.domains import SpicaDomain, require_spica, resolve_domain
from loop.trainer.data import ImageDataset, Normalizer
from loop.trainer.metrics import predict_logits, score_logits
from loop.trainer.models import ModelFileConfig, load_model_folder

PROBE_SPLITS = ("recall", "delta", "drift", "val")


class LoadedModel:
    """A model folder ready to answer on the domain's fixed sets (logits cached per split)."""

    def __init__(self, folder: str | Path, domain: SpicaDomain | None = None):
        self.folder = Path(folder)
        self.model, self.cfg = load_model_folder(self.folder)
        self.domain = require_spica(domain) if domain is not None else domain_of(self.cfg)
        self.normalize = Normalizer(self.cfg.mean, self.cfg.std, torch.device("cpu"), False)
        self._logits: dict[str, torch.Tensor] = {}

    def logits(self, split: str) -> torch.Tensor:
        if split not in self._logits:
            ds = ImageDataset(getattr(self.domain.splits, split), self.cfg.image_size)
            self._logits[split] = predict_logits(self.model, ds.all_images(), self.normalize, 256)
        return self._logits[split]

    def labels(self, split: str) -> torch.Tensor:
        return torch.as_tensor(getattr(self.domain.splits, split).labels, dtype=torch.long)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def latency_ms(self, repeats: int = 20) -> float:
        x = self.normalize(ImageDataset(self.domain.splits.val, self.cfg.image_size).all_images()[:1])
        self.model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.model(x)
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))


def domain_of(cfg: ModelFileConfig) -> SpicaDomain:
    return resolve_domain(cfg.domain, cfg.domain_args)


def accuracy(model: LoadedModel, split: str) -> float:
    return score_logits(model.logits(split), model.labels(split), model.domain.class_names).accuracy


def run_probes(candidate: LoadedModel, head: LoadedModel | None, rules: ViolationRules) -> ProbeMetrics:
    """Measure all four probes for `candidate` (drift against `head`; 0 without one)."""
    val = score_logits(candidate.logits("val"), candidate.labels("val"), candidate.domain.class_names)
    drift = 0.0
    if head is not None:
        drift = float((candidate.logits("drift").argmax(1) != head.logits("drift").argmax(1)).float().mean())
    params = candidate.parameters()
    latency = candidate.latency_ms() if rules.max_latency_ms is not None else None
    violated = []
    if rules.per_class_accuracy_floor is not None:
        violated += [f"class {name} accuracy {acc:.3f} < floor {rules.per_class_accuracy_floor}"
                     for name, acc in val.per_class_accuracy.items() if acc < rules.per_class_accuracy_floor]
    if rules.max_parameters is not None and params > rules.max_parameters:
        violated.append(f"parameters {params} > cap {rules.max_parameters}")
    if latency is not None and latency > rules.max_latency_ms:
        violated.append(f"latency {latency:.2f} ms > cap {rules.max_latency_ms} ms")
    delta = score_logits(candidate.logits("delta"), candidate.labels("delta"), candidate.domain.class_names)
    return ProbeMetrics(recall=round(accuracy(candidate, "recall"), 6),
                        generalize=round(delta.accuracy, 6), generalize_count=delta.count,
                        generalize_correct=delta.correct, drift=round(drift, 6),
                        violations=len(violated), violated=violated, val_accuracy=round(val.accuracy, 6),
                        per_class_accuracy=val.per_class_accuracy, parameters=params,
                        latency_ms=None if latency is None else round(latency, 3))
