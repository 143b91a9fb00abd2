"""What a run's process costs around its training: the trainer's imports and its exit (CPU).

Every daemon cycle starts a fresh `python -m loop.trainer` in the sandbox; on the tiny configs the
test suite trains (a few hundred 16-px images) the training is under a second and the process
around it is the cost. Each figure is the child's CPU seconds (user + sys, from getrusage), paired
rounds in one process, the side going first alternating; the headline is the median paired ratio.

  imports  `import loop.trainer.train` (what the trainer imports now) against the same plus
           `sklearn.model_selection` and `scipy.stats`, which it imported until the stratified
           draws moved to loop/domains/split.py and noise.py imported scipy where it tests.
  exit     `import torch, timm`, one forward and backward pass of resnet10t, then `sys.exit(0)`
           against the same ending through loop/util/exiting.py (the collector's generations
           frozen first, so shutdown does not walk every object torch made).
  run      one whole trainer process as the daemon starts it (digits, the tiny test config: 5% of
           the split, 16 px, 1 epoch, one thread): its CPU seconds and wall seconds, for scale.

Run from the repo root: .venv/bin/python bench/startup.py [--rounds 5]
Smoke size (tests/test_bench_smoke.py; no RESULTS.md write): add --smoke (one round of each pair
with the torch work left out of both sides, one trainer run).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _results import machine_facts, smoke, spread, write_section  # noqa: E402

WORK = ("import torch, timm\n"
        "m = timm.create_model('resnet10t', num_classes=10)\n"
        "m(torch.zeros(2, 3, 16, 16)).sum().backward()\n")
PAIRS = {
    "imports": ("import loop.trainer.train",
                "import loop.trainer.train, sklearn.model_selection, scipy.stats"),
    "exit": (WORK + "from loop.util.exiting import exit_process\nexit_process(0)",
             WORK + "import sys\nsys.exit(0)"),
}
if smoke():      # the pairs' machinery and the trainer run, without four more torch imports
    PAIRS = {name: tuple(code.replace(WORK, "").replace("loop.trainer.train", "loop.util.exiting")
                         for code in pair) for name, pair in PAIRS.items()}
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def child_cpu(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process run to its end."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, check=True, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            time.perf_counter() - started)


def paired(now: str, before: str, rounds: int) -> tuple[list[float], list[float]]:
    """CPU seconds of `now` and of `before`, `rounds` pairs, the side going first alternating."""
    mine, theirs = [], []
    for r in range(rounds):
        order = [(now, mine), (before, theirs)]
        for code, into in (order if r % 2 == 0 else order[::-1]):
            into.append(child_cpu([sys.executable, "-c", code])[0])
    return mine, theirs


def tiny_run(work: Path, n: int) -> tuple[float, float]:
    config = {"data": {"domain": "digits", "image_size": 16, "batch_size": 32, "train_fraction": 0.05},
              "model": {"name": "resnet10t"}, "run": {"epochs": 1, "seed": 1, "threads": 1}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    return child_cpu([sys.executable, "-m", "loop.trainer", "--config", str(work / "tiny.yaml"),
                      "--out", str(work / f"out{n}")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one round of each pair, nothing written")
    args = ap.parse_args()
    rounds = 1 if smoke() else args.rounds
    facts = machine_facts()
    rows = []
    for name, (now, before) in PAIRS.items():
        mine, theirs = paired(now, before, rounds)
        ratios = [a / b for a, b in zip(mine, theirs)]
        rows.append(f"| {name} | {statistics.median(mine):.2f} | {statistics.median(theirs):.2f} | "
                    f"{statistics.median(ratios):.2f} ({spread(ratios)}) |")
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        runs = [tiny_run(Path(tmp), n) for n in range(rounds)]
    cpu, wall = statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)
    body = (f"{rounds} paired rounds; CPU seconds of the child (user + sys), medians; ratio = now / before, "
            "the median of the paired ratios (its spread).\n\n"
            "| | now (CPU-s) | before (CPU-s) | ratio |\n|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nA whole tiny trainer process (digits, 5%, 16 px, 1 epoch, one thread): {cpu:.2f} CPU-s, "
            f"{wall:.2f} s wall (median of {rounds}).\n")
    print(body)
    write_section("startup", body, facts)


if __name__ == "__main__":
    main()
