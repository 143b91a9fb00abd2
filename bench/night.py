"""The whole night, measured: the real daemon, started as the README says (`llmloop start` in the
background, the shipped config/daemon_config.yaml: sandbox required, Mentor, evolution windows,
finish-up), on three tasks of real size, and what became of its compute.

- tasks (each in its own workspace, one after the other):
    digits          the embedded default, config/trainer/digits.yaml as shipped
    shapes_folder   the shapes task written to disk as 7,200 PNG files in class folders (written class
                    by class, as a copy would: file times follow the class), augmentation on, so the
                    trainer starts loader workers (over 4,096 training images); config/trainer/shapes.yaml
                    pointed at it (`domain: image_folder`)
    shapes_csv      the same images as a CSV (`domain: csv_labels`, its `age` column the render order)
- changed from the shipped daemon config, and only this: `workspace`, `default_trainer_config`, and
  PHASE's daily window set to open a minute before the start (as on the night whose PHASE narrowed
  the search to the baseline). The short tier also caps each run at 2 minutes (the trainer
  config's `budget.max_walltime_minutes`) and trains at 16 px, so a few minutes hold several runs.
- size: `--minutes M` (finish-up scheduled with `--run-hours`, as scripts/startup.sh does) or
  `--cycles N` (finish-up requested once cycle N-1 is done, as `scripts/request_finishup.sh` does);
  the daemon stops by itself once finish-up has written the reports.
- reported per task: cycles, runs, failed runs by signature (infrastructure ones apart), duplicate
  runs (a configuration trained again that was neither a continuation nor a declared seed replica)
  and the CPU-seconds they cost, kept gains (and how many of them lie inside the noise), the final
  kept best against the baseline with 95% Wilson intervals, blocked events, PHASE and evolution
  windows run, and whether finish-up wrote the final report.

Run from the repo root:
  .venv/bin/python bench/night.py --tier full --minutes 40             # figures for RESULTS.md
  .venv/bin/python bench/night.py --tier short --tasks shapes_folder   # a few minutes
  .venv/bin/python bench/night.py --tier short --tasks shapes_folder --cycles 3 --epochs 1   # the test suite's
  .venv/bin/python bench/night.py --smoke                              # digits, 2 cycles, no RESULTS.md write
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from _results import machine_facts, smoke, write_section  # noqa: E402
from filelock import FileLock, Timeout  # noqa: E402

from loop.cycle.state import LoopState  # noqa: E402
from loop.daemon.process import running_pid  # noqa: E402
from loop.domains.shapes import write_shapes_files  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from loop.journal.history import RunRecord, read_history  # noqa: E402
from loop.journal.metrics import metrics_or_none  # noqa: E402
from loop.util.workspace import Workspace  # noqa: E402
from loop.verdict.keeps import incumbent, inside_noise  # noqa: E402
from loop.verdict.noise import wilson  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLMLOOP = [sys.executable, "-m", "loop.cli.main"]
TASKS = ("digits", "shapes_folder", "shapes_csv")
SHAPES_FILES = 7200          # 4,536 training images: past the 4,096 where loader workers start
SHORT_RUN_CAP_MINUTES = 2.0  # the short tier's per-run walltime cap


# ------------------------------------------------------------------ set-up ----

def task_trainer(task: str, data: Path, tier: str, epochs: int | None = None) -> dict:
    """The shipped recipe for the task, pointed at its files (its epochs replaced by `epochs` if given)."""
    source = "digits.yaml" if task == "digits" else "shapes.yaml"
    trainer = yaml.safe_load((REPO / "config" / "trainer" / source).read_text())
    if task == "shapes_folder":
        root = write_shapes_files(data / "folder", count=SHAPES_FILES)
        trainer["data"].update(domain="image_folder", domain_args={"root": str(root)})
    elif task == "shapes_csv":
        csv = write_shapes_files(data / "csv", count=SHAPES_FILES, layout="csv")
        trainer["data"].update(domain="csv_labels", domain_args={"csv": str(csv), "images": str(csv.parent / "images"),
                                                                 "age_column": "age"})
    if tier == "short":          # minutes, not hours: each run capped short, on 16-px images
        trainer.setdefault("budget", {})["max_walltime_minutes"] = SHORT_RUN_CAP_MINUTES
        trainer["data"]["image_size"] = 16
    if epochs is not None:
        trainer["run"]["epochs"] = epochs
    if smoke():
        trainer["data"]["train_fraction"] = 0.2
        trainer["run"]["epochs"] = 2
    return trainer


def prepare(task: str, work: Path, data: Path, tier: str, epochs: int | None = None) -> Path:
    """A fresh workspace and the two configs; returns the daemon config's path."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    trainer_path = work / "trainer.yaml"
    trainer_path.write_text(yaml.safe_dump(task_trainer(task, data, tier, epochs), sort_keys=False))
    daemon = yaml.safe_load((REPO / "config" / "daemon_config.yaml").read_text())
    opened = dt.datetime.now() - dt.timedelta(minutes=1)
    daemon.update(workspace=str(work / "artifacts"), default_trainer_config=str(trainer_path))
    daemon["phase"].update(daily_start=opened.strftime("%H:%M"),
                           daily_end=(opened + dt.timedelta(hours=6)).strftime("%H:%M"))
    path = work / "daemon_config.yaml"
    path.write_text(yaml.safe_dump(daemon, sort_keys=False))
    return path


