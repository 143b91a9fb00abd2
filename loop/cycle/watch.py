"""The cycle's run and judge steps: watch a run for its monitor window, judge it, give a failed run
its one auto-repair pass and retry, follow a run across cycles, and hand a finished training to the
candidate path (and the evolution window on its clock)."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from loop.agents.schema import Decision
from loop.candidates.records import Handoff, WindowEntry
from loop.config import DaemonConfig
from loop.cycle.failures import blocked_after, extend
from loop.cycle.loop import Loop
from loop.cycle.record import CycleRecord, KeepEntry, RepairEntry, RunStart
from loop.cycle.state import LoopState, WindowNote
from loop.errors import LoopError
from loop.journal.fingerprint import fingerprint, recipe
from loop.journal.history import RunRecord, append_history
from loop.journal.metrics import RunMetrics, metrics_or_none
from loop.journal.notes import WORKPAD_SECTIONS, append_workpad
from loop.run.judge import RunOutcome, outcome_of
from loop.run.plan import RunPlan, reads_of, retry_plan
from loop.run.supervise import ActiveRun, monitor, monitor_many
from loop.trainer.config import resolved
from loop.util.fsutil import read_regular_text
from loop.util.secrets import redact
from loop.verdict.keeps import score_of, verdict_against_best

RETRY_MIN_MONITOR_SECONDS = 60.0


def start(loop: Loop, plan: RunPlan, cycle: int, retry_of: str | None = None,
          dimension: str | None = None) -> ActiveRun | None:
    """Launch a planned run through the executor, inside the sandbox, on a device slot (waiting for
    one while every slot is busy); None when a stop came while it waited."""
    def waiting() -> None:
        loop.say(f"{time.strftime('%H:%M:%S')} `{plan.label}` waits for a free device slot")

    run = loop.runner().submit(plan, cycle, retry_of=retry_of, should_stop=loop.should_stop, on_wait=waiting)
    # the run carries what it trains (from its plan); its decision's dimension is the cycle's to add
    return None if run is None else run.model_copy(update={"dimension": dimension})


def monitor_seconds(cfg: DaemonConfig, decision: Decision | None) -> float:
    wanted = decision.monitor_seconds if decision and decision.monitor_seconds else cfg.default_monitor_seconds
    return float(max(1, min(wanted, cfg.max_monitor_seconds)))


def watch_and_judge(loop: Loop, state: LoopState, run: ActiveRun, decision: Decision | None,
                    rec: CycleRecord) -> RunOutcome | None:
    """Watch a run for one monitor window; judge it if it ended (None while it runs)."""
    status = monitor(loop.runner(), run, monitor_seconds(loop.cfg, decision), loop.should_stop)
    rec.run = RunStart(label=run.label, pid=run.pid, kind=run.kind, log_path=run.log_path, monitor=status,
                       sandbox=run.sandbox, device=run.device, executor=run.executor)
    if status == "running":
        return None
    first, outcome = settle(loop, state, run, status, rec)
    return outcome


def settle(loop: Loop, state: LoopState, run: ActiveRun, status: str, rec: CycleRecord
           ) -> tuple[RunOutcome, RunOutcome]:
    """A run ended (or a stop came): judge it, give a failure its one repair and retry, and hand it
    on. Returns (its own outcome, the outcome that counts: the retry's when there was one)."""
    if status == "stopping":
        loop.runner().kill(run)
    first = outcome = outcome_of(run, status)
    state.drop_run(run)
    rec.run_outcome = first
    if not outcome.ok and status != "stopping" and run.retry_of is None:
        outcome = repair_and_retry(loop, state, run, outcome, rec) or outcome
    finish_run(loop, state, run, outcome, rec)
    return first, outcome


def repair_and_retry(loop: Loop, state: LoopState, run: ActiveRun, outcome: RunOutcome,
                     rec: CycleRecord) -> RunOutcome | None:
    """One auto-repair pass and one retry (the seed's Auto Repair)."""
    from loop.run.repair import auto_repair

    try:
        log_text = read_regular_text(run.log_path, tail=20000)
    except OSError:
        log_text = ""
    command = run.argv if run.kind == "train" else run.argv[-1]
    fix = auto_repair(command, log_text, loop.cfg, loop.ws.root, loop.repo_root)
    if fix is None:
        return None
    rec.auto_repair = RepairEntry(applied=fix.applied, actions=fix.actions, reason=getattr(fix, "reason", None))
    if not fix.applied or not loop.cfg.auto_repair_retry_on_success:
        return None
    argv = fix.retry_command if isinstance(fix.retry_command, list) else ["bash", "-c", fix.retry_command]
    retry_dir = Path(run.run_dir + "-retry")
    if run.kind == "train" and "--out" in argv:
        argv = list(argv)
        argv[argv.index("--out") + 1] = str(retry_dir / "out")
    planned = planned_config(run) if run.kind == "train" else {}
    patched = tuple(a["config"] for a in fix.actions if a.get("ok") and a.get("config"))   # a fallback's copy
    plan = retry_plan(run, argv, rec.trace, retry_dir, (reads_of(planned, loop.cfg.root) if planned else ()) + patched)
    retry_run = start(loop, plan, rec.cycle, retry_of=run.label, dimension=run.dimension)
    if retry_run is None:                       # stopping while it waited for a slot
        return None
    state.active_runs.append(retry_run)
    status = monitor(loop.runner(), retry_run, max(monitor_seconds(loop.cfg, None), RETRY_MIN_MONITOR_SECONDS),
                     loop.should_stop)
    if status == "running":                     # keep following it next cycle
        rec.run_outcome_retry = RunOutcome(label=retry_run.label, status="running")
        return rec.run_outcome_retry
    if status == "stopping":
        loop.runner().kill(retry_run)
    retry = outcome_of(retry_run, status)
    state.drop_run(retry_run)
    rec.run_outcome_retry = retry
    return retry


def follow_runs(loop: Loop, state: LoopState, rec: CycleRecord) -> list[RunOutcome]:
    """Monitor every run started in an earlier cycle (or by a daemon that crashed) for one window,
    together; judge those that ended. A run with no log progress for stale_orphan_idle_cycles
    follows is killed as a stale orphan."""
    runs = list(state.active_runs)
    for run in runs:
        run.monitor_cycles += 1
    statuses = monitor_many(loop.runner(), runs, monitor_seconds(loop.cfg, None), loop.should_stop)
    if len(runs) == 1:
        run = runs[0]
        rec.run = RunStart(label=run.label, pid=run.pid, kind=run.kind, log_path=run.log_path,
                           monitor=statuses[run.run_tag], sandbox=run.sandbox, device=run.device,
                           executor=run.executor)
    outcomes = []
    for run in runs:
        status = statuses[run.run_tag]
        if status != "running":
            outcomes.append(settle(loop, state, run, status, rec)[1])
        elif run.monitor_cycles >= loop.cfg.stale_orphan_idle_cycles and not log_growing(run):
            loop.runner().kill(run)
            outcome = outcome_of(run, "timed_out").model_copy(update={
                "status": "stale_orphan", "error": f"no log progress for {run.monitor_cycles} cycles"}).signed()
            state.drop_run(run)
            finish_run(loop, state, run, outcome, rec)
            outcomes.append(outcome)
        else:
            outcomes.append(RunOutcome(label=run.label, status="running", monitor_cycles=run.monitor_cycles))
    return outcomes


def log_growing(run: ActiveRun, window_seconds: float = 300) -> bool:
    try:
        return time.time() - Path(run.log_path).stat().st_mtime < window_seconds
    except OSError:
        return False


def finish_run(loop: Loop, state: LoopState, run: ActiveRun, outcome: RunOutcome, rec: CycleRecord) -> None:
    """A run is over: remember it (its failure streak too), and hand a finished training run to the
    candidate path."""
    state.last_outcome = outcome
    state.failure_streak = 0 if outcome.ok else state.failure_streak + 1
    note_failures(loop, state, run, outcome, rec)
    if run.kind != "train" and outcome.kind != "train":
        return
    out_dir = Path(outcome.run_dir or run.run_dir) / "out"
    config = read_train_args(out_dir) or planned_config(run)
    record = RunRecord(label=outcome.label, cycle=rec.cycle, trace=rec.trace, config=config,
                       ok=outcome.ok, score=outcome.val_accuracy or 0.0,
                       dimension=run.dimension,      # its own decision's, not the cycle's that judged it
                       minutes=round(outcome.seconds / 60.0, 3), run_dir=str(out_dir),
                       fingerprint=fingerprint(config) if config else run.fingerprint,   # what it trained
                       recipe=recipe(config) if config else run.recipe,
                       failure=outcome.signature.model_dump() if outcome.signature else None)
    metrics = metrics_of(outcome, out_dir)
    record = measured(record, metrics, loop.base_config())
    verdict = verdict_against_best(loop.run_history(), record, score_of(record, metrics))
    record.verdict, record.margin, record.band = verdict.verdict, verdict.margin, verdict.band
    append_history(loop.ws, record)
    test = verdict.test + ("; stopped at its walltime cap with a checkpoint: continuable" if record.stopped_at_cap
                           else "")
    rec.keeps.append(KeepEntry(label=record.label, verdict=verdict.verdict, score=record.score,
                               fidelity=record.fidelity, margin=verdict.margin, band=verdict.band, test=test))
    # a screen is a low-fidelity score: its continuation, not the screen, goes to the gates and the archive
    if outcome.ok and record.full and (out_dir / "model.safetensors").exists():
        from loop.candidates.intake import submit_run

        try:
            state.last_promotion = submit_run(loop.cfg, loop.ws.root, out_dir, rec.cycle, rec.trace, metrics=metrics)
        except (LoopError, OSError, ValueError) as exc:
            state.last_promotion = Handoff(error=f"hand-off failed: {exc}")
        rec.promotion = state.last_promotion


def note_failures(loop: Loop, state: LoopState, run: ActiveRun, outcome: RunOutcome, rec: CycleRecord) -> None:
    """The identical-failure streak after a run ended, and the blocked state it sets or clears: one
    `blocked` event (and a workpad note) when the daemon blocks, one `unblocked` when it clears."""
    if outcome.status in ("running", "interrupted"):          # the daemon stopped it: no verdict on it
        return
    state.failures = extend(state.failures, outcome.label, outcome.signature, run.fingerprint)
    before = state.blocked
    state.blocked = blocked_after(state.failures, before, loop.cfg.max_identical_failures, rec.cycle,
                                  loop.cfg.blocked_retry_minutes)
    rec.blocked = state.blocked
    if state.blocked is not None and (before is None or before.signature.key != state.blocked.signature.key):
        loop.events.append("blocked", rec.trace, **state.blocked.model_dump(mode="json"))
        append_workpad(loop.ws.workpad, WORKPAD_SECTIONS[0], f"{state.blocked.text()}. The daemon does not propose "
                       "these configurations again; it tries others no more often than every "
                       f"{loop.cfg.blocked_retry_minutes:g} min (doubling). `llmloop unblock` clears it.", rec.cycle)
    elif before is not None and state.blocked is None:
        how = "a run succeeded" if outcome.ok else f"a run failed another way ({outcome.signature.key})" \
            if outcome.signature else "a run ended"
        loop.events.append("unblocked", rec.trace, signature=before.signature.key, reason=how)


def planned_config(run: ActiveRun) -> dict:
    """The trainer config the daemon planned for a run that wrote no train_args.json (it failed
    before): its run.yaml, resolved ({} when unreadable)."""
    try:
        return resolved(json.loads(read_regular_text(run.config_path))) if run.config_path else {}
    except (OSError, ValueError):
        return {}


def measured(record: RunRecord, metrics: RunMetrics | None, base_config: dict) -> RunRecord:
    """The record with what the run's metrics say of its fidelity, cost and validation count."""
    if metrics is None:
        return record
    planned, done = metrics.epochs_planned, metrics.epochs_completed
    share = (record.config.get("data", {}).get("train_fraction") or 1.0) / \
        ((base_config.get("data", {}) or {}).get("train_fraction") or 1.0)
    record.fidelity = round(min(1.0, done / planned if planned else 1.0) * min(1.0, share), 4)
    seconds = [e.seconds for e in metrics.curve if e.seconds]
    own = seconds[metrics.epochs_at_start:]
    record.epoch_seconds = round(statistics.median(own), 3) if own else metrics.epoch_seconds_estimate
    record.epochs_trained = len(own)
    record.val_count = metrics.eval.count if metrics.eval else None
    record.stopped_at_cap = metrics.stopped_at_cap
    return record


def metrics_of(outcome: RunOutcome, out_dir: Path) -> RunMetrics | None:
    """The run's metrics: as its judge read them, else (a run the judge did not read: timed out,
    stalled, a stale orphan) from its folder; None when it wrote none or an unreadable file."""
    return outcome.metrics if outcome.metrics is not None else metrics_or_none(out_dir, within=out_dir.parent)


def read_train_args(out_dir: Path) -> dict:
    """The resolved trainer config a run wrote ({} when it wrote none or an unreadable one)."""
    try:
        config = json.loads(read_regular_text(out_dir / "train_args.json", within=out_dir.parent))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def evolution_window(loop: Loop, state: LoopState, rec: CycleRecord) -> None:
    """Heartbeat cycles are the evolution clock: a window opens on multiples of evo_period_cycles
    (and waits for the daemon's runs to end: the window runs in the daemon's own process, and while it
trains its candidates no run would be followed)."""
    from loop.candidates.scheduler import window_open

    if window_open(rec.cycle, loop.cfg.evo_period_cycles):
        state.window_pending = True
    if not state.window_pending or state.active_runs:
        return
    from loop.candidates.window import run_window

    state.window_pending = False
    try:
        result = run_window(loop.cfg, loop.ws.root, rec.cycle, None, rec.trace, say=loop.say, executor=loop.runner())
        rec.evolution = result.entry()
        state.last_promotion = WindowNote(evolution_window=rec.evolution)
    except (LoopError, OSError, ValueError) as exc:
        rec.evolution = WindowEntry(error=redact(str(exc), loop.secrets))
