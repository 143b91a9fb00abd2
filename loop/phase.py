"""PHASE, the deep evaluation (the "Hyperbolic Time Chamber" of dream_phase.md).

`run_phase` evaluates GEN_HEAD and the archive's top-k PASS entries (by lineage score) on every
SPICA domain they belong to, with QTIME replicas = epochs x slices x replicas:
  replica r, slice s   a bootstrap resample (with replacement, same size) of the domain's fixed
                       evaluation set (val + recall + delta + drift), drawn from seed (r, s); every
                       model sees the same resamples, so comparisons are paired
  epoch e              one pass over that slice; pass 0 is plain, later passes add a seeded
                       sub-pixel test-time shift per image (up to 1 px, seed (r, s, e)) so repeats
                       differ
Per model it reports the mean, the sample std and a `phase.confidence` confidence interval of the
mean accuracy over those n evaluations: mean +- t(1 - alpha/2, n - 1) * std / sqrt(n), the
Student-t quantile computed with numpy (no scipy; see `t_quantile`), clipped to [0, 1]; with
n = 1 the interval is the mean itself. It is the interval of the QTIME mean, so it narrows as
evaluations are added; the std is the spread a single evaluation has.

Then it collapses the results into `<workspace>/phase/<run_id>/phase_results.json` (PhaseResults):
fitness per domain (the best model's mean), human insights, promoted variants (CI overlaps the
best's), flagged variants (CI entirely below the best's) and search-space recommendations (the
parameters the promoted variants were trained with). Last, atomically, the completion signal
`<workspace>/phase/phase_complete_<run_id>.json` tells the paused loop to resume and ingest.

Usage: python -m loop.phase run --daemon-config FILE [--workspace WS] [--run-id ID]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from loop.agents.offline import SPACE, params_of
from loop.config import DaemonConfig, PhaseConfig, add_daemon_config_arguments, load_daemon_config
from loop.domains import SampleSet, SpicaDomain, require_spica, resolve_domain
from loop.errors import ArchiveTampered, ConfigError, LoopError, UnsupportedModelError
from loop.evolution.archive import require_intact
from loop.evolution.lineage import read_lineage
from loop.evolution.paths import ModelPaths
from loop.evolution.probes import LoadedModel, accuracy
from loop.fsutil import atomic_write_text
from loop.progress import ProgressLog
from loop.trainer.data import ImageDataset
from loop.trainer.metrics import predict_logits
from loop.trainer.models import read_model_config

EVAL_SPLITS = ("val", "recall", "delta", "drift")   # the fixed sets PHASE resamples (never train)
RESULTS_FILE = "phase_results.json"
SIGNAL_PREFIX = "phase_complete_"
GAP_POINTS = 2.0            # a recall/delta gap this large (accuracy points) becomes an insight
EVAL_BATCH = 256
JITTER_PX = 1.0             # most a test-time shift moves an image, in pixels per axis
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------ file formats ----

class ModelResult(BaseModel):
    accuracy_mean: float
    accuracy_std: float
    ci_low: float
    ci_high: float
    n: int                       # QTIME evaluations behind the mean
    recall: float                # plain accuracy on the recall set (older data)
    generalize: float            # plain accuracy on the delta set (newest data)
    val: float
    is_head: bool = False


class DomainMetrics(BaseModel):
    fitness: float               # the best model's mean accuracy in this domain
    insights: list[str] = Field(default_factory=list)
    models: dict[str, ModelResult] = Field(default_factory=dict)


class QTime(BaseModel):
    epochs: int
    slices: int
    replicas: int
    evaluations_per_model: int


class PhaseResults(BaseModel):
    """phase_results.json, in dream_phase.md's shape plus run_id, qtime, seconds and the insights
    that belong to no domain (skipped entries, nothing to evaluate)."""

    timestamp: int
    run_id: str
    domains_tested: list[str] = Field(default_factory=list)
    metrics: dict[str, DomainMetrics] = Field(default_factory=dict)
    promoted_variants: list[str] = Field(default_factory=list)
    flagged_variants: list[str] = Field(default_factory=list)
    search_space_recommendations: dict[str, list[Any]] = Field(default_factory=dict)
    qtime: QTime
    seconds: float
    insights: list[str] = Field(default_factory=list)


class PhaseSignal(BaseModel):
    """phase_complete_<run_id>.json: written last, so its presence means the results are whole."""

    run_id: str
    results: str
    timestamp: int


# ------------------------------------------------------------------- paths ----

def phase_root(workspace: Path) -> Path:
    return Path(workspace) / "phase"


def results_path(workspace: Path, run_id: str) -> Path:
    return phase_root(workspace) / run_id / RESULTS_FILE


def completion_signal(workspace: Path, run_id: str) -> Path:
    return phase_root(workspace) / f"{SIGNAL_PREFIX}{run_id}.json"


def default_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


# -------------------------------------------------------------- statistics ----

def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t_p with `df` degrees of freedom, for 0.5 < p < 1.

    With t = sqrt(df) tan(theta), P(0 < T < t) is proportional to the integral of
    cos(phi)^(df-1) from 0 to theta: a smooth, bounded integrand on [0, pi/2], so a fine
    trapezoid table inverted by interpolation is accurate to ~1e-6 without scipy; past
    df = 2000 a Cornish-Fisher expansion around the normal quantile takes over.
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1 (got p={p}, df={df})")
    if df > 2000:   # the peak is too narrow for the table; Cornish-Fisher is exact to ~1e-9 here
        z = NormalDist().inv_cdf(p)
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    theta = np.linspace(0.0, math.pi / 2, 40001)
    density = np.cos(theta) ** (df - 1)
    cum = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(theta))])
    th = float(np.interp(2 * p - 1, cum / cum[-1], theta))
    return math.sqrt(df) * math.tan(th)


def mean_ci(values: list[float], confidence: float) -> tuple[float, float, float, float]:
    """(mean, sample std, ci_low, ci_high) of `values`: a Student-t interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, 0.0, mean, mean
    std = float(x.std(ddof=1))
    half = t_quantile((1 + confidence) / 2, len(x) - 1) * std / math.sqrt(len(x))
    return mean, std, max(0.0, mean - half), min(1.0, mean + half)


