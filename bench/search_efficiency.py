"""Search efficiency at equal compute: the offline policy vs random search vs Optuna TPE vs Optuna TPE
with Hyperband pruning, on two tasks, 3 seeds each, every method given the same training CPU-seconds.

- compute: `time.process_time()` of this process around each training call (CPU-seconds of every
  thread; one torch thread per trial, so a busy machine slows the wall clock, not the measure);
  each method trains until its budget is spent, and the trial that crosses the line still counts
  up to the line only (its result is used only when it ended inside the budget point).
- tasks: the embedded digits task (config/trainer/digits.yaml) and the procedural `shapes` task with
  the digits recipe unchanged (config/trainer/shapes.yaml; `count` reduced here so the benchmark fits
  on 2 cores). No default was tuned on shapes.
- methods, all in the offline policy's search space (loop/agents/offline.py, task-aware):
    offline policy   the loop's own Builder: a full baseline, successive-halving screens and
                     continuations from checkpoints, seed replicas, noise-aware keeps, cost model
    random search    the default config first, then uniform random points (full runs)
    Optuna TPE       TPESampler, 4 start-up trials (full runs)
    TPE + Hyperband  the same sampler with HyperbandPruner(min 1 epoch, reduction 3), pruning on
                     the per-epoch validation accuracy
- reported: at 4 budget points, the mean over seeds of the best full-fidelity validation accuracy
  (max over the runs that trained every epoch; the same rule for every method), its spread, and
  the number of kept improvements inside the noise: each time a method's best rose, was the rise
  a real gain under loop/journal/noise.py's rule (paired McNemar on the same validation images,
  and above the seed band measured from the default config's three seeds)?

Run from the repo root: .venv/bin/python bench/search_efficiency.py [--task digits|shapes|both]
[--budget-scale 1.0]. Two tasks run as two processes at once (one core each).
Smoke size (tests/test_bench_smoke.py; no RESULTS.md or bench/_work write): add --smoke (one seed,
trials of at most 3 epochs on a quarter of the split, 400 shapes, 1% of the budget).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
import torch  # noqa: E402
from _results import machine_facts, smoke, spread, write_section  # noqa: E402

from loop.agents.ladder import resolve  # noqa: E402
from loop.agents.offline import PolicyInput, builder_decision  # noqa: E402
from loop.agents.space import TaskProfile, overlay_of, space_for  # noqa: E402
from loop.config import deep_merge, read_yaml, validate  # noqa: E402
from loop.cycle.watch import measured  # noqa: E402
from loop.domains import resolve_domain  # noqa: E402
from loop.journal.history import RunRecord  # noqa: E402
from loop.journal.keeps import judge_run  # noqa: E402
from loop.journal.noise import Score, compare, pooled_seed_sd, unpack_correct  # noqa: E402
from loop.trainer.config import TrainerConfig  # noqa: E402
from loop.trainer.metrics import RunMetrics  # noqa: E402
from loop.trainer.train import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
TASKS = {   # task -> (trainer config, domain args for the benchmark, budget in CPU-seconds)
    "digits": ("config/trainer/digits.yaml", {}, 240.0),
    "shapes": ("config/trainer/shapes.yaml", {"count": 2000}, 320.0),
}
POINTS = (0.25, 0.5, 0.75, 1.0)
METHODS = ("offline policy", "random search", "Optuna TPE", "TPE + Hyperband")
if smoke():      # spawned task workers see it too (the env var is inherited)
    SEEDS, TASKS["shapes"] = (0,), ("config/trainer/shapes.yaml", {"count": 400}, 320.0)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Trial:
    cost_end: float              # cumulative CPU-seconds when it ended
    score: float                 # validation accuracy (0: failed)
    full: bool                   # trained every epoch
    correct: list[bool] | None = None


@dataclass
class Search:
    budget: float
    spent: float = 0.0
    trials: list[Trial] = field(default_factory=list)
    kept: list[int] | None = None      # the offline policy's kept bests (first, gains), as trial indices

    def left(self) -> bool:
        return self.spent < self.budget


class Pruned(Exception):
    pass


class Task:
    def __init__(self, name: str, workdir: Path):
        path, args, self.budget = TASKS[name]
        self.name, self.workdir = name, workdir
        self.base = read_yaml(REPO / path)
        self.base = deep_merge(self.base, {"data": {"domain_args": args}} if args else {})
        self.base = smoke_size(self.base) if smoke() else self.base   # the policy plans from it
        self.domain = resolve_domain(self.base["data"]["domain"], self.base["data"].get("domain_args"))
        splits = self.domain.splits
        self.profile = TaskProfile(native_size=32 if name == "shapes" else 8, channels=self.domain.in_chans,
                                   num_classes=self.domain.num_classes, train_images=len(splits.train),
                                   domain=name)
        self.space = space_for(self.profile if name != "digits" else None)

    def base_for(self, seed: int) -> dict:
        """The task's config for one benchmark seed (every method's trials train with it)."""
        return deep_merge(self.base, {"run": {"seed": 42 + seed}})

    def run(self, search: Search, config: dict, on_epoch=None) -> tuple[RunMetrics | None, Path]:
        """Train one config in-process on one thread; charge its CPU-seconds to the search."""
        config = deep_merge(config, {"run": {"threads": 1, "log_every_steps": 10 ** 6}})
        config = smoke_size(config) if smoke() else config
        out = Path(tempfile.mkdtemp(dir=self.workdir))
        t0 = time.process_time()
        metrics = None
        try:
            metrics = train(validate(TrainerConfig, config, "bench"), out / "out", domain=self.domain,
                            on_epoch=on_epoch)
        except Pruned:
            pass
        except Exception as exc:          # a failed trial scores 0, as in the loop
            print(f"{self.name}: trial failed: {type(exc).__name__}: {exc}"[:300], flush=True)
        search.spent += time.process_time() - t0
        return metrics, out / "out"


def smoke_size(config: dict) -> dict:
    """A config cut to seconds, over the method's own choice: 3 epochs, a screen stopping after 1 (so a
    continuation still finds its checkpoint), a quarter of the split."""
    run = config.get("run", {})
    shrink = {"epochs": min(run.get("epochs", 3), 3)}
    if run.get("stop_after_epochs"):
        shrink["stop_after_epochs"] = 1
    return deep_merge(config, {"run": shrink, "data": {"train_fraction": 0.25}})


def record(search: Search, metrics: RunMetrics | None) -> Trial:
    ok = metrics is not None and metrics.status == "ok" and metrics.eval is not None
    full = ok and metrics.epochs_completed == metrics.epochs_planned
    correct = unpack_correct(metrics.eval.correct, metrics.eval.count) if ok else None
    trial = Trial(search.spent, metrics.eval.accuracy if ok else 0.0, full,
                  correct.tolist() if correct is not None else None)
    search.trials.append(trial)
    return trial


# ------------------------------------------------------------------ methods ----

def offline_search(task: Task, seed: int) -> Search:
    """The loop's policy exactly as the daemon feeds it: decision -> fidelity resolved -> trained ->
    measured -> judged against the incumbent -> history."""
    search, history = Search(task.budget), []
    cap = (task.base.get("budget") or {}).get("max_walltime_minutes")
    profile = task.profile if task.name != "digits" else None
    cycle = 0
    while search.left():
        cycle += 1
        base = task.base_for(seed)
        d = builder_decision(PolicyInput(cycle, list(history), profile=profile, base_config=base,
                                         walltime_cap_seconds=cap * 60 if cap else None), seed=seed)
        config = deep_merge(base, resolve(d, base, history))
        metrics, out = task.run(search, config)
        trial = record(search, metrics)
        rec = RunRecord(d.run_label, cycle, read_args(out), trial.score > 0, trial.score, d.strategy_dimension,
                        minutes=None, run_dir=str(out))
        rec = measured(rec, out, base)
        verdict = judge_run(history, rec)
        rec.verdict, rec.margin, rec.band = verdict.verdict, verdict.margin, verdict.band
        history.append(rec)
    search.kept = [i for i, r in enumerate(history) if r.verdict in ("first", "gain")]
    return search


def read_args(out: Path) -> dict:
    try:
        return json.loads((out / "train_args.json").read_text())
    except (OSError, ValueError):
        return {}


def random_search(task: Task, seed: int) -> Search:
    search, rng = Search(task.budget), random.Random(seed)
    first = True
    while search.left():
        params = {} if first else {p: rng.choice(c) for p, c in task.space.values()}
        first = False
        record(search, task.run(search, deep_merge(task.base_for(seed), overlay_of(params)))[0])
    return search


def tpe_search(task: Task, seed: int, hyperband: bool = False) -> Search:
    search = Search(task.budget)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3) if hyperband \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    while search.left():
        trial = study.ask()
        params = {p: trial.suggest_categorical(p, c) for p, c in task.space.values()}

        def on_epoch(rec, trial=trial):
            trial.report(rec.val_accuracy, rec.epoch)
            if trial.should_prune():
                raise Pruned()

        metrics, _ = task.run(search, deep_merge(task.base_for(seed), overlay_of(params)),
                              on_epoch if hyperband else None)
        t = record(search, metrics)
        if metrics is None and hyperband:      # pruned: its last reported value stands
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, t.score)
    return search


def run_method(task: Task, method: str, seed: int) -> Search:
    return {"offline policy": lambda: offline_search(task, seed),
            "random search": lambda: random_search(task, seed),
            "Optuna TPE": lambda: tpe_search(task, seed),
            "TPE + Hyperband": lambda: tpe_search(task, seed, hyperband=True)}[method]()


# ----------------------------------------------------------------- summary ----

def best_at(search: Search, point: float, kept_only: bool = True) -> float:
    """The best a method reports at `point`: the offline policy's kept best (a tie or a replica that
    scored higher never replaced it), every other method's highest full-fidelity score."""
    if search.kept is not None and kept_only:
        kept = [search.trials[i] for i in search.kept if search.trials[i].cost_end <= point]
        return kept[-1].score if kept else 0.0
    done = [t.score for t in search.trials if t.full and t.cost_end <= point]
    return max(done, default=0.0)