def readable_data_folder(data: Path) -> None:
    """The sandbox user reads the task's files: the data folder and its parents must let it in."""
    data.mkdir(parents=True, exist_ok=True)
    for folder in [data, *data.parents]:
        if folder == Path("/"):
            break
        if folder.stat().st_mode & 0o005 != 0o005 and folder.is_relative_to(REPO):
            folder.chmod(folder.stat().st_mode | 0o005)


# ------------------------------------------------------------------ the night ----

def llmloop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMLOOP, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def night(config: Path, ws: Workspace, minutes: float | None, cycles: int | None, limit_minutes: float) -> dict:
    """Start the daemon in the background, let it run, request finish-up when a cycle count is the
    size, wait until it has stopped by itself (or kill it at `limit_minutes`)."""
    started = time.monotonic()
    args = ["start", "--daemon-config", str(config), "--finishup-note", "bench/night.py"]
    if minutes is not None:
        args += ["--run-hours", f"{minutes / 60:.4f}", "--finishup-minutes", f"{max(1.5, minutes / 5):.1f}"]
    out = llmloop(*args)
    if out.returncode != 0:
        raise SystemExit(f"llmloop start failed: {out.stderr or out.stdout}")
    requested = False
    while True:
        time.sleep(5)      # read in this process: `llmloop status` every 5 s would cost a core's tenth
        if running_pid(ws) is None:
            break
        if cycles is not None and not requested and LoopState.load(ws.state).cycle >= cycles - 1:
            llmloop("finishup", "--daemon-config", str(config), "--minutes-left", "6")
            requested = True
        if time.monotonic() - started > limit_minutes * 60:
            llmloop("stop", "--daemon-config", str(config), "--wait", "600", timeout=700)
            return {"seconds": round(time.monotonic() - started, 1), "stopped_by_bench": True}
    return {"seconds": round(time.monotonic() - started, 1), "stopped_by_bench": False}


# ------------------------------------------------------------------ figures ----

def run_cpu_seconds(record: RunRecord) -> float:
    metrics = metrics_or_none(record.run_dir) if record.run_dir else None
    return metrics.cpu_seconds if metrics else 0.0


def duplicates(history: list[RunRecord], replicas: set[str]) -> list[RunRecord]:
    """Runs that trained a recipe an earlier run trained, being neither a continuation nor a declared
    seed replica: what the loop should never spend compute on."""
    seen: set[str] = set()
    out = []
    for r in history:
        resume = (r.config.get("run") or {}).get("resume_from") if r.config else None
        key = r.recipe or r.fingerprint
        if resume or not key:
            continue
        if key in seen and r.label not in replicas:
            out.append(r)
        seen.add(key)
    return out


def interval(record: RunRecord | None) -> str:
    if record is None:
        return "-"
    ci = wilson(record.score, record.val_count)
    return f"{record.score:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def figures(ws: Workspace, run: dict) -> dict:
    history = read_history(ws)
    events = list(EventLog(ws.events))
    cycles = [e for e in events if e["kind"] == "cycle"]
    replicas = {e["decision"]["run_label"] for e in cycles
                if (e.get("decision") or {}).get("replica_of")}
    failed = [r for r in history if not r.ok]
    signatures = Counter(f"{(r.failure or {}).get('exc_type', '?')}: {(r.failure or {}).get('message', '')} "
                         f"[{r.signature}] ({(r.failure or {}).get('category', '?')})" for r in failed)
    dups = duplicates(history, replicas)
    baseline = next((r for r in history if r.ok and r.full), None)
    best = incumbent(history)
    finish = json.loads(ws.finish_up.read_text()) if ws.finish_up.exists() else {}
    report = ws.reports / "final_paper_report.md"
    return {
        **run, "cycles": len(cycles), "runs": len(history), "ok": sum(r.ok for r in history),
        "full": sum(r.ok and r.full for r in history), "failed": len(failed),
        "infrastructure_failures": sum((r.failure or {}).get("category") == "infrastructure" for r in failed),
        "failures_by_signature": dict(signatures),
        "duplicates": [r.label for r in dups], "duplicate_cpu_seconds": round(sum(map(run_cpu_seconds, dups)), 1),
        "run_cpu_seconds": round(sum(map(run_cpu_seconds, history)), 1),
        "distinct_recipes": len({r.recipe for r in history if r.recipe}),
        "kept_gains": sum(r.verdict == "gain" for r in history), "gains_inside_noise": len(inside_noise(history)),
        "baseline": interval(baseline), "baseline_label": baseline.label if baseline else None,
        "best": interval(best), "best_label": best.label if best else None,
        "blocked_events": sum(e["kind"] == "blocked" for e in events),
        "phase_runs": sum(e["kind"] == "phase_integration" for e in events),
        "evolution_windows": sum(1 for e in cycles if e.get("evolution")),
        "finish_up": finish.get("status"), "report_written": report.exists(),
        "loader_workers": loader_workers(history),
    }


