"""Search efficiency at equal compute: the offline policy (the function, and the whole daemon around it)
vs random search vs Optuna TPE vs Optuna TPE with Hyperband pruning, on two tasks, 3 seeds each, every
method given the same CPU-seconds.

- compute: `time.process_time()` of this process around each training call (CPU-seconds of every
  thread; one torch thread per trial, so a busy machine slows the wall clock, not the measure);
  each method trains until its budget is spent, and the trial that crosses the line still counts
  up to the line only (its result is used only when it ended inside the budget point).
  The whole daemon pays more: every CPU-second of its process tree (TreeMeter), see below.
- tasks: the embedded digits task (config/trainer/digits.yaml) and the procedural `shapes` task with
  the digits recipe unchanged (config/trainer/shapes.yaml; `count` reduced here so the benchmark fits
  on 2 cores). No default was tuned on shapes.
- methods, all in the offline policy's search space (loop/agents/offline.py, task-aware):
    offline policy   the loop's own Builder: a full baseline, successive-halving screens and
                     continuations from checkpoints, seed replicas, noise-aware keeps, cost model
    whole daemon     the same policy inside the real daemon, started as users do (`llmloop start`,
                     the shipped config/daemon_config.yaml: sandbox required, Mentor, evolution
                     windows, PHASE's daily window opened a minute before the start; only the
                     workspace, the trainer config and offline_seed changed). Charged the CPU of the
                     start command, the daemon and every process under it (runs with their start-up
                     and sandbox, PHASE, windows, gates), sampled each second; stopped (`llmloop
                     stop`) once that reaches the budget. Its trials: the runs index, each run at the
                     CPU the tree had spent when the run was judged; its best: its own kept best.
                     Also counted: failed runs by signature, duplicate runs (bench/night.py's rule),
                     CPU-s outside the runs' own `cpu_seconds`. Workspaces: bench/_work/search_daemon/.
    random search    the default config first, then uniform random points (full runs)
    Optuna TPE       TPESampler, 4 start-up trials (full runs)
    TPE + Hyperband  the same sampler with HyperbandPruner(min 1 epoch, reduction 3), pruning on
                     the per-epoch validation accuracy
- reported: at 4 budget points, the mean over seeds of the best full-fidelity validation accuracy
  (max over the runs that trained every epoch; the same rule for every method), its spread, and
  the number of kept improvements inside the noise: each time a method's best rose, was the rise
  a real gain under loop/verdict/noise.py's rule (paired McNemar on the same validation images,
  and above the seed band measured from the default config's three seeds)?

Run from the repo root: .venv/bin/python bench/search_efficiency.py [--task digits|shapes|both]
[--budget-scale 1.0]. Two tasks run as two processes at once (one core each).
Smoke size (tests/test_bench_smoke.py; no RESULTS.md or bench/_work write): add --smoke (one seed,
trials of at most 2 epochs at 16 px on a tenth of the split, 400 shapes, 0.5% of the budget: one to three
trials a method; the whole daemon, digits only, runs on past it until its first run is judged; 20 s wall).
One method: --methods "whole daemon".
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _results import machine_facts, smoke, spread, write_section  # noqa: E402
from night import duplicates, run_cpu_seconds  # noqa: E402

from loop.agents.ladder import resolve  # noqa: E402
from loop.agents.offline import PolicyInput, builder_decision  # noqa: E402
from loop.agents.space import TaskProfile, overlay_of, space_for  # noqa: E402
from loop.config import deep_merge, read_yaml, validate  # noqa: E402
from loop.cycle.watch import measured  # noqa: E402
from loop.domains import resolve_domain  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from loop.journal.history import HistoryReader, RunRecord  # noqa: E402
from loop.journal.metrics import RunMetrics  # noqa: E402
from loop.trainer.config import TrainerConfig  # noqa: E402
from loop.util.exiting import exit_process  # noqa: E402
from loop.util.workspace import Workspace  # noqa: E402
from loop.verdict.keeps import verdict_against_best  # noqa: E402
from loop.verdict.noise import Score, compare, pooled_seed_sd, unpack_correct  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
TASKS = {   # task -> (trainer config, domain args for the benchmark, budget in CPU-seconds)
    "digits": ("config/trainer/digits.yaml", {}, 240.0),
    "shapes": ("config/trainer/shapes.yaml", {"count": 2000}, 320.0),
}
POINTS = (0.25, 0.5, 0.75, 1.0)
METHODS = ("offline policy", "whole daemon", "random search", "Optuna TPE", "TPE + Hyperband")
KEEPERS = ("offline policy", "whole daemon")   # report their kept best (first, gains), not their highest score
DAEMON_POLL_S = 1.0          # how often the whole daemon's CPU-seconds are sampled
if smoke():      # spawned task workers see it too (the env var is inherited)
    SEEDS, TASKS["shapes"] = (0,), ("config/trainer/shapes.yaml", {"count": 400}, 320.0)


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
    kept: list[int] | None = None      # the loop's kept bests (first, gains), as trial indices
    notes: dict | None = None          # the whole daemon: its runs, failures, duplicates, overhead

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
        from loop.trainer.train import train  # here, not at the top: the parent process never trains

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
    """A config cut to under a CPU-second, over the method's own choice: 2 epochs, a screen stopping after
    1 (so a continuation still finds its checkpoint), 16 px, a tenth of the split."""
    run = config.get("run", {})
    shrink = {"epochs": min(run.get("epochs", 2), 2)}
    if run.get("stop_after_epochs"):
        shrink["stop_after_epochs"] = 1
    return deep_merge(config, {"run": shrink, "data": {"train_fraction": 0.1, "image_size": 16}})


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
        rec = measured(rec, metrics, base)
        verdict = verdict_against_best(history, rec)
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
    import optuna  # here, not at the top: only the task workers search (the parent imports less)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
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


# ------------------------------------------------------------ whole daemon ----

def daemon_search(task: Task, seed: int) -> Search:
    """The real daemon as users start it (`llmloop start`, the shipped config: sandbox, Mentor, evolution
    windows, PHASE's window open at the start), charged every CPU-second of its process tree and stopped
    once they reach the budget; its runs index read back as trials (bench/night.py's approach)."""
    work = (task.workdir if smoke() else REPO / "bench" / "_work" / "search_daemon") / f"{task.name}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for folder in (work, *work.parents[:2]):      # the sandbox user walks into the workspace
        if folder.stat().st_mode & 0o005 != 0o005:
            folder.chmod(folder.stat().st_mode | 0o005)
    (work / "trainer.yaml").write_text(yaml.safe_dump(deep_merge(task.base_for(seed), {"run": {"threads": 1}})))
    daemon = yaml.safe_load((REPO / "config" / "daemon_config.yaml").read_text())
    opened = dt.datetime.now() - dt.timedelta(minutes=1)
    daemon.update(workspace=str(work / "artifacts"), default_trainer_config=str(work / "trainer.yaml"),
                  offline_seed=seed)
    daemon["phase"].update(daily_start=opened.strftime("%H:%M"),
                           daily_end=(opened + dt.timedelta(hours=6)).strftime("%H:%M"))
    config = work / "daemon_config.yaml"
    config.write_text(yaml.safe_dump(daemon, sort_keys=False))
    ws, llmloop = Workspace(work / "artifacts"), [sys.executable, "-m", "loop.cli.main"]
    # ---- start: the `llmloop start` command's own CPU is charged too ----
    before = children_cpu()
    out = subprocess.run([*llmloop, "start", "--daemon-config", str(config)], cwd=REPO, capture_output=True,
                         text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"llmloop start failed: {out.stderr or out.stdout}")
    meter, started = TreeMeter(psutil.Process(int(ws.pid.read_text()))), time.monotonic()
    spent = base = children_cpu() - before
    # ---- run until the budget: each run costs what the tree had spent when it appeared in the index ----
    reader, ends, samples, why = HistoryReader(ws.runs_index), [], [], "budget"
    try:
        while True:
            new = len(reader.read()) - len(ends)       # read first: the sample is at or after the judgement
            spent = max(spent, base + meter.sample())
            ends += [spent] * new
            samples.append((round(time.monotonic() - started, 1), round(spent, 2)))
            if len(samples) % 60 == 0:
                print(f"{task.name} seed {seed} whole daemon: {spent:.0f} of {task.budget:.0f} CPU-s, {len(ends)} "
                      f"runs, {samples[-1][0] / 60:.0f} min", flush=True)
            if spent >= task.budget and (ends or not smoke()):   # a smoke run still waits for its first run
                break
            if not meter.alive() or time.monotonic() - started > 600 + 10 * task.budget:
                why = "wall limit" if meter.alive() else "the daemon exited"
                break
            time.sleep(DAEMON_POLL_S)
    finally:
        subprocess.run([*llmloop, "stop", "--daemon-config", str(config), "--wait", "300"], cwd=REPO,
                       capture_output=True, timeout=400)
        meter.kill()              # what the stop left behind (a run; the daemon itself past the wait)
    history = reader.read()
    ends += [float("inf")] * (len(history) - len(ends))    # judged after the stop: never inside the budget
    return daemon_record(task, ws, history, ends, samples, why)


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


class TreeMeter:
    """CPU-seconds (user + system) of a process and of every process ever under it. Each process seen is
    read every sample (alive or a zombie) as its own times plus its reaped children's. One that is gone
    leaves its last reading in the sum, unless its parent is still readable: that parent reaped it and
    holds its times now. (A sandbox's namespace init outlives its parent and is reaped by pid 1, so the
    daemon's own children times alone would miss every run.)"""

    def __init__(self, root: psutil.Process):
        self.root, self.procs, self.reading, self.gone = root, {root.pid: root}, {}, 0.0

    def sample(self) -> float:
        try:
            for proc in self.root.children(recursive=True):     # parents before their children
                if proc.pid not in self.procs:
                    self.procs[proc.pid] = proc
        except psutil.Error:
            pass
        readable, ended = set(), []
        for pid, proc in self.procs.items():
            try:
                if not proc.is_running():                       # ended and reaped (or its pid reused)
                    raise psutil.NoSuchProcess(pid)
                with proc.oneshot():
                    t, ppid = proc.cpu_times(), proc.ppid()
            except psutil.Error:
                ended.append(pid)
                continue
            readable.add(pid)
            self.reading[pid] = (t.user + t.system + t.children_user + t.children_system, ppid)
        for pid in ended:
            del self.procs[pid]
            cpu, ppid = self.reading.pop(pid, (0.0, None))
            self.gone += 0.0 if ppid in readable else cpu      # else its reaper (pid 1) is not ours
        return self.gone + sum(cpu for cpu, _ in self.reading.values())

    def alive(self) -> bool:
        try:
            return self.root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def kill(self) -> None:
        for proc in self.procs.values():
            try:
                proc.kill()                # psutil checks the start time: never a reused pid
            except psutil.Error:
                pass


def daemon_record(task: Task, ws: Workspace, history: list[RunRecord], ends: list[float],
                  samples: list[tuple[float, float]], why: str) -> Search:
    """The daemon's runs index as a search: one trial per finished run, in order; its own kept best;
    failures, duplicates and the CPU-seconds spent outside its training runs."""
    search = Search(task.budget, spent=samples[-1][1] if samples else 0.0)
    for r, end in zip(history, ends):
        try:
            ev = json.loads((Path(r.run_dir) / "metrics.json").read_text()).get("eval") or {}
        except (OSError, ValueError):
            ev = {}
        correct = unpack_correct(ev.get("correct"), ev.get("count")) if r.ok else None
        search.trials.append(Trial(end, r.score if r.ok else 0.0, r.ok and r.full,
                                   correct.tolist() if correct is not None else None))
    search.kept = [i for i, r in enumerate(history) if r.verdict in ("first", "gain")]
    inside = [r for r, end in zip(history, ends) if end <= task.budget]
    cycles = [e for e in EventLog(ws.events) if e["kind"] == "cycle"]
    replicas = {e["decision"]["run_label"] for e in cycles if (e.get("decision") or {}).get("replica_of")}
    dups, failed = duplicates(inside, replicas), [r for r in inside if not r.ok]
    last = max((end for end in ends if end <= task.budget), default=0.0)
    run_cpu = sum(map(run_cpu_seconds, inside))
    search.notes = {
        "runs": len(inside), "failed": len(failed), "stopped_by": why,
        "cycles": max((r.cycle for r in inside), default=0),
        "failures": dict(Counter(f"{(r.failure or {}).get('exc_type', '?')}: {(r.failure or {}).get('message', '')}"
                                 f" ({(r.failure or {}).get('category', '?')})" for r in failed)),
        "duplicates": len(dups), "duplicate_cpu_s": round(sum(map(run_cpu_seconds, dups)), 1),
        "run_cpu_s": round(run_cpu, 1), "cpu_s_at_last_run": round(last, 1),
        "outside_runs_cpu_s": round(last - run_cpu, 1),    # up to the last run inside the budget
        "phase_runs": sum(1 for e in EventLog(ws.events) if e["kind"] == "phase_integration"),   # till the stop
        "evolution_windows": sum(1 for e in cycles if e.get("evolution")),
        "wall_s": samples[-1][0] if samples else 0.0, "samples": samples}
    return search


def run_method(task: Task, method: str, seed: int) -> Search:
    return {"offline policy": lambda: offline_search(task, seed),
            "whole daemon": lambda: daemon_search(task, seed),
            "random search": lambda: random_search(task, seed),
            "Optuna TPE": lambda: tpe_search(task, seed),
            "TPE + Hyperband": lambda: tpe_search(task, seed, hyperband=True)}[method]()


# ----------------------------------------------------------------- summary ----

def best_at(search: Search, point: float, kept_only: bool = True) -> float:
    """The best a method reports at `point`: the loop's kept best (a tie or a replica that
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


def methods_for(task: str) -> tuple[str, ...]:
    """The methods a task runs. A smoke run starts the whole daemon for digits only: its code is the
    same for both tasks, and a second daemon with its sandboxed run cost a quarter of the smoke's CPU."""
    if smoke() and task != "digits":
        return tuple(m for m in METHODS if m != "whole daemon")
    return METHODS


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
                pairs = offline_kept_pairs(search) if method in KEEPERS else rises(search)
                queue.put((name, method, seed, [t.__dict__ for t in search.trials], search.budget,
                           [(a.__dict__, b.__dict__) for a, b in pairs], search.kept, search.notes))
                print(f"{name} seed {seed} {method}: {len(search.trials)} trials, best "
                      f"{best_at(search, search.budget):.4f}, {time.time() - t0:.0f} s wall", flush=True)
    gc.freeze()     # the exit skips the collector's walk over everything torch made (loop/util/exiting.py)


def main() -> None:
    global METHODS
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="both", choices=["digits", "shapes", "both"])
    ap.add_argument("--budget-scale", type=float, default=0.005 if smoke() else 1.0)
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
    procs = [ctx.Process(target=task_worker, args=(n, queue, methods_for(n), args.budget_scale)) for n in names]
    for p in procs:
        p.start()
    results: dict[tuple[str, str], list] = {}
    expected = sum(len(methods_for(n)) for n in names) * len(SEEDS)
    while len([v for vs in results.values() for v in vs]) < expected:
        try:
            name, method, seed, trials, budget, pairs, kept, notes = queue.get(timeout=5)
        except Empty:       # a worker that died sends nothing more: stop instead of waiting forever
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"a task worker failed (exit codes {dead}); its traceback is above") from None
            continue
        search = Search(budget, trials=[Trial(**t) for t in trials], kept=kept, notes=notes)
        results.setdefault((name, method), []).append((seed, search, [(Trial(**a), Trial(**b)) for a, b in pairs]))
    for p in procs:
        p.join()
    if not smoke():     # a smoke run keeps nothing
        raw = REPO / "bench" / "_work" / f"{args.section}.json"     # the trials, for later merges and checks
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps([{"task": n, "method": m, "seed": seed, "budget": s.budget, "kept": s.kept,
                                    "notes": s.notes, "trials": [t.__dict__ for t in s.trials]}
                                   for (n, m), runs in results.items()
                                   for seed, s, _ in runs]))
    write(results, names, facts, time.time() - t0, args.section)


