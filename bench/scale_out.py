"""Scale-out: the same 6 short candidate trainings run bare, on the local executor with 1 and 2 device
slots, and on a 2-node local Ray cluster.

Each task is `python -m loop.trainer --config tiny.yaml --out DIR` (digits, 16 px, 20% of the train
split, resnet10t, 2 epochs, its own seed). For every task: its wall time from start to exit as the
executor saw it, and the trainer's own `walltime_seconds` (metrics.json: the epochs, validation and
writing, not Python start-up and imports). A task's overhead is wall minus trainer time; the
executor's overhead per task is that figure's median minus the bare runs' median (bare: the same
command as a plain subprocess, one at a time, no sandbox, no executor). Target: < 1 s per task, or
< 5% of the task's training time.

  bare        plain subprocesses, one after another (OMP_NUM_THREADS=2)
  local x1    the local executor in the real sandbox, 1 CPU slot of 2 threads
  local x2    the same with 2 CPU slots of 1 thread (two tasks at once)
  ray         the Ray executor on a 2-node local cluster (ray.cluster_utils.Cluster, 1 CPU per node),
              num_cpus_per_run 1, shared storage

Cycle cost: a daemon (`max_concurrent_runs: 4`, 4 CPU slots) with 4 runs in flight (sleeping
processes started through the executor, so only the daemon's own work is timed) runs CYCLES follow
cycles with a 1 s monitor window; a cycle's own cost is its duration less that window (state and
events written, every run polled, the heartbeat). Target: < 50 ms.

Run from the repo root: .venv/bin/python bench/scale_out.py
Smoke size (tests/test_bench_smoke.py; needs Ray; no RESULTS.md write): add --smoke (1 task of
1 epoch on 10% of the split per mode, 2 follow cycles).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loop.config import DaemonConfig, ExecutorConfig, validate  # noqa: E402
from loop.journal.metrics import RunMetrics  # noqa: E402
from loop.run.local_executor import LocalExecutor  # noqa: E402
from loop.run.plan import RunPlan  # noqa: E402
from loop.run.sandbox_setup import load_sandbox  # noqa: E402
from loop.run.slots import SlotPool, plan_slots  # noqa: E402
from loop.run.supervise import exit_code, run_all  # noqa: E402
from loop.util.exiting import exit_process  # noqa: E402

TASKS = 6
CYCLES = 10
EPOCHS, FRACTION = 2, 0.2     # each task's training; share of the digits train split
if "--smoke" in sys.argv:
    TASKS, CYCLES, EPOCHS, FRACTION = 1, 2, 1, 0.1


def tiny_config(folder: Path, seed: int) -> Path:
    """The task's trainer config, inside its run folder (the one folder a sandboxed run is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"domain": "digits", "image_size": 16, "batch_size": 32, "train_fraction": FRACTION},
        "model": {"name": "resnet10t"}, "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0}, "run": {"seed": seed, "epochs": EPOCHS}}))
    return path


def plans(folder: Path, mode: str) -> list[RunPlan]:
    out = []
    for i in range(TASKS):
        run_dir = folder / mode / f"task{i}"
        argv = [sys.executable, "-m", "loop.trainer", "--config", str(tiny_config(run_dir, i)), "--out",
                str(run_dir / "out")]
        out.append(RunPlan(f"task{i}", mode, "train", argv, run_dir, 600, None))
    return out


def trainer_seconds(run_dir: Path) -> float:
    return RunMetrics.read(run_dir / "out").walltime_seconds


def bare(folder: Path) -> dict:
    rows, t0 = [], time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    for p in plans(folder, "bare"):
        t = time.perf_counter()
        subprocess.run(p.argv, cwd=ROOT, env=env, check=True, capture_output=True)
        rows.append((time.perf_counter() - t, trainer_seconds(p.run_dir)))
    return {"total": time.perf_counter() - t0, "rows": rows}


def through(executor, folder: Path, mode: str, parallel: int) -> dict:
    finished = {}
    t0 = time.perf_counter()
    status = run_all(executor, plans(folder, mode), parallel, poll_seconds=0.05,
                     on_finish=lambda run, st: finished.__setitem__(run.label, (run, time.time())))
    total = time.perf_counter() - t0
    assert all(s == "finished" for s in status.values()), status
    bad = {run.label: exit_code(run) for run, _ in finished.values() if exit_code(run) != 0}
    assert not bad, f"{mode}: runs failed {bad}; see {folder / mode}/*/run.log"
    rows = [(end - run.started_at, trainer_seconds(Path(run.run_dir))) for run, end in finished.values()]
    return {"total": total, "rows": rows}


