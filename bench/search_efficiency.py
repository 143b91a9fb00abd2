"""Search efficiency: the offline policy vs random search vs Optuna TPE on the digits domain, with
the same budget of trials, 3 seeds each; best validation accuracy after N trials.

All three search the same space (loop/agents/offline.py SPACE: augmentation preset, image size,
sampling strategy, label smoothing, model, optimizer, epochs). Every trial is a real training run
through the shared trainer, made cheap so the benchmark fits on 2 CPU cores: the whole training
split and a third of the configured epochs (at least 2). The offline policy is fed its own history
exactly as the daemon feeds it; random search draws each parameter uniformly; TPE is Optuna's
TPESampler with 4 start-up trials. Same seeds (0, 1, 2) for every method.

Run from the repo root: .venv/bin/python bench/search_efficiency.py [TRIALS]
"""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
import torch  # noqa: E402
from _results import machine_facts, spread, write_section  # noqa: E402

from loop.agents.offline import SPACE, PolicyInput, RunRecord, builder_decision, overlay_of  # noqa: E402
from loop.config import deep_merge, read_yaml, validate  # noqa: E402
from loop.domains import resolve_domain  # noqa: E402
from loop.trainer.config import TrainerConfig  # noqa: E402
from loop.trainer.train import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = read_yaml(REPO / "config/trainer/digits.yaml")
SEEDS = (0, 1, 2)
DOMAIN = resolve_domain("digits")


def cheap(config: dict, seed: int) -> dict:
    epochs = config.get("run", {}).get("epochs", 10)
    return deep_merge(config, {"data": {"train_fraction": 1.0},
                               "run": {"epochs": max(2, epochs // 3), "seed": seed, "threads": 2,
                                       "log_every_steps": 1000},
                               "budget": {"max_walltime_minutes": 5}})


def evaluate(config: dict, seed: int, workdir: Path) -> float:
    cfg = validate(TrainerConfig, cheap(config, seed), "bench")
    out = Path(tempfile.mkdtemp(dir=workdir))
    try:
        return train(cfg, out, domain=DOMAIN).eval.accuracy
    except Exception as exc:          # a failed trial scores 0, as in the loop
        print(f"trial failed: {exc}")
        return 0.0


def offline_search(n: int, seed: int, workdir: Path) -> list[float]:
    history, scores = [], []
    for cycle in range(1, n + 1):
        d = builder_decision(PolicyInput(cycle, list(history)), seed=seed)
        config = deep_merge(BASE, d.train_overlay)
        score = evaluate(config, seed, workdir)
        history.append(RunRecord(d.run_label, cycle, config, score > 0, score, d.strategy_dimension))
        scores.append(score)
    return scores


def random_search(n: int, seed: int, workdir: Path) -> list[float]:
    rng = random.Random(seed)
    return [evaluate(deep_merge(BASE, overlay_of({p: rng.choice(c) for p, c in SPACE.values()})), seed, workdir)
            for _ in range(n)]


def tpe_search(n: int, seed: int, workdir: Path) -> list[float]:
    scores = []

    def objective(trial):
        params = {p: trial.suggest_categorical(p, c) for p, c in SPACE.values()}
        scores.append(evaluate(deep_merge(BASE, overlay_of(params)), seed, workdir))
        return scores[-1]

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    study.optimize(objective, n_trials=n)
    return scores


def best_after(scores: list[float], k: int) -> float:
    return max(scores[:k])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    facts = machine_facts()
    torch.set_num_threads(2)
    methods = {"offline policy": offline_search, "random search": random_search, "Optuna TPE": tpe_search}
    results: dict[str, list[list[float]]] = {m: [] for m in methods}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            for name, fn in methods.items():      # interleaved: each seed runs all three methods
                results[name].append(fn(n, seed, Path(tmp)))
                print(f"seed {seed} {name}: {['%.3f' % s for s in results[name][-1]]}", flush=True)
    checkpoints = sorted({2, n // 2, n})
    rows = []
    for name, runs in results.items():
        cells = [f"{statistics.mean(best_after(r, k) for r in runs):.4f}" for k in checkpoints]
        finals = [best_after(r, n) for r in runs]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {spread(finals)} |")
    per_seed = "\n".join(f"- seed {s}: " + ", ".join(f"{m} {best_after(results[m][i], n):.4f}" for m in methods)
                         for i, s in enumerate(SEEDS))
    body = f"""
Budget: {n} trials per method per seed, seeds {list(SEEDS)}; each trial a real training run
(the whole train split, a third of the configured epochs, at least 2). Total {time.time() - t0:.0f} s.

Mean over seeds of the best validation accuracy after k trials:

| method | {" | ".join(f"k={k}" for k in checkpoints)} | best after {n}: spread over seeds |
|---|{"---|" * len(checkpoints)}---|
{chr(10).join(rows)}

Per seed (best after {n}):
{per_seed}
"""
    print(body)
    write_section("search_efficiency", body, facts)


if __name__ == "__main__":
    main()