def daemon_line(n: dict) -> str:
    share = n.get("outside_runs_cpu_s", 0) / n["cpu_s_at_last_run"] if n.get("cpu_s_at_last_run") else 0.0
    fails = "; ".join(f"{k} x{v}" for k, v in (n.get("failures") or {}).items())
    return (f"{n.get('runs')} runs in {n.get('cycles')} cycles, {n.get('failed')} failed" + (f" ({fails})" if fails
            else "") + f", {n.get('duplicates')} duplicates ({n.get('duplicate_cpu_s')} CPU-s), "
            f"{n.get('run_cpu_s')} CPU-s in runs, {n.get('outside_runs_cpu_s')} outside them ({share:.0%} of "
            f"{n.get('cpu_s_at_last_run')}); till the stop: PHASE {n.get('phase_runs')}, evolution windows "
            f"{n.get('evolution_windows')}, {n.get('wall_s', 0) / 60:.1f} min wall, stopped by {n.get('stopped_by')}")


def mean_sd(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}"


def write(results: dict, names: list[str], facts: str, seconds: float, section: str = "search_efficiency") -> None:
    parts = [f"Compute-matched: every method gets the same training CPU-seconds per task and seed (one torch "
             f"thread per trial); seeds {list(SEEDS)}; budget points at {', '.join(f'{p:.0%}' for p in POINTS)} "
             f"of the budget. Total {seconds / 60:.0f} min wall, two tasks in parallel."]
    if "whole daemon" in METHODS:
        parts.append("\nThe whole daemon is charged more than the training: the CPU-seconds of its whole process "
                     "tree (the `llmloop start` command, the daemon, every run with its interpreter start-up and "
                     "its bubblewrap sandbox, PHASE, the Mentor, evolution windows, gates and archive), sampled "
                     "every second; the other methods pay only the CPU of their in-process training calls. A run "
                     "costs what the tree had spent when the run entered the runs index.")
    for name in names:
        path, dargs, budget = TASKS[name]
        # the default config at each seed: random search's first trial (the offline policy's baseline
        # when random search did not run)
        first = next((m for m in ("random search", *KEEPERS) if (name, m) in results), "offline policy")
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
            if not runs:             # not run for this task (a smoke run's shapes: no whole daemon)
                continue
            cells = []
            for p in POINTS:
                cells.append(mean_sd([best_at(s, p * budget) for _, s, _ in runs]))
            finals = [best_at(s, budget) for _, s, _ in runs]
            trials = statistics.mean(len(s.trials) for _, s, _ in runs) if runs else 0
            kept = sum(len(pairs) for _, _, pairs in runs)
            noisy = sum(inside_noise(pairs, sd) for _, _, pairs in runs)
            rows.append(f"| {method} | " + " | ".join(cells) + f" | {trials:.1f} | {noisy} of {kept} | "
                        f"{spread(finals)} |")
            if method in KEEPERS and runs:     # its highest score, tie or not: the others' rule
                cells = [mean_sd([best_at(s, p * budget, kept_only=False) for _, s, _ in runs]) for p in POINTS]
                highest = [best_at(s, budget, kept_only=False) for _, s, _ in runs]
                rows.append(f"| {method}, highest score (ties included) | " + " | ".join(cells)
                            + f" | | | {spread(highest)} |")
        parts.append("\nMean ± std over seeds of the best full-fidelity validation accuracy at each budget point (the "
                     "offline policy and the whole daemon: their kept best, the model they report; the others: "
                     "their highest score):\n")
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
        daemon = sorted(results.get((name, "whole daemon"), []), key=lambda x: x[0])
        if daemon:
            parts.append("\nThe whole daemon's runs inside the budget, per seed (failed: by signature; duplicates: a "
                         "recipe trained again, neither a continuation nor a declared seed replica; outside the runs: "
                         "CPU-s up to its last run inside the budget less the runs' own `cpu_seconds`):\n"
                         + "\n".join(f"- seed {seed}: " + daemon_line(s.notes or {}) for seed, s, _ in daemon))
        parts.append(f"\nNoise band used for 'inside the noise': paired McNemar (p < 0.05) on the "
                     f"{count} validation images, and the seed band 1.96·√2·sd with sd "
                     f"{sd if sd is not None else float('nan'):.4f} from the default config's 3 seeds. For the "
                     "offline policy and the whole daemon the rises counted are their kept gains; for the others, "
                     "every rise of the best.")
    body = "\n".join(parts) + "\n"
    print(body)
    write_section(section, body, facts)


if __name__ == "__main__":
    main()
    exit_process(0)