def loader_workers(history: list[RunRecord]) -> int:
    """The most loader workers any run of the night started (its log's first line says)."""
    most = 0
    for r in history:
        try:
            head = (Path(r.run_dir).parent / "run.log").read_text(errors="replace")[:20000]
        except OSError:
            continue
        for line in head.splitlines():
            if " loader worker(s)" in line:
                most = max(most, int(line.split(" loader worker(s)")[0].rsplit(" ", 1)[-1]))
    return most


def table(results: dict[str, dict]) -> str:
    rows = [("wall minutes", lambda f: f"{f['seconds'] / 60:.1f}"), ("cycles", lambda f: f["cycles"]),
            ("runs (ok / full-fidelity)", lambda f: f"{f['runs']} ({f['ok']} / {f['full']})"),
            ("distinct configurations", lambda f: f["distinct_recipes"]),
            ("failed runs (infrastructure)", lambda f: f"{f['failed']} ({f['infrastructure_failures']})"),
            ("duplicate runs (CPU-s on them)", lambda f: f"{len(f['duplicates'])} ({f['duplicate_cpu_seconds']})"),
            ("CPU-s in runs", lambda f: f["run_cpu_seconds"]),
            ("loader workers (most in one run)", lambda f: f["loader_workers"]),
            ("kept gains (inside the noise)", lambda f: f"{f['kept_gains']} ({f['gains_inside_noise']})"),
            ("baseline val acc [95% CI]", lambda f: f["baseline"]),
            ("final kept best [95% CI]", lambda f: f"{f['best']} `{f['best_label']}`"),
            ("blocked events", lambda f: f["blocked_events"]),
            ("PHASE runs / evolution windows", lambda f: f"{f['phase_runs']} / {f['evolution_windows']}"),
            ("finish-up / report written", lambda f: f"{f['finish_up']} / {f['report_written']}")]
    tasks = list(results)
    lines = ["| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {name} | " + " | ".join(str(get(results[t])) for t in tasks) + " |" for name, get in rows]
    fails = [f"- {t}: " + "; ".join(f"{n}x {s}" for s, n in results[t]["failures_by_signature"].items())
             for t in tasks if results[t]["failures_by_signature"]]
    return "\n".join(lines) + ("\n\nFailures by signature:\n" + "\n".join(fails) if fails else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--tier", choices=["short", "full"], default="full")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, help="each task's night, wall minutes (finish-up included)")
    size.add_argument("--cycles", type=int, help="each task's night, cycles (finish-up requested near the end)")
    parser.add_argument("--work", help="where the workspaces go (default bench/_work/night; a smoke run: a new "
                                           "temporary folder)")
    parser.add_argument("--epochs", type=int, help="train each recipe this many epochs, not its shipped count: "
                        "a quick check of the whole night (its accuracies are not the recipe's)")
    parser.add_argument("--smoke", action="store_true", help="digits, 2 cycles, tiny runs; no RESULTS.md write")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: {args.epochs}; at least 1")
    tasks = ["digits"] if args.smoke else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    cycles = 2 if args.smoke else args.cycles
    minutes = None if cycles else (args.minutes or (6.0 if args.tier == "short" else 40.0))
    facts = machine_facts()
    work = Path(args.work or (tempfile.mkdtemp(prefix="night-smoke-") if args.smoke else REPO / "bench/_work/night"))
    work.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work / ".night.lock"))
    try:                 # two nights in one folder would delete each other's workspaces
        lock.acquire(timeout=0)
    except Timeout:
        raise SystemExit(f"another bench/night.py is using {work}; pass --work for a folder of its own") from None
    data = work / "data"
    readable_data_folder(data)
    results = {}
    for task in tasks:
        config = prepare(task, work / task, data, "short" if args.smoke else args.tier, args.epochs)
        ws = Workspace(work / task / "artifacts")
        limit = (minutes or 0) * 2 + 20 if minutes else cycles * 15 + 20
        print(f"[night] {task}: {'%g minutes' % minutes if minutes else '%d cycles' % cycles} ...", flush=True)
        results[task] = figures(ws, night(config, ws, minutes, cycles, limit))
        print(json.dumps(results[task], indent=2), flush=True)
        (work / f"{task}.json").write_text(json.dumps(results[task], indent=2) + "\n")
    size_text = f"{minutes:g} minutes" if minutes else f"{cycles} cycles"
    if args.epochs is not None:
        size_text += f" (each recipe {args.epochs} epoch(s), not its shipped count)"
    body = (f"The whole daemon (`llmloop start`, shipped config, sandbox required, PHASE open at the start), "
            f"{'smoke' if args.smoke else args.tier} tier, {size_text} a task.\n\n" + table(results))
    print(body)
    write_section(f"night ({args.tier})", body, facts)
    if args.smoke and not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
