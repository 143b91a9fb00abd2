"""One evolution window, steps 2-7 of evolution_scheduler.md, readable top to bottom:

    SPAWN candidates -> DISTILL them in parallel (shared trainer, KD from GEN_HEAD + its parent,
    replay buffer) -> EVAL fixed probes -> RANK through the five gates -> FREEZE every one into
    the archive -> PROPOSE the best passing one that beats GEN_HEAD
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel

from loop.config import DaemonConfig, deep_merge, read_yaml, validate
from loop.domains import resolve_domain
from loop.archive import freeze as archive
from loop.candidates import cards
from loop.archive.gates import GateResult, check_gates
from loop.archive.lifecycle import Lifecycle, TransitionContext
from loop.archive.lineage import LineageRow, log_event, read_lineage
from loop.archive.paths import ModelPaths
from loop.run.sandbox import load_sandbox
from loop.archive.probes import LoadedModel, ProbeMetrics, run_probes
from loop.candidates.scheduler import CandidateSpec, spawn_candidates
from loop.archive.store import load_store, move, save_store
from loop.util.progress import ProgressLog
from loop.run.supervise import Job, run_parallel
from loop.trainer.config import TrainerConfig
from loop.trainer.metrics import RunMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]


class CandidateOutcome(BaseModel):
    name: str
    spec: CandidateSpec
    returncode: int
    status: str
    gates: GateResult
    probes: ProbeMetrics | None = None
    archive_path: str


class WindowResult(BaseModel):
    cycle: int
    gen_id: int
    head: str | None
    ranking: list[CandidateOutcome]
    proposal: dict | None = None


# ----------------------------------------------------------- the window ----

def run_window(cfg: DaemonConfig, workspace: Path, cycle: int, count: int | None = None,
               trace_id: str = "", say=print) -> WindowResult:
    paths = ModelPaths(Path(workspace))
    for folder in (paths.archive, paths.candidates, paths.lifecycle):
        folder.mkdir(parents=True, exist_ok=True)
    store = load_store(paths, trace_id)
    lineage = read_lineage(paths.lineage)
    head = paths.head_name()
    head_row = next((r for r in lineage if r.name == head), None)
    grandparent = head_row.parent if head_row else ""
    gen_id = max((r.gen_id for r in lineage), default=0) + 1
    evo = cfg.evolution

    # ---- SPAWN ----
    specs = spawn_candidates(gen_id, count or cfg.max_concurrent_experiments, cfg.max_concurrent_experiments,
                             evo.strategies, head or "", grandparent)
    base = deep_merge(read_yaml(REPO_ROOT / cfg.default_trainer_config if not Path(cfg.default_trainer_config)
                                .is_absolute() else cfg.default_trainer_config), evo.candidate_overrides)
    replay = replay_buffer(paths, lineage, head, evo.replay_samples_per_generation)
    say(f"evolution window at cycle {cycle}: generation {gen_id}, {len(specs)} candidate(s), "
        f"HEAD {head or 'none (training from scratch)'}, replay {len(replay)} samples")
    sandbox = load_sandbox(cfg, REPO_ROOT, Path(workspace))
    names, jobs, run_cfgs = [], [], {}
    threads = max(1, (os.cpu_count() or 1) // len(specs))
    for spec in specs:
        name = archive.entry_name(evo.archive_prefix, spec.gen_id, spec.branch_id, spec.timestamp)
        work = paths.candidates / name
        run_cfg = candidate_config(base, spec, name, paths, head, grandparent, replay, cfg, threads)
        validate(TrainerConfig, run_cfg, f"candidate {name}")
        work.mkdir(parents=True, exist_ok=True)
        (work / "run.yaml").write_text(json.dumps(run_cfg, indent=2))
        run_cfgs[name] = run_cfg
        store.add(name)
        move(store, name, Lifecycle.GERMINATED, paths, trace_id)
        names.append(name)
        argv = [sys.executable, "-m", "loop.trainer", "--config", str(work / "run.yaml"), "--out", str(work / "run")]
        sandbox.prepare(work)              # candidates train in the same sandbox as the daemon's runs
        jobs.append(Job(name=name, argv=sandbox.command(argv, work, REPO_ROOT),
                        log_path=work / "stdout.log", cwd=REPO_ROOT, env=sandbox.env(work, f"{trace_id}:{name}"),
                        timeout_seconds=(cfg.budget.max_walltime_minutes or 60) * 60 + 120))
        log_event(paths.log, "SPAWN", cycle_trace_id=trace_id, cycle=cycle, candidate=name,
                  seed=spec.seed, strategy=spec.strategy, parent=spec.parent)

    # ---- DISTILL (parallel, supervised) ----
    for name in names:
        move(store, name, Lifecycle.TRAINING, paths, trace_id)
    save_store(paths, store)
    progress = ProgressLog(paths.root / "evolution.log", f"generation {gen_id}", total=len(jobs), every_seconds=30)
    progress.line(f"window at cycle {cycle}: training {len(jobs)} candidate(s) of generation {gen_id}")
    finished = []

    def on_finish(job: Job) -> None:
        finished.append(job)
        progress.line(f"{job.name}: training exit {job.returncode} in {job.seconds:.0f}s")
        progress.update(len(finished), f"{len(finished)}/{len(jobs)} trained")

    try:
        run_parallel(jobs, cfg.max_concurrent_experiments, on_finish=on_finish)
    finally:
        progress.close()

    # ---- EVAL + RANK ----
    domain = resolve_domain(base.get("data", {}).get("domain", "digits"), base.get("data", {}).get("domain_args"))
    head_model = LoadedModel(paths.head.resolve(), domain) if head else None
    head_probes = run_probes(head_model, None, evo.rules) if head_model else None
    outcomes = []
    for spec, job in zip(specs, jobs):
        run_dir = paths.candidates / job.name / "run"
        train = RunMetrics.read(run_dir) if (run_dir / "metrics.json").exists() else None
        probes = None
        if train is not None and train.status == "ok":
            probes = run_probes(LoadedModel(run_dir, domain), head_model, evo.rules)
        gates = check_gates(probes, head_probes, train is not None and train.status == "ok",
                            cfg.epsilon, cfg.delta, cfg.theta)
        status = cards.status_line(gates, train, job.returncode or 0)
        outcomes.append((spec, job, train, probes, gates, status))
    outcomes.sort(key=lambda o: o[4].score, reverse=True)

    # ---- FREEZE (every candidate, pass or fail) ----
    ranking = []
    for rank, (spec, job, train, probes, gates, status) in enumerate(outcomes, start=1):
        name = job.name
        texts = {
            "evo_manifest.json": json.dumps(manifest(spec, name, run_cfgs[name], paths, head, grandparent, replay,
                                                     cfg), indent=2) + "\n",
            "metrics.json": json.dumps(archive_metrics(spec, train, probes, gates, status, rank), indent=2) + "\n",
            "EVAL.md": cards.eval_md(name, probes, head_probes, gates, status, cfg.epsilon, cfg.delta, cfg.theta),
            "MODEL_CARD.md": cards.model_card(name, spec, train, probes, status, run_cfgs[name]),
            "STATUS.txt": status + "\n",
        }
        path, hashes_sha = archive.freeze_and_record(paths, name, paths.candidates / name / "run", texts, LineageRow(
            name=name, gen_id=spec.gen_id, branch_id=spec.branch_id, parent=spec.parent, seed=spec.seed,
            strategy=spec.strategy, status=status, score=gates.score, archive_path="", hashes_sha256="",
            cycle_trace_id=trace_id))
        log_event(paths.log, "ARCHIVED" if gates.passed else "REJECTED", cycle_trace_id=trace_id, candidate=name,
                  rank=rank, score=gates.score, status=status, failed_gates=gates.failed)
        if not gates.passed:
            move(store, name, Lifecycle.CULLED, paths, trace_id, TransitionContext(score=gates.score))
        else:
            store.score[store.row(name)] = gates.score
        shutil.rmtree(paths.candidates / name, ignore_errors=True)
        ranking.append(CandidateOutcome(name=name, spec=spec, returncode=job.returncode or 0, status=status,
                                        gates=gates, probes=probes, archive_path=str(path)))
        say(f"  {rank}. {name}: {status} (score {gates.score:.4f})")

    # ---- PROPOSE ----
    from loop.archive.promotion import propose

    proposal = propose(paths, store, ranking, head, head_probes, trace_id)
    log_event(paths.log, "GENERATION", cycle_trace_id=trace_id, cycle=cycle, gen_id=gen_id, head=head,
              ranking=[{"name": o.name, "status": o.status, "score": o.gates.score} for o in ranking],
              proposed=proposal["proposed_head"] if proposal else None)
    save_store(paths, store)
    if proposal and cfg.promotion_mode == "auto":   # the two-phase commit without a person
        from loop.archive.promotion import approve

        approve(cfg, paths.workspace, trace_id, say)
    return WindowResult(cycle=cycle, gen_id=gen_id, head=head, ranking=ranking, proposal=proposal)


# -------------------------------------------------------------- helpers ----

def candidate_config(base: dict, spec: CandidateSpec, name: str, paths: ModelPaths, head: str | None,
                     grandparent: str, replay: list[str], cfg: DaemonConfig, threads: int) -> dict:
    kd = {"teacher": str(paths.entry(head)) if head else None,
          "stabilizer": str(paths.entry(grandparent)) if head and grandparent else None}
    overlay = {"run": {"seed": spec.seed, "label": name, "threads": threads},
               "data": {"sampling": {"strategy": spec.strategy}, "replay_ids": replay},
               "kd": kd, "budget": cfg.budget.model_dump()}
    return deep_merge(base, overlay)


def replay_buffer(paths: ModelPaths, lineage: list[LineageRow], head: str | None, per_generation: int) -> list[str]:
    """Samples from the last 3 promoted generations' training data (HEAD and its two ancestors),
    `per_generation` from each, drawn with a seed fixed per generation so every candidate shares them."""
    by_name = {r.name: r for r in lineage}
    chain, name = [], head
    while name and name in by_name and len(chain) < 3:
        chain.append(by_name[name])
        name = by_name[name].parent
    ids: list[str] = []
    for row in chain:
        manifest_path = paths.entry(row.name) / "evo_manifest.json"
        try:
            train_ids = json.loads(manifest_path.read_text())["data"]["train_ids"]
        except (OSError, KeyError, json.JSONDecodeError):
            continue
        rng = random.Random(f"replay-{row.name}")
        ids += rng.sample(train_ids, min(per_generation, len(train_ids)))
    return ids


def manifest(spec: CandidateSpec, name: str, run_cfg: dict, paths: ModelPaths, head: str | None,
             grandparent: str, replay: list[str], cfg: DaemonConfig) -> dict:
    """evo_manifest.json: the frozen evolution request."""
    from loop.trainer.train import take_fraction

    data = run_cfg.get("data", {})
    domain = resolve_domain(data.get("domain", "digits"), data.get("domain_args"))
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