def rises(search: Search) -> list[tuple[Trial, Trial]]:
    """Each time the best full-fidelity score rose: (the new best, the one it replaced)."""
    out, best = [], None
    for t in search.trials:
        if t.full and t.cost_end <= search.budget:
            if best is None or t.score > best.score:
                if best is not None:
                    out.append((t, best))
                best = t
    return out


def inside_noise(pairs: list[tuple[Trial, Trial]], sd: float | None) -> int:
    def score(t: Trial) -> Score:
        c = torch.tensor(t.correct).numpy() if t.correct is not None else None
        return Score(t.score, len(t.correct) if t.correct else None, c)

    return sum(compare(score(new), score(old), sd).verdict != "gain" for new, old in pairs)


def offline_kept_pairs(search: Search) -> list[tuple[Trial, Trial]]:
    kept = [search.trials[i] for i in search.kept or [] if search.trials[i].cost_end <= search.budget]
    return list(zip(kept[1:], kept[:-1]))


def task_worker(name: str, queue, methods: tuple[str, ...] = METHODS, budget_scale: float = 1.0) -> None:
    torch.set_num_threads(1)
    path, dargs, budget = TASKS[name]          # a spawned process: main()'s scaling is not inherited
    TASKS[name] = (path, dargs, budget * budget_scale)
    with tempfile.TemporaryDirectory() as tmp:
        task = Task(name, Path(tmp))
        for seed in SEEDS:
            for method in methods:                 # interleaved: each seed runs every method in turn
                t0 = time.time()
                search = run_method(task, method, seed)
                pairs = offline_kept_pairs(search) if method == "offline policy" else rises(search)
                queue.put((name, method, seed, [t.__dict__ for t in search.trials], search.budget,
                           [(a.__dict__, b.__dict__) for a, b in pairs], search.kept))
                print(f"{name} seed {seed} {method}: {len(search.trials)} trials, best "
                      f"{best_at(search, search.budget):.4f}, {time.time() - t0:.0f} s wall", flush=True)


