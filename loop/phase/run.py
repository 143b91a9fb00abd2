"""One PHASE run (the "Hyperbolic Time Chamber" of dream_phase.md), top to bottom: choose the
models (subjects.py), evaluate each with QTIME replicas (evaluate.py), collapse each domain's
results (collapse.py), write phase_results.json and, last, the completion signal (results.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from loop.archive.paths import ModelPaths
from loop.archive.probes import LoadedModel
from loop.config import DaemonConfig, PhaseConfig
from loop.errors import ConfigError, UnsupportedModelError
from loop.phase.collapse import collapse_domain, recommendations
from loop.phase.evaluate import evaluate, evaluation_set
from loop.phase.results import (
    RUN_ID_PATTERN,
    DomainMetrics,
    ModelResult,
    PhaseResults,
    QTime,
    completion_signal,
    results_path,
    write_results,
)
from loop.phase.subjects import DomainGroup, group_by_domain, select_models
from loop.trainer.data import ImageDataset
from loop.util.progress import ProgressLog


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
        search_space_recommendations=recommendations(metrics, promoted, flagged, folders),
        qtime=QTime(epochs=qt.epochs, slices=qt.slices, replicas=qt.replicas, evaluations_per_model=per_model),
        seconds=round(time.monotonic() - started, 3), insights=general)
    return write_results(workspace, results)


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
            metrics[group.label], best_tied, below = collapse_domain(group.label, models, qt.confidence)
            promoted += best_tied
            flagged += below
    return metrics, promoted, flagged
