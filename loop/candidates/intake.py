"""The hand-off: a finished Builder `train` run enters the promotion pipeline as a candidate of the
next generation (branch `c<cycle>`), is probed, gated and frozen like any window candidate, and may
become the promotion proposal. The result goes back into the cycle's event."""
from __future__ import annotations

import json
import time
from pathlib import Path

from loop.config import DaemonConfig
from loop.archive import freeze as archive
from loop.candidates import cards
from loop.archive.gates import check_gates
from loop.archive.lifecycle import Lifecycle, TransitionContext
from loop.archive.lineage import LineageRow, log_event, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.probes import LoadedModel, run_probes
from loop.archive.promotion import propose, read_proposal
from loop.candidates.scheduler import CandidateSpec
from loop.archive.store import load_store, move, save_store
from loop.candidates.window import CandidateOutcome, archive_metrics, manifest
from loop.trainer.metrics import RunMetrics


def submit_run(cfg: DaemonConfig, workspace: Path, run_dir: Path, cycle: int, trace_id: str,
               returncode: int = 0) -> dict:
    """Archive one finished run as a candidate; returns {name, status, score, gates, archive_path, proposed}."""
    paths = ModelPaths(Path(workspace))
    paths.archive.mkdir(parents=True, exist_ok=True)
    lineage = read_lineage(paths.lineage)
    head = paths.head_name()
    head_row = next((r for r in lineage if r.name == head), None)
    run_cfg = json.loads((run_dir / "train_args.json").read_text()) if (run_dir / "train_args.json").exists() else {}
    spec = CandidateSpec(gen_id=(head_row.gen_id if head_row else 0) + 1, branch_id=f"c{cycle}",
                         seed=run_cfg.get("run", {}).get("seed", 0),
                         strategy=run_cfg.get("data", {}).get("sampling", {}).get("strategy", "uniform"),
                         parent=head or "", grandparent=head_row.parent if head_row else "", timestamp=time.time())
    name = archive.entry_name(cfg.evolution.archive_prefix, spec.gen_id, spec.branch_id, spec.timestamp)
    train = RunMetrics.read(run_dir) if (run_dir / "metrics.json").exists() else None
    ok = train is not None and train.status == "ok"
    head_model = LoadedModel(paths.head.resolve()) if head else None
    probes = run_probes(LoadedModel(run_dir), head_model, cfg.evolution.rules) if ok else None
    head_probes = run_probes(head_model, None, cfg.evolution.rules) if head_model else None
    gates = check_gates(probes, head_probes, ok, cfg.epsilon, cfg.delta, cfg.theta)
    status = cards.status_line(gates, train, returncode)
    texts = {
        "evo_manifest.json": json.dumps(manifest(spec, name, run_cfg, paths, head, spec.grandparent, [], cfg),
                                        indent=2) + "\n",
        "metrics.json": json.dumps(archive_metrics(spec, train, probes, gates, status, 1), indent=2) + "\n",
        "EVAL.md": cards.eval_md(name, probes, head_probes, gates, status, cfg.epsilon, cfg.delta, cfg.theta),
        "MODEL_CARD.md": cards.model_card(name, spec, train, probes, status, run_cfg),
        "STATUS.txt": status + "\n",
    }
    path, hashes_sha = archive.freeze_and_record(paths, name, run_dir, texts, LineageRow(
        name=name, gen_id=spec.gen_id, branch_id=spec.branch_id, parent=spec.parent, seed=spec.seed,
        strategy=spec.strategy, status=status, score=gates.score, archive_path="", hashes_sha256="",
        cycle_trace_id=trace_id))
    store = load_store(paths, trace_id)
    store.add(name)
    for state in (Lifecycle.GERMINATED, Lifecycle.TRAINING):
        move(store, name, state, paths, trace_id)
    log_event(paths.log, "ARCHIVED" if gates.passed else "REJECTED", cycle_trace_id=trace_id, candidate=name,
              source="builder", score=gates.score, status=status, failed_gates=gates.failed)
    proposal = None
    pending = read_proposal(paths)
    if not gates.passed:
        move(store, name, Lifecycle.CULLED, paths, trace_id, TransitionContext(score=gates.score))
    elif pending is not None and pending.get("score", 0) >= gates.score:
        move(store, name, Lifecycle.CULLED, paths, trace_id)
        log_event(paths.log, "NO_PROMOTION", cycle_trace_id=trace_id, candidate=name,
                  reason=f"pending proposal {pending['proposed_head']} scores higher")
    else:
        outcome = CandidateOutcome(name=name, spec=spec, returncode=returncode, status=status, gates=gates,
                                   probes=probes, archive_path=str(path))
        proposal = propose(paths, store, [outcome], head, head_probes, trace_id)
    save_store(paths, store)
    result = {"name": name, "status": status, "score": gates.score, "gates": gates.gates,
              "failed_gates": gates.failed, "archive_path": str(path), "head": head,
              "proposed": bool(proposal), "improvement": proposal["improvement"] if proposal else None}
    if proposal and cfg.promotion_mode == "auto":
        from loop.archive.promotion import approve

        record = approve(cfg, paths.workspace, trace_id, say=lambda *_: None)
        result["auto_promotion"] = record["action"]
    return result