# ------------------------------------------------------- choosing models ----

@dataclass
class Subject:
    """One model PHASE evaluates: an intact archive entry (GEN_HEAD or a top-k PASS entry)."""

    name: str
    folder: Path
    is_head: bool


def select_models(paths: ModelPaths, top_k: int, insights: list[str]) -> list[Subject]:
    """GEN_HEAD, then the k best intact PASS entries by lineage score; every entry that fails
    verification is skipped and said so in `insights`."""
    subjects: list[Subject] = []
    head = paths.head_name()   # a dangling link still names its entry, so verification reports it
    if head is not None:
        try:
            subjects.append(Subject(head, require_intact(paths, head), is_head=True))
        except ArchiveTampered as exc:
            insights.append(f"GEN_HEAD ({head}) failed archive verification and was skipped: {exc}")
    rows = sorted((r for r in read_lineage(paths.lineage) if r.status.strip() == "PASS" and r.name != head),
                  key=lambda r: (-r.score, r.name))
    picked = 0
    for row in rows:
        if picked >= top_k:
            break
        try:
            subjects.append(Subject(row.name, require_intact(paths, row.name), is_head=False))
            picked += 1
        except ArchiveTampered as exc:
            insights.append(f"archive entry {row.name} failed verification and was skipped: {exc}")
    return subjects


# ---------------------------------------------------------------- domains ----

@dataclass
class DomainGroup:
    """The models of one domain (same spec and arguments), and that domain built once."""

    label: str
    domain: SpicaDomain
    subjects: list[Subject] = field(default_factory=list)