def main() -> None:
    global METHODS
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="both", choices=["digits", "shapes", "both"])
    ap.add_argument("--budget-scale", type=float, default=0.01 if smoke() else 1.0)
    ap.add_argument("--smoke", action="store_true", help="seconds of work, nothing written")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    ap.add_argument("--section", default="search_efficiency", help="the RESULTS.md section to (re)write")
    args = ap.parse_args()
    if args.smoke:
        os.environ["LLMLOOP_BENCH_SMOKE"] = "1"     # the spawned task workers read it
    METHODS = tuple(m for m in METHODS if m in args.methods.split(","))
    for name in TASKS:
        path, dargs, budget = TASKS[name]
        TASKS[name] = (path, dargs, budget * args.budget_scale)
    facts = machine_facts()
    names = list(TASKS) if args.task == "both" else [args.task]
    t0 = time.time()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=task_worker, args=(n, queue, METHODS, args.budget_scale)) for n in names]
    for p in procs:
        p.start()
    results: dict[tuple[str, str], list] = {}
    expected = len(names) * len(METHODS) * len(SEEDS)
    while len([v for vs in results.values() for v in vs]) < expected:
        try:
            name, method, seed, trials, budget, pairs, kept = queue.get(timeout=5)
        except Empty:       # a worker that died sends nothing more: stop instead of waiting forever
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"a task worker failed (exit codes {dead}); its traceback is above") from None
            continue
        search = Search(budget, trials=[Trial(**t) for t in trials], kept=kept)
        results.setdefault((name, method), []).append((seed, search, [(Trial(**a), Trial(**b)) for a, b in pairs]))
    for p in procs:
        p.join()
    if not smoke():     # a smoke run keeps nothing
        raw = REPO / "bench" / "_work" / f"{args.section}.json"     # the trials, for later merges and checks
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps([{"task": n, "method": m, "seed": seed, "budget": s.budget, "kept": s.kept,
                                    "trials": [t.__dict__ for t in s.trials]} for (n, m), runs in results.items()
                                   for seed, s, _ in runs]))
    write(results, names, facts, time.time() - t0, args.section)


