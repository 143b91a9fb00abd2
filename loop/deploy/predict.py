"""`llmloop predict`: class probabilities for every test image from one model or the mean of an
ensemble's, optional horizontal-flip test-time augmentation, batched and streamed from the shared
decoded-pixel cache (never the whole set as one tensor), on the GPU when there is one. Writes a
submission CSV (id, class name) and a probabilities CSV (id, one column per class); when the test
images carry labels, the accuracy with its 95% Wilson interval."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from loop.deploy.resolve import ModelRef
from loop.deploy.testset import ImageSetSpec, TruthLabels, read_test_set, truth_labels
from loop.deploy.writing import (
    AccuracyEstimate,
    accuracy_estimate,
    check_columns,
    write_probabilities,
    write_submission,
)
from loop.domains.listing import BadImage
from loop.domains.pixels import PixelSource, PixelView
from loop.errors import ConfigError
from loop.trainer.data import Normalizer
from loop.trainer.models import ModelFileConfig, load_model_folder

PROGRESS_MIN_IMAGES = 2000      # below this a run takes seconds: no progress bar
TTA_CHOICES = ("none", "flip")


@dataclass(frozen=True)
class PredictRequest:
    """Everything `llmloop predict` was asked for (the CLI's flags, resolved)."""

    models: tuple[ModelRef, ...]
    images: ImageSetSpec
    out: Path
    probabilities: Path | None = None     # default: <out stem>.probabilities.csv beside --out
    tta: str = "none"
    batch_size: int = 256
    device: str = "auto"
    out_id_column: str = "id"
    out_label_column: str = "label"


@dataclass
class PredictionSummary:
    """What a prediction did: written to the screen by the CLI, returned to callers and tests."""

    images: int
    classes: list[str]
    models: list[str]
    device: str
    submission: Path
    probabilities: Path
    skipped: list[BadImage] = field(default_factory=list)
    accuracy: AccuracyEstimate | None = None
    accuracy_note: str = ""
    val_accuracies: dict[str, float] = field(default_factory=dict)   # archive members' recorded val acc
    tta: str = "none"

    def lines(self) -> list[str]:
        out = [f"predicted {self.images} image(s) with {' + '.join(self.models)} on {self.device}"]
        for bad in self.skipped:
            out.append(f"skipped (--skip-bad-images): {bad.line()}")
        if self.skipped:
            out.append(f"{len(self.skipped)} bad image entr{'y' if len(self.skipped) == 1 else 'ies'} skipped: "
                       "not in the submission")
        out += [f"submission: {self.submission}", f"probabilities: {self.probabilities}"]
        if self.accuracy is not None:
            a = self.accuracy
            out.append(f"accuracy {a.accuracy:.4f} ({a.correct}/{a.total}), 95% interval "
                       f"[{a.low:.4f}, {a.high:.4f}] (Wilson)")
            out += self._against_val(a)
        elif self.accuracy_note:
            out.append(self.accuracy_note)
        return out

    def _against_val(self, a: AccuracyEstimate) -> list[str]:
        """One archive model: is its recorded val accuracy inside the test interval (test matches
        validation within noise)? An ensemble's members were validated alone: listed, not judged."""
        if len(self.models) > 1:
            return ["members' recorded val accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                  self.val_accuracies.items())
                    ] if self.val_accuracies else []
        if not self.val_accuracies:
            return []
        name, val = next(iter(self.val_accuracies.items()))
        caveat = " (val was measured without TTA)" if self.tta != "none" else ""
        if a.low <= val <= a.high:
            return [f"recorded val accuracy {val:.4f} ({name}) is inside the interval: test matches validation "
                    f"within noise{caveat}"]
        return [f"recorded val accuracy {val:.4f} ({name}) is OUTSIDE the interval: test and validation differ by "
                f"more than noise (another distribution, or a labelling mismatch?){caveat}"]


@dataclass
class Member:
    """One loaded model with its own input size, channels and normalisation."""

    ref: ModelRef
    model: torch.nn.Module
    cfg: ModelFileConfig
    normalize: Normalizer


def pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device (use --device auto or cpu)")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted not in ("cpu", "cuda"):
        raise ConfigError(f"--device {wanted}: expected auto, cpu or cuda")
    return torch.device(wanted)


def load_members(refs: tuple[ModelRef, ...], device: torch.device) -> list[Member]:
    """Every model of the request, loaded; an ensemble must agree on its classes, in order."""
    members = []
    for ref in refs:
        model, cfg = load_model_folder(ref.folder, device)
        members.append(Member(ref, model, cfg, Normalizer(cfg.mean, cfg.std, device, channels_last=False)))
    first = members[0]
    for m in members[1:]:
        if m.cfg.class_names != first.cfg.class_names:
            raise ConfigError(f"--ensemble: {m.ref.label} has classes {m.cfg.class_names} but {first.ref.label} has "
                              f"{first.cfg.class_names}; an ensemble averages probabilities per class, so every "
                              "member needs the same class names in the same order")
    return members


def default_probabilities_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.probabilities.csv")


def predict(request: PredictRequest, say: Callable[[str], None] = print) -> PredictionSummary:
    """Run the request end to end: test set, models, probabilities, both CSVs, accuracy."""
    if request.tta not in TTA_CHOICES:
        raise ConfigError(f"--tta {request.tta}: expected one of {', '.join(TTA_CHOICES)}")
    if request.batch_size < 1:
        raise ConfigError(f"--batch-size {request.batch_size}: must be at least 1")
    out = Path(request.out)
    prob_path = Path(request.probabilities) if request.probabilities else default_probabilities_path(out)
    if prob_path.resolve() == out.resolve():
        raise ConfigError(f"--probabilities {prob_path}: the same file as --out")
    device = pick_device(request.device)
    members = load_members(request.models, device)
    classes = members[0].cfg.class_names
    check_columns(request.out_id_column, request.out_label_column, classes)
    listing = read_test_set(request.images, members[0].cfg.in_chans)
    probs = probabilities(members, listing.paths, listing.where, request.tta == "flip", request.batch_size)
    predicted = probs.argmax(axis=1)
    write_submission(out, listing.ids, [classes[i] for i in predicted], request.out_id_column,
                     request.out_label_column)
    write_probabilities(prob_path, listing.ids, probs, classes, request.out_id_column)
    truth: TruthLabels = truth_labels(listing, classes)
    summary = PredictionSummary(images=len(listing), classes=list(classes), models=[m.ref.label for m in members],
                                device=str(device), submission=out, probabilities=prob_path, skipped=list(listing.bad),
                                accuracy_note=truth.note, tta=request.tta,
                                val_accuracies={m.ref.label: m.ref.val_accuracy for m in members
                                                if m.ref.val_accuracy is not None})
    if truth.indices is not None:
        summary.accuracy = accuracy_estimate(int((predicted == truth.indices).sum()), len(truth.indices))
    for line in summary.lines():
        say(line)
    return summary


@torch.inference_mode()
def probabilities(members: list[Member], paths: list[str], where: list[str], flip: bool,
                  batch_size: int) -> np.ndarray:
    """(N, classes) float32: the mean over members (and over the flipped copy with `flip`) of the
    softmax. Each member reads the decoded cache at its own size and channels; batches go to the
    device one at a time and only the probabilities come back."""
    sources: dict[int, PixelSource] = {}
    views: dict[tuple[int, int], PixelView] = {}
    for m in members:
        key = (m.cfg.in_chans, m.cfg.image_size)
        if key not in views:
            src = sources.setdefault(key[0], PixelSource(key[0], paths=tuple(paths), rows_named=tuple(where)))
            views[key] = PixelView(src.decoded(key[1]), np.arange(len(paths)))
    n, classes = len(paths), len(members[0].cfg.class_names)
    out = np.empty((n, classes), dtype=np.float32)
    progress = None
    if n >= PROGRESS_MIN_IMAGES:
        from loop.util.progress import ProgressLog

        progress = ProgressLog(None, "predict", total=n, stream=sys.stderr, every_seconds=10.0)
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            out[start:stop] = _batch(members, views, start, stop, flip)
            if progress is not None:
                progress.update(stop)
    finally:
        if progress is not None:
            progress.close()
    return out


def _batch(members: list[Member], views: dict[tuple[int, int], PixelView], start: int, stop: int,
           flip: bool) -> np.ndarray:
    total = None
    for m in members:
        x = m.normalize(views[(m.cfg.in_chans, m.cfg.image_size)][start:stop])
        p = torch.softmax(m.model(x).float(), dim=1)
        if flip:        # horizontal flip: the width axis of NCHW
            p = (p + torch.softmax(m.model(torch.flip(x, dims=[3])).float(), dim=1)) / 2
        total = p if total is None else total + p
    return (total / len(members)).cpu().numpy()
