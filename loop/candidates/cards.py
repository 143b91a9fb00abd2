"""The files an archive entry gets written for it (freeze.WRITTEN): evo_manifest.json and
metrics.json, and the human-readable EVAL.md, MODEL_CARD.md and STATUS.txt."""
from __future__ import annotations

import hashlib

from loop.archive import freeze as archive
from loop.archive.gates import GateResult
from loop.archive.paths import ModelPaths
from loop.archive.probes import ProbeMetrics
from loop.candidates.scheduler import CandidateSpec
from loop.config import DaemonConfig
from loop.domains import task_domain
from loop.journal.metrics import RunMetrics


def status_line(gates: GateResult, train: RunMetrics | None, returncode: int) -> str:
    if train is None:
        return f"FAIL - training failed before it wrote metrics (exit {returncode})"
    if train.status == "budget_exceeded" and train.budget_breach is not None:
        b = train.budget_breach
        return f"FAIL - budget exceeded: {b.cap} (limit {b.limit:g}, used {b.used:g})"
    if train.status != "ok":
        return f"FAIL - training failed: {train.error or 'exit ' + str(returncode)}"
    if not gates.passed:
        return f"FAIL - gates failed: {', '.join(gates.failed)}"
    return "PASS"


def eval_md(name: str, probes: ProbeMetrics | None, head: ProbeMetrics | None, gates: GateResult,
            status: str, eps: float, delta: float, theta: float) -> str:
    lines = [f"# EVAL: {name}", "", f"Status: **{status}**  ", f"Composite score: {gates.score:.4f}", ""]
    if probes is None:
        lines += ["No probes: the training run did not finish.", ""]
    else:
        h = head
        lines += ["| probe | candidate | GEN_HEAD | gate | passed |", "|---|---|---|---|---|",
                  f"| recall | {probes.recall:.4f} | {h.recall if h else '-'} | >= HEAD - {eps} | "
                  f"{gates.gates['recall']} |",
                  f"| generalize | {probes.generalize:.4f} | {h.generalize if h else '-'} | >= HEAD + {delta} | "
                  f"{gates.gates['generalize']} |",
                  f"| drift | {probes.drift:.4f} | - | <= {theta} | {gates.gates['drift']} |",
                  f"| violations | {probes.violations} | - | == 0 | {gates.gates['violations']} |",
                  f"| budget | - | - | within caps | {gates.gates['budget']} |", "",
                  f"Validation accuracy: {probes.val_accuracy:.4f}; parameters: {probes.parameters:,}", ""]
        if probes.violated:
            lines += ["Violations:", *[f"- {v}" for v in probes.violated], ""]
        lines += ["Per-class validation accuracy:", "",
                  " ".join(f"{k}: {v:.3f}" for k, v in probes.per_class_accuracy.items()), ""]
    return "\n".join(lines)


def model_card(name: str, spec: CandidateSpec, train: RunMetrics | None, probes: ProbeMetrics | None,
               status: str, trainer_cfg: dict) -> str:
    kd = trainer_cfg.get("kd", {})
    lines = [f"# Model card: {name}", "",
             f"- generation {spec.gen_id}, branch {spec.branch_id}; parent {spec.parent or 'none (from scratch)'}",
             f"- model: timm `{trainer_cfg.get('model', {}).get('name')}` on domain "
             f"`{trainer_cfg.get('data', {}).get('domain')}`",
             f"- Initial weights: {initial_weights(trainer_cfg.get('model', {}))}",
             f"- seed {spec.seed}, sampling strategy `{spec.strategy}`",
             f"- distillation: teacher {kd.get('teacher') or 'none'}, stabilizer {kd.get('stabilizer') or 'none'}",
             f"- status: {status}"]
    if train is not None:
        lines.append(f"- training: {train.steps} steps, {train.walltime_minutes:.2f} min, "
                     f"loss {train.loss_start} -> {train.loss_final}")
    if probes is not None:
        lines.append(f"- probes: recall {probes.recall:.4f}, generalize {probes.generalize:.4f}, "
                     f"drift {probes.drift:.4f}, violations {probes.violations}")
    lines += ["", "Intended use: a candidate of the llmloop evolution loop, promoted only through the",
              "gated proposal, shadow, graft, cutover and burn-in steps. Limits: judged on the domain's",
              "fixed probe sets only.", ""]
    return "\n".join(lines)