def group_by_domain(subjects: list[Subject], insights: list[str]) -> list[DomainGroup]:
    """Group models by the domain in their config.json and build each domain once. A domain that
    is not a SpicaDomain raises DomainError: PHASE evaluates SPICA-derived instances only."""
    specs: dict[tuple[str, str], list[Subject]] = {}
    for subject in subjects:
        try:
            cfg = read_model_config(subject.folder)
        except ConfigError as exc:
            insights.append(f"{subject.name} is not a loadable model folder and was skipped: {exc}")
            continue
        specs.setdefault((cfg.domain, json.dumps(cfg.domain_args, sort_keys=True)), []).append(subject)
    built = [(resolve_domain(spec, json.loads(args)), spec, args, members)
             for (spec, args), members in specs.items()]
    names = [require_spica(domain).name for domain, *_ in built]
    groups = []
    for domain, spec, args, members in built:
        label = domain.name
        if names.count(label) > 1:   # the same task under different arguments: keep them apart
            label = f"{label}@{hashlib.sha256((spec + args).encode()).hexdigest()[:8]}"
        groups.append(DomainGroup(label, domain, members))
    return sorted(groups, key=lambda g: g.label)


def evaluation_set(domain: SpicaDomain) -> SampleSet:
    """The fixed union PHASE resamples, in EVAL_SPLITS order."""
    splits = domain.splits
    out = getattr(splits, EVAL_SPLITS[0])
    for name in EVAL_SPLITS[1:]:
        out = out.concat(getattr(splits, name))
    return out


# ------------------------------------------------------------------ QTIME ----

def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def slice_index(replica: int, slice_: int, size: int) -> np.ndarray:
    """The bootstrap resample of slice s in replica r: the same for every model."""
    return np.random.default_rng([replica, slice_]).integers(0, size, size=size)