def local(folder: Path, slots: int) -> dict:
    cfg = validate(DaemonConfig, {"workspace": str(folder / "ws"), "sandbox": "optional"}, "<scale_out>")
    ex = LocalExecutor(ROOT, load_sandbox(cfg, ROOT, folder / "ws"),
                  SlotPool(folder / f"slots{slots}", plan_slots("auto", slots, gpus=0, cpus=2)))
    return through(ex, folder, f"local{slots}", slots)


def ray_cluster(folder: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from loop.run.ray_executor import RayExecutor

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        cfg = validate(DaemonConfig, {"workspace": str(folder / "ws"), "sandbox": "optional"}, "<scale_out>")
        ex = RayExecutor(ExecutorConfig(kind="ray", address=cluster.address, namespace="bench"), ROOT,
                         folder / "ws", load_sandbox(cfg, ROOT, folder / "ws"))
        return through(ex, folder, "ray", TASKS)
    finally:
        ray.shutdown()
        cluster.shutdown()


def cycle_cost(folder: Path) -> list[float]:
    from loop.cycle.cycle import run_cycle
    from loop.cycle.state import LoopState
    from loop.daemon.process import build_loop, workspace_of

    cfg = validate(DaemonConfig, {"workspace": str(folder / "cyc"), "sandbox": "optional", "max_concurrent_runs": 4,
                                  "cpu_slots": 4, "default_monitor_seconds": 1, "phase": {"schedule": "off"},
                                  "evo_period_cycles": 999, "stale_orphan_idle_cycles": 999}, "<scale_out>")
    ws = workspace_of(cfg)
    ws.ensure()
    loop = build_loop(cfg, ws, lambda: False, lambda *_: None)
    state = LoopState()
    for i in range(4):
        plan = RunPlan(f"sleeper{i}", "cyc", "command", ["sleep", "600"], ws.root / "runs" / f"sleeper{i}", None, None)
        state.active_runs.append(loop.runner().submit(plan, 0))
    costs = []
    try:
        for _ in range(CYCLES):
            t0 = time.perf_counter()
            state = run_cycle(loop, state)
            costs.append(time.perf_counter() - t0 - 1.0)
        assert len(state.active_runs) == 4
    finally:
        for run in state.active_runs:
            loop.runner().kill(run)
    return costs


def summary(name: str, got: dict, bare_overhead: float | None) -> str:
    walls = [w for w, _ in got["rows"]]
    overhead = statistics.median(w - t for w, t in got["rows"])
    train = statistics.median(t for _, t in got["rows"])
    extra = ""
    if bare_overhead is not None:
        more = overhead - bare_overhead
        extra = f", executor overhead per task **{more:+.2f} s** ({more / train:+.1%} of its training time)"
    return (f"- {name}: total {got['total']:.1f} s for {TASKS} tasks; per task wall median "
            f"{statistics.median(walls):.1f} s, trainer time median {train:.1f} s, start-up and teardown "
            f"(wall - trainer) median {overhead:.2f} s{extra}")


def main() -> None:
    from _results import machine_facts, write_section

    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)      # the sandbox user reads the task configs kept here
        results = {"bare": bare(folder), "local, 1 slot": local(folder, 1), "local, 2 slots": local(folder, 2),
                   "ray, 2 nodes": ray_cluster(folder)}
    base = statistics.median(w - t for w, t in results["bare"]["rows"])
    lines = [summary(name, got, None if name == "bare" else base) for name, got in results.items()]
    with tempfile.TemporaryDirectory(prefix="scale-out-cycle-") as cyc:
        costs = cycle_cost(Path(cyc))
    lines.append(f"- daemon follow cycle with 4 runs in flight, own cost (duration - the 1 s monitor window) over "
                 f"{CYCLES} cycles: median **{statistics.median(costs) * 1000:.0f} ms**, "
                 f"max {max(costs) * 1000:.0f} ms (target < 50 ms)")
    body = "\n".join(lines)
    print(body)
    write_section("scale_out", body, facts)


if __name__ == "__main__":
    main()
    exit_process(0)     # no collector walk over everything torch made at the exit