def initial_weights(model_cfg: dict) -> str:
    """The card's "Initial weights" line, from the trainer config's `model.pretrained`."""
    pretrained = model_cfg.get("pretrained", False)
    if pretrained is True:
        return f"timm's pretrained `{model_cfg.get('name')}` weights (Hugging Face cache)"
    if isinstance(pretrained, str) and pretrained:
        return f"local file `{pretrained}` (its absolute path and sha256 in the run's config.json)"
    return "random (timm's initialisation, no pretrained weights)"


def manifest(spec: CandidateSpec, name: str, run_cfg: dict, paths: ModelPaths, head: str | None,
             grandparent: str, replay: list[str], cfg: DaemonConfig) -> dict:
    """evo_manifest.json: the frozen evolution request."""
    from loop.trainer.setup import take_fraction

    data = run_cfg.get("data", {})
    domain = task_domain(cfg)          # the daemon's task: a run's config may name anything
    train_ids = take_fraction(domain.splits.train, data.get("train_fraction", 1.0), domain.split_seed).ids.tolist()
    kd = run_cfg.get("kd", {})

    def parent_info(entry: str | None) -> dict | None:
        if not entry:
            return None
        weights = paths.entry(entry) / "model.safetensors"
        return {"name": entry, "path": str(paths.entry(entry)),
                "sha256": archive.sha256_file(weights) if weights.exists() else None}

    return {
        "evolution_request": {"name": name, "gen_id": spec.gen_id, "branch_id": spec.branch_id,
                              "parent": head or "", "grandparent": grandparent, "timestamp": spec.timestamp},
        "training_strategy": {"method": "teacher_student_distillation" if head else "from_scratch",
                              "seed": spec.seed, "data_strategy": spec.strategy, "alpha": kd.get("alpha", 0.1),
                              "beta": kd.get("beta", 0.9), "temperature": kd.get("temperature", 2.0),
                              "stabilizer_weight": kd.get("stabilizer_weight", 0.3)},
        "parents": {"primary_teacher": parent_info(head), "stabilizer": parent_info(grandparent if head else None)},
        "budget": cfg.budget.model_dump(),
        "data": {"domain": data.get("domain", "digits"), "train_samples": len(train_ids),
                 "replay_samples": len(replay), "total_examples": len(train_ids) + len(replay),
                 "data_delta_sha256": hashlib.sha256("\n".join(train_ids + replay).encode()).hexdigest(),
                 "train_ids": train_ids},
    }


def archive_metrics(spec: CandidateSpec, train: RunMetrics | None, probes: ProbeMetrics | None,
                    gates: GateResult, status: str, rank: int) -> dict:
    """metrics.json of an archive entry, in the seed's shape, with the trainer's own metrics kept."""
    return {
        "gen": spec.gen_id, "branch": spec.branch_id, "parent": spec.parent,
        "training": None if train is None else {
            "steps": train.steps, "loss_start": train.loss_start, "loss_final": train.loss_final,
            "walltime_minutes": train.walltime_minutes,
            "val_accuracy": train.eval.accuracy if train.eval else None},
        "eval": None if probes is None else {"recall": probes.recall, "generalize": probes.generalize,
                                             "drift": probes.drift},
        "probes": None if probes is None else probes.model_dump(),
        "law_violations": None if probes is None else probes.violations,
        "budget_used": None if train is None else train.budget_used.model_dump(),
        "gates": {f"{k}_ok": v for k, v in gates.gates.items()},
        "score": gates.score, "rank": rank, "status": status,
        "trainer": None if train is None else train.model_dump(),
    }
