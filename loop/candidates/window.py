"""One evolution window, steps 2-7 of evolution_scheduler.md, readable top to bottom:

    SPAWN candidates -> DISTILL them in parallel (shared trainer, KD from GEN_HEAD + its parent,
    replay buffer) -> then the candidate path (path.py) every finished training takes: EVAL fixed
    probes -> RANK through the five gates -> FREEZE every one into the archive -> PROPOSE the best
    passing one that beats GEN_HEAD
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from pydantic import BaseModel

from loop.archive import freeze as archive
from loop.archive.lifecycle import Lifecycle, LifecycleStore
from loop.archive.lineage import LineageRow, log_event, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.promotion import Proposal
from loop.archive.store import load_store, move, save_store
from loop.candidates.path import CandidateOutcome, Training, take_candidates
from loop.candidates.scheduler import CandidateSpec, spawn_candidates
from loop.config import DaemonConfig, deep_merge, read_yaml, validate
from loop.domains import resolve_domain
from loop.run.sandbox import load_sandbox
from loop.run.supervise import Job, run_parallel
from loop.trainer.config import TrainerConfig
from loop.util.progress import ProgressLog


class WindowResult(BaseModel):
    cycle: int
    gen_id: int
    head: str | None
    ranking: list[CandidateOutcome]
    proposal: Proposal | None = None


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
    base = deep_merge(read_yaml(cfg.resolve(cfg.default_trainer_config)), evo.candidate_overrides)
    replay = replay_buffer(paths, lineage, head, evo.replay_samples_per_generation)
    say(f"evolution window at cycle {cycle}: generation {gen_id}, {len(specs)} candidate(s), "
        f"HEAD {head or 'none (training from scratch)'}, replay {len(replay)} samples")
    trainings, jobs = spawn(cfg, paths, store, specs, base, head, replay, cycle, trace_id)

    # ---- DISTILL (parallel, supervised) ----
    distill(cfg, paths, store, jobs, gen_id, cycle, trace_id)
    for training, job in zip(trainings, jobs):
        training.returncode = job.returncode or 0

    # ---- EVAL + RANK + FREEZE (every candidate, pass or fail) + PROPOSE ----
    def generation(ranking: list[CandidateOutcome], proposal: Proposal | None) -> None:
        log_event(paths.log, "GENERATION", cycle_trace_id=trace_id, cycle=cycle, gen_id=gen_id, head=head,
                  ranking=[{"name": o.name, "status": o.status, "score": o.gates.score} for o in ranking],
                  proposed=proposal.proposed_head if proposal else None)

    domain = resolve_domain(base.get("data", {}).get("domain", "digits"), base.get("data", {}).get("domain_args"))
    result = take_candidates(cfg, paths, store, trainings, head, trace_id, domain=domain, say=say,
                             before_approve=generation)
    return WindowResult(cycle=cycle, gen_id=gen_id, head=head, ranking=result.ranking, proposal=result.proposal)


def spawn(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, specs: list[CandidateSpec], base: dict,
          head: str | None, replay: list[str], cycle: int, trace_id: str) -> tuple[list[Training], list[Job]]:
    """SPAWN: each candidate's work folder, trainer config and supervised job (GERMINATED)."""
    sandbox = load_sandbox(cfg, cfg.root, paths.workspace)
    trainings, jobs = [], []
    threads = max(1, (os.cpu_count() or 1) // len(specs))
    for spec in specs:
        name = archive.entry_name(cfg.evolution.archive_prefix, spec.gen_id, spec.branch_id, spec.timestamp)
        work = paths.candidates / name
        run_cfg = candidate_config(base, spec, name, paths, head, spec.grandparent, replay, cfg, threads)
        validate(TrainerConfig, run_cfg, f"candidate {name}")
        work.mkdir(parents=True, exist_ok=True)
        (work / "run.yaml").write_text(json.dumps(run_cfg, indent=2))
        store.add(name)
        move(store, name, Lifecycle.GERMINATED, paths, trace_id)
        argv = [sys.executable, "-m", "loop.trainer", "--config", str(work / "run.yaml"), "--out", str(work / "run")]
        sandbox.prepare(work)              # candidates train in the same sandbox as the daemon's runs
        jobs.append(Job(name=name, argv=sandbox.command(argv, work, cfg.root),
                        log_path=work / "stdout.log", cwd=cfg.root, env=sandbox.env(work, f"{trace_id}:{name}"),
                        timeout_seconds=(cfg.budget.max_walltime_minutes or 60) * 60 + 120))
        trainings.append(Training(name=name, spec=spec, run_dir=work / "run", run_cfg=run_cfg,
                                  log=work / "stdout.log", replay=replay, work=work))
        log_event(paths.log, "SPAWN", cycle_trace_id=trace_id, cycle=cycle, candidate=name,
                  seed=spec.seed, strategy=spec.strategy, parent=spec.parent)
    return trainings, jobs


def distill(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, jobs: list[Job], gen_id: int, cycle: int,
            trace_id: str) -> None:
    """DISTILL: every candidate TRAINING, the jobs run in parallel under the supervisor."""
    for job in jobs:
        move(store, job.name, Lifecycle.TRAINING, paths, trace_id)
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