def mean_sd(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}"


def write(results: dict, names: list[str], facts: str, seconds: float, section: str = "search_efficiency") -> None:
    parts = [f"Compute-matched: every method gets the same training CPU-seconds per task and seed (one torch "
             f"thread per trial); seeds {list(SEEDS)}; budget points at {', '.join(f'{p:.0%}' for p in POINTS)} "
             f"of the budget. Total {seconds / 60:.0f} min wall, two tasks in parallel."]
    for name in names:
        path, dargs, budget = TASKS[name]
        # the default config at each seed: random search's first trial (the offline policy's baseline
        # when random search did not run)
        first = "random search" if (name, "random search") in results else "offline policy"
        defaults = [s for (n, m), runs in results.items() if n == name and m == first for _, s, _ in runs]
        first_scores = [s.trials[0].score for s in defaults if s.trials and s.trials[0].full]
        sd = pooled_seed_sd([first_scores])
        count = next((len(t.correct) for (n, _), runs in results.items() if n == name for _, s, _ in runs
                      for t in s.trials if t.correct), None)
        parts.append(f"\n### {name}: budget {budget:.0f} CPU-s per search (`{path}`"
                     + (f", domain_args {dargs}" if dargs else "") + f"), {count} validation images "
                     f"(one image = {1 / count:.4f})" + (f"; default config over 3 seeds: "
                                                          f"{spread(first_scores)}" if first_scores else ""))
        rows = []
        for method in METHODS:
            runs = results.get((name, method), [])
            cells = []
            for p in POINTS:
                cells.append(mean_sd([best_at(s, p * budget) for _, s, _ in runs]))
            finals = [best_at(s, budget) for _, s, _ in runs]
            trials = statistics.mean(len(s.trials) for _, s, _ in runs) if runs else 0
            kept = sum(len(pairs) for _, _, pairs in runs)
            noisy = sum(inside_noise(pairs, sd) for _, _, pairs in runs)
            rows.append(f"| {method} | " + " | ".join(cells) + f" | {trials:.1f} | {noisy} of {kept} | "
                        f"{spread(finals)} |")
            if method == "offline policy":     # its highest score, tie or not: the others' rule
                cells = [mean_sd([best_at(s, p * budget, kept_only=False) for _, s, _ in runs]) for p in POINTS]
                highest = [best_at(s, budget, kept_only=False) for _, s, _ in runs]
                rows.append("| offline policy, highest score (ties included) | " + " | ".join(cells)
                            + f" | | | {spread(highest)} |")
        parts.append("\nMean ± std over seeds of the best full-fidelity validation accuracy at each budget point (the "
                     "offline policy: its kept best, the model it reports; the others: their highest score):\n")
        parts.append("| method | " + " | ".join(f"{p:.0%} ({p * budget:.0f} s)" for p in POINTS)
                     + " | trials | kept rises inside the noise | at 100%: spread |")
        parts.append("|---|" + "---|" * (len(POINTS) + 3))
        parts += rows
        per_seed = []
        for method in METHODS:
            per_seed.append(f"- {method}: " + ", ".join(f"seed {seed} {best_at(s, budget):.4f}"
                                                        for seed, s, _ in sorted(results.get((name, method), []),
                                                                                 key=lambda x: x[0])))
        parts.append("\nPer seed at 100%:\n" + "\n".join(per_seed))
        parts.append(f"\nNoise band used for 'inside the noise': paired McNemar (p < 0.05) on the "
                     f"{count} validation images, and the seed band 1.96·√2·sd with sd "
                     f"{sd if sd is not None else float('nan'):.4f} from the default config's 3 seeds. For the "
                     "offline policy the rises counted are its kept gains; for the others, every rise of the best.")
    body = "\n".join(parts) + "\n"
    print(body)
    write_section(section, body, facts)


if __name__ == "__main__":
    main()
