"""One evolution window, steps 2-7 of evolution_scheduler.md, readable top to bottom:

    SPAWN candidates -> DISTILL them in parallel (shared trainer, KD from GEN_HEAD + its parent,
    replay buffer) -> then the candidate path (path.py) every finished training takes: EVAL fixed
    probes -> RANK through the five gates -> FREEZE every one into the archive -> PROPOSE the best
    passing one that beats GEN_HEAD
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from pydantic import BaseModel

from loop.archive import freeze as archive
from loop.archive.lifecycle import Lifecycle, LifecycleStore
from loop.archive.lineage import LineageRow, log_event, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.promotion import Proposal
from loop.archive.store import load_store, move, save_store
from loop.candidates.path import CandidateOutcome, Training, take_candidates
from loop.candidates.records import RankedCandidate, WindowEntry
from loop.candidates.scheduler import CandidateSpec, spawn_candidates
from loop.config import DaemonConfig, deep_merge, read_yaml
from loop.domains import resolve_domain, task_domain
from loop.journal.fingerprint import recipe
from loop.run.executor import executor_for
from loop.run.plan import RunPlan, plan_for, trainer_config
from loop.run.sandbox_setup import load_sandbox
from loop.run.supervise import ActiveRun, Executor, exit_code, run_all
from loop.tracking.tensorboard_links import keep_candidate_boards
from loop.trainer.config import resolved
from loop.util.fsutil import read_regular_text
from loop.util.progress import ProgressLog


def ranked(ranking: list[CandidateOutcome]) -> list[RankedCandidate]:
    return [RankedCandidate(name=o.name, status=o.status, score=o.gates.score) for o in ranking]


class WindowResult(BaseModel):
    cycle: int
    gen_id: int
    head: str | None
    ranking: list[CandidateOutcome]
    proposal: Proposal | None = None

    def entry(self) -> WindowEntry:
        return WindowEntry(gen_id=self.gen_id, head=self.head, ranking=ranked(self.ranking),
                           proposal=self.proposal.proposed_head if self.proposal else None)


# ----------------------------------------------------------- the window ----

def run_window(cfg: DaemonConfig, workspace: Path, cycle: int, count: int | None = None,
               trace_id: str = "", say=print, executor: Executor | None = None) -> WindowResult:
    """One generation: SPAWN candidates, DISTILL them through the executor (on device slots shared
    with the daemon's runs and PHASE), then EVAL, RANK, FREEZE and PROPOSE."""
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
    specs, skipped = untried_specs(specs, evo.strategies, archived_recipes(paths),
                                   lambda spec: deep_merge(base, candidate_overlay(spec, paths, head, grandparent,
                                                                                   replay)))
    for note in skipped:
        log_event(paths.log, "SKIP", cycle_trace_id=trace_id, cycle=cycle, gen_id=gen_id, reason=note)
    say(f"evolution window at cycle {cycle}: generation {gen_id}, {len(specs)} candidate(s), "
        f"HEAD {head or 'none (training from scratch)'}, replay {len(replay)} samples"
        + (f"; {len(skipped)} skipped as repeats" if skipped else ""))
    trainings, plans = spawn(cfg, paths, store, specs, base, head, replay, cycle, trace_id)

    # ---- DISTILL (parallel, supervised, on free device slots) ----
    if plans:                # the candidates read the pixel cache read-only: decode their size now
        task_domain(cfg).warm_cache([int(base.get("data", {}).get("image_size") or 32)])
    own = executor is None               # made here: closed here (the daemon closes its own)
    executor = executor or executor_for(cfg, cfg.root, paths.workspace, load_sandbox(cfg, cfg.root, paths.workspace))
    try:
        codes = distill(cfg, paths, store, plans, gen_id, cycle, trace_id, executor)
    finally:
        if own:
            executor.close()
    if cfg.tracking.tensorboard:        # their work folders go once archived: keep the event files
        keep_candidate_boards(paths.workspace, [(t.name, t.run_dir) for t in trainings])
    for training in trainings:
        training.returncode = codes.get(training.name, 0)

    # ---- EVAL + RANK + FREEZE (every candidate, pass or fail) + PROPOSE ----
    def generation(ranking: list[CandidateOutcome], proposal: Proposal | None) -> None:
        log_event(paths.log, "GENERATION", cycle_trace_id=trace_id, cycle=cycle, gen_id=gen_id, head=head,
                  ranking=[r.model_dump() for r in ranked(ranking)],
                  proposed=proposal.proposed_head if proposal else None)

    domain = resolve_domain(base.get("data", {}).get("domain", "digits"), base.get("data", {}).get("domain_args"))
    result = take_candidates(cfg, paths, store, trainings, head, trace_id, domain=domain, say=say,
                             before_approve=generation)
    return WindowResult(cycle=cycle, gen_id=gen_id, head=head, ranking=result.ranking, proposal=result.proposal)


def spawn(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, specs: list[CandidateSpec], base: dict,
          head: str | None, replay: list[str], cycle: int, trace_id: str) -> tuple[list[Training], list[RunPlan]]:
    """SPAWN: each candidate's work folder, trainer config and run plan (GERMINATED)."""
    trainings, plans = [], []
    for spec in specs:
        name = archive.entry_name(cfg.evolution.archive_prefix, spec.gen_id, spec.branch_id, spec.timestamp)
        work = paths.candidates / name
        # the same maker as the daemon's runs: the recipe's caps or the daemon's, whichever is tighter
        run_cfg = trainer_config(cfg, candidate_overlay(spec, paths, head, spec.grandparent, replay), name,
                                 base=base, what=f"candidate {name}")
        store.add(name)
        move(store, name, Lifecycle.GERMINATED, paths, trace_id)
        # candidates train in the same sandbox as the daemon's runs; their log is <work>/run.log
        plans.append(plan_for(cfg, run_cfg, name, trace_id, work, out="run"))
        trainings.append(Training(name=name, spec=spec, run_dir=work / "run", run_cfg=run_cfg,
                                  log=work / "run.log", replay=replay, work=work))
        log_event(paths.log, "SPAWN", cycle_trace_id=trace_id, cycle=cycle, candidate=name,
                  seed=spec.seed, strategy=spec.strategy, parent=spec.parent)
    return trainings, plans


def distill(cfg: DaemonConfig, paths: ModelPaths, store: LifecycleStore, plans: list[RunPlan], gen_id: int,
            cycle: int, trace_id: str, executor: Executor) -> dict[str, int]:
    """DISTILL: every candidate TRAINING, at most max_concurrent_experiments at once and each on a
    free device slot; returns each candidate's exit code."""
    for plan in plans:
        move(store, plan.label, Lifecycle.TRAINING, paths, trace_id)
    save_store(paths, store)
    progress = ProgressLog(paths.progress_log, f"generation {gen_id}", total=len(plans), every_seconds=30)
    progress.line(f"window at cycle {cycle}: training {len(plans)} candidate(s) of generation {gen_id}")
    codes: dict[str, int] = {}

    def on_finish(run: ActiveRun, status: str) -> None:
        codes[run.label] = exit_code(run) if exit_code(run) is not None else -9
        progress.line(f"{run.label}: training exit {codes[run.label]} ({status}) on {run.device or run.executor} "
                      f"in {time.time() - run.started_at:.0f}s")
        progress.update(len(codes), f"{len(codes)}/{len(plans)} trained")

    try:
        run_all(executor, plans, cfg.max_concurrent_experiments, cycle, on_finish=on_finish)
    finally:
        progress.close()
    return codes


# -------------------------------------------------------------- helpers ----

def archived_recipes(paths: ModelPaths) -> dict[str, str]:
    """Recipe -> archive entry, for every candidate earlier windows trained (their train_args.json)."""
    out: dict[str, str] = {}
    for args in sorted(paths.archive.glob("*/train_args.json")):
        try:
            out.setdefault(recipe(json.loads(read_regular_text(args))), args.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    return out


def untried_specs(specs: list[CandidateSpec], strategies: list[str], seen: dict[str, str],
                  config_of) -> tuple[list[CandidateSpec], list[str]]:
    """The window's candidates, none a repeat of an archived candidate or of another in the window
    (the repeat rule of loop/journal/fingerprint.py): a repeat takes the next strategy not tried with
    this GEN_HEAD, and is skipped when there is none. Returns the specs kept and a note per skip."""
    kept, notes, seen = [], [], dict(seen)
    for spec in specs:
        for strategy in [spec.strategy, *(s for s in strategies if s != spec.strategy)]:
            trial = spec.model_copy(update={"strategy": strategy})
            key = recipe(resolved(config_of(trial)))
            if key not in seen:
                seen[key] = f"candidate {spec.branch_id}"
                kept.append(trial)
                break
        else:
            notes.append(f"candidate {spec.branch_id}: every strategy was trained already with this GEN_HEAD and "
                         f"config ({seen[recipe(resolved(config_of(spec)))]}); nothing new to distil")
    return kept, notes


def candidate_overlay(spec: CandidateSpec, paths: ModelPaths, head: str | None, grandparent: str,
                      replay: list[str]) -> dict:
    """What makes a candidate itself: its seed, sampling strategy, replay samples and KD models
    (threads: the device slot's share; budget caps: the run plan's rule)."""
    kd = {"teacher": str(paths.entry(head)) if head else None,
          "stabilizer": str(paths.entry(grandparent)) if head and grandparent else None}
    return {"run": {"seed": spec.seed}, "data": {"sampling": {"strategy": spec.strategy}, "replay_ids": replay},
            "kd": kd}


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
