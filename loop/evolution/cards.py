"""The human-readable files of an archive entry: EVAL.md, MODEL_CARD.md, STATUS.txt."""
from __future__ import annotations

from loop.evolution.gates import GateResult
from loop.evolution.probes import ProbeMetrics
from loop.evolution.scheduler import CandidateSpec
from loop.trainer.metrics import RunMetrics


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
                  f"| recall | {probes.recall:.4f} | {h.recall if h else '-'} | >= HEAD - {eps} | {gates.gates['recall']} |",
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