def jitter(images: torch.Tensor, seed: int, max_shift_px: float = JITTER_PX) -> torch.Tensor:
    """Translate each uint8 NCHW image by a seeded sub-pixel offset in [-max_shift_px, max_shift_px]
    per axis (bilinear, edges replicated): light enough to keep the task, enough that repeats differ."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    shift = (torch.rand((n, 2), generator=g) * 2 - 1) * max_shift_px
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2 / w      # affine_grid works in [-1, 1] units
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def qtime_accuracies(model: LoadedModel, images: torch.Tensor, labels: torch.Tensor, qt: PhaseConfig,
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
                    logits = predict_logits(model.model, jitter(images[idx], seed_of(r, s, e)),
                                            model.normalize, EVAL_BATCH)
                    correct = logits.argmax(1) == labels[idx]
                out.append(float(correct.float().mean()))
                tick()
    return out


def r6(value: float) -> float:
    return round(float(value), 6)


def evaluate(model: LoadedModel, images: torch.Tensor, labels: torch.Tensor, qt: PhaseConfig, is_head: bool,
             tick) -> ModelResult:
    """QTIME statistics of one model plus its plain per-split accuracies."""
    mean, std, low, high = mean_ci(qtime_accuracies(model, images, labels, qt, tick), qt.confidence)
    return ModelResult(accuracy_mean=r6(mean), accuracy_std=r6(std), ci_low=r6(low), ci_high=r6(high),
                       n=qt.epochs * qt.slices * qt.replicas, recall=r6(accuracy(model, "recall")),
                       generalize=r6(accuracy(model, "delta")), val=r6(accuracy(model, "val")), is_head=is_head)


# --------------------------------------------------------------- collapse ----

def points(a: float, b: float) -> str:
    return f"{abs(a - b) * 100:.1f} points"


def who(name: str, result: ModelResult) -> str:
    return f"GEN_HEAD ({name})" if result.is_head else name


def judge(label: str, models: dict[str, ModelResult], confidence: float
          ) -> tuple[DomainMetrics, list[str], list[str]]:
    """Fitness, insights, promoted (tied with the best, best first) and flagged (CI below the best's)."""
    best_name = max(models, key=lambda k: (models[k].accuracy_mean, models[k].is_head, k))   # ties: HEAD
    best = models[best_name]
    ranked = [best_name] + sorted((k for k in models if k != best_name), key=lambda k: (-models[k].accuracy_mean, k))
    promoted = [k for k in ranked if models[k].ci_high >= best.ci_low]
    flagged = [k for k in ranked if models[k].ci_high < best.ci_low]
    insights = [f"{label}: fitness {best.accuracy_mean:.4f} from {who(best_name, best)} "
                f"({confidence:.0%} CI {best.ci_low:.4f}-{best.ci_high:.4f}, n={best.n})"]
    for name in ranked:
        if name == best_name:
            continue
        m = models[name]
        gap = points(best.accuracy_mean, m.accuracy_mean)
        if name in flagged:
            insights.append(f"{who(best_name, best)} beats {who(name, m)} by {gap} and the intervals do not "
                            f"overlap: {name} is flagged as underperforming")
        else:
            insights.append(f"{who(best_name, best)} beats {who(name, m)} by {gap} but the intervals overlap "
                            "(statistically tied)")
    if best.is_head and len(models) > 1:
        insights.append(f"GEN_HEAD ({best_name}) is the best model in {label}")
    for name in ranked:
        m = models[name]
        if abs(m.recall - m.generalize) * 100 >= GAP_POINTS:
            side = "below" if m.recall < m.generalize else "above"
            insights.append(f"{who(name, m)}'s recall accuracy is {points(m.recall, m.generalize)} {side} "
                            "its delta accuracy" + (" (forgetting older data)" if side == "below" else
                                                    " (the newest data is harder)"))
    return DomainMetrics(fitness=best.accuracy_mean, insights=insights, models=models), promoted, flagged


def recommendations(folders: list[Path]) -> dict[str, list[Any]]:
    """Per search-space parameter, the values the given models were trained with (first seen first)."""
    out: dict[str, list[Any]] = {param: [] for param, _ in SPACE.values()}
    for folder in folders:
        try:
            config = json.loads((folder / "train_args.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for param, value in params_of(config).items():
            if value not in out[param]:
                out[param].append(value)
    return {param: values for param, values in out.items() if values}


# -------------------------------------------------------------------- run ----

def run_phase(cfg: DaemonConfig, workspace: Path, run_id: str, progress: bool = True) -> Path:
    """Evaluate GEN_HEAD and the archive's top-k with QTIME replicas; write phase_results.json,
    then the completion signal. Returns the results path. Raises DomainError for a non-SPICA domain."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    started = time.monotonic()
    workspace, qt = Path(workspace), cfg.phase
    out_path = results_path(workspace, run_id)
    completion_signal(workspace, run_id).unlink(missing_ok=True)   # a rerun is not complete until it ends
    general: list[str] = []
    groups = group_by_domain(select_models(ModelPaths(workspace), qt.top_k, general), general)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    per_model = qt.epochs * qt.slices * qt.replicas
    total = per_model * sum(len(g.subjects) for g in groups)
    sink = None if progress else open(os.devnull, "w", encoding="utf-8")
    log = ProgressLog(out_path.parent / "phase.log", f"PHASE {run_id}", total=total, stream=sink)
    try:
        metrics, promoted, flagged = run_groups(groups, qt, log, general)
    finally:
        log.close()
        if sink is not None:
            sink.close()
    if not metrics:
        general.append("nothing to evaluate: no GEN_HEAD and no intact, loadable PASS entries in the archive")
    folders = {s.name: s.folder for g in groups for s in g.subjects}
    results = PhaseResults(
        timestamp=int(time.time()), run_id=run_id, domains_tested=list(metrics), metrics=metrics,
        promoted_variants=promoted, flagged_variants=flagged,
        search_space_recommendations=recommendations([folders[name] for name in promoted]),
        qtime=QTime(epochs=qt.epochs, slices=qt.slices, replicas=qt.replicas, evaluations_per_model=per_model),
        seconds=round(time.monotonic() - started, 3), insights=general)
    atomic_write_text(out_path, results.model_dump_json(indent=2) + "\n")
    signal = PhaseSignal(run_id=run_id, results=str(out_path.resolve()), timestamp=int(time.time()))
    atomic_write_text(completion_signal(workspace, run_id), signal.model_dump_json(indent=2) + "\n")
    return out_path


def run_groups(groups: list[DomainGroup], qt: PhaseConfig, log: ProgressLog, insights: list[str]
               ) -> tuple[dict[str, DomainMetrics], list[str], list[str]]:
    """Evaluate every group's models; a model that will not load is skipped with an insight."""
    metrics: dict[str, DomainMetrics] = {}
    promoted: list[str] = []
    flagged: list[str] = []
    done, current = 0, ""

    def tick() -> None:
        nonlocal done
        done += 1
        log.update(done, current)

    for group in groups:
        pool = evaluation_set(group.domain)
        labels = torch.as_tensor(pool.labels, dtype=torch.long)
        images: dict[int, torch.Tensor] = {}     # per image size, shared by the group's models
        models: dict[str, ModelResult] = {}
        for subject in group.subjects:
            current = f"{group.label}/{subject.name}"
            try:
                model = LoadedModel(subject.folder, group.domain)
            except (ConfigError, UnsupportedModelError, RuntimeError) as exc:
                insights.append(f"{subject.name} could not be loaded and was skipped: {exc}")
                done += qt.epochs * qt.slices * qt.replicas
                continue
            log.line(f"evaluating {current} ({qt.epochs}x{qt.slices}x{qt.replicas} evaluations)")
            size = model.cfg.image_size
            if size not in images:
                images[size] = ImageDataset(pool, size).all_images()
            r = models[subject.name] = evaluate(model, images[size], labels, qt, subject.is_head, tick)
            log.line(f"{current}: accuracy {r.accuracy_mean:.4f} +- {r.accuracy_std:.4f} "
                     f"(CI {r.ci_low:.4f}-{r.ci_high:.4f}, n={r.n})")
        if models:
            metrics[group.label], best_tied, below = judge(group.label, models, qt.confidence)
            promoted += best_tied
            flagged += below
    return metrics, promoted, flagged


# ---------------------------------------------------------------- reading ----

def read_results(path: str | Path) -> PhaseResults:
    path = Path(path)
    try:
        return PhaseResults.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable PHASE results: {exc}") from None


def latest_results(workspace: Path) -> PhaseResults | None:
    """The results of the newest completed PHASE run (only runs with a completion signal count)."""
    signals = []
    for path in phase_root(workspace).glob(f"{SIGNAL_PREFIX}*.json"):
        try:
            signals.append(PhaseSignal.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    for signal in sorted(signals, key=lambda s: (s.timestamp, s.run_id), reverse=True):
        for candidate in (Path(signal.results), results_path(workspace, signal.run_id)):  # the workspace may move
            if candidate.is_file():
                return read_results(candidate)
    return None


# -------------------------------------------------------------------- CLI ----

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`run` under `parser` (used by `python -m loop.phase` and `llmloop phase`)."""
    sub = parser.add_subparsers(dest="phase_command", required=True)
    p = sub.add_parser("run", help="run the PHASE deep evaluation now")
    add_daemon_config_arguments(p)
    p.add_argument("--run-id", help="names the results folder and the signal (default: UTC time, 20261122-030000)")
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal (the log file still gets it)")


def run_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_daemon_config(args.daemon_config)
        workspace = Path(args.workspace or cfg.workspace)
        path = run_phase(cfg, workspace, args.run_id or default_run_id(), progress=not args.quiet)
        results = read_results(path)
        for label in results.domains_tested:
            print(f"{label}: fitness {results.metrics[label].fitness:.4f}")
        print(f"promoted: {', '.join(results.promoted_variants) or '-'}; "
              f"flagged: {', '.join(results.flagged_variants) or '-'}")
        for line in results.insights:
            print(line)
        print(f"results: {path}")
        return 0
    except LoopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.phase", description="PHASE deep evaluation.")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
