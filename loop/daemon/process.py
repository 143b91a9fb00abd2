"""The process around the cycles: single instance (a file lock), state and heartbeat, stop
requests (a file or SIGTERM, honoured within one cycle), and recovery after a crash: a new start
resumes at the next cycle number and re-attaches to (or reaps) the run that was active."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from loop.config import DaemonConfig, LLMRole
from loop.cycle.cycle import Loop, run_cycle
from loop.cycle.state import LoopState
from loop.daemon.phase_external import timer_phase_if_started
from loop.daemon.phase_pause import expire_recommendations, phase_if_due
from loop.daemon.recovery import Degraded, crashed_before, recover
from loop.domains.pixels import CACHE_ENV, workspace_cache
from loop.errors import ConfigError, ExitCode, LoopError
from loop.journal.events import EventLog
from loop.journal.history import RunRecord
from loop.journal.machine import collect_machine
from loop.report.final import FINISHED, write_final_reports
from loop.run.executor import check_executor
from loop.run.reaper import reap_leftovers
from loop.run.sandbox_setup import load_sandbox
from loop.util.workspace import Workspace, workspace_of  # noqa: F401  (workspace_of: callers use it from here)
from loop.verdict.keeps import incumbent

if TYPE_CHECKING:        # imported when the daemon runs: status and stop need neither it nor torch
    from loop.notify.notifier import Notifier
    from loop.retention.upkeep import Upkeep
    from loop.tracking.tracker import Tracker

# Where this package is imported from: child processes get it on PYTHONPATH so `python -m
# loop.trainer` finds the same code. Not a project root: that is where the config lives (cfg.root).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class AlreadyRunning(LoopError):
    exit_code = ExitCode.ALREADY_RUNNING


def running_pid(ws: Workspace) -> int | None:
    """The pid of a live daemon holding the workspace, or None."""
    lock = FileLock(str(ws.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            return int(ws.pid.read_text().strip())
        except (OSError, ValueError):
            return -1
    lock.release()
    return None


def effective_role(role: LLMRole, credentials_file: str) -> LLMRole:
    """The role's endpoint from the config, or else the one `llmloop login --base-url` stored."""
    if role.base_url:
        return role
    try:
        stored = json.loads(Path(credentials_file).expanduser().read_text())
    except (OSError, ValueError):
        return role
    if not isinstance(stored, dict) or not stored.get("base_url"):
        return role
    return role.model_copy(update={"base_url": stored["base_url"], "model": stored.get("model") or role.model})


def build_loop(cfg: DaemonConfig, ws: Workspace, should_stop, say) -> Loop:
    from loop.agents.credentials import resolve_api_key
    from loop.agents.formats import ModeStore
    from loop.agents.llm import for_role
    from loop.agents.usage import SpendCap
    from loop.util.secrets import known_secrets, url_secrets

    events = EventLog(ws.events)
    current = {"trace": "-"}
    # The daemon's own probe and PHASE passes read the same decoded-pixel cache as its runs.
    os.environ.setdefault(CACHE_ENV, str(workspace_cache(ws.root)))

    def on_llm_event(event: dict) -> None:   # retries, format fallbacks, repairs: traced to the cycle
        events.append(event.get("kind", "llm"), current["trace"], **{k: v for k, v in event.items() if k != "kind"})

    def on_budget_spent(reason: str) -> None:
        say(f"{time.strftime('%H:%M:%S')} {reason}: no more LLM calls this run of the daemon")
        on_llm_event({"kind": "llm_budget_spent", "reason": reason, "max_cost": cfg.llm_budget.max_cost,
                      "max_tokens": cfg.llm_budget.max_tokens})

    spend_cap = SpendCap(cfg.llm_budget.max_cost, cfg.llm_budget.max_tokens, on_budget_spent)
    store = ModeStore(ws.llm_modes)
    clients = {}
    for name, role in (("builder", builder_role(cfg)), ("mentor", mentor_role(cfg))):
        clients[name] = for_role(role, name, cfg.credentials_file, on_event=on_llm_event,
                                 price=cfg.llm_prices.get(role.model), spend_cap=spend_cap, mode_store=store)
    return Loop(cfg=cfg, repo_root=cfg.root, ws=ws, events=events, builder=clients["builder"],
                mentor=clients["mentor"], current=current, spend_cap=spend_cap,
                secrets=known_secrets() + url_secrets(cfg.notify.all_urls())     # notification tokens too
                + [k for k in (resolve_api_key(cfg.builder, cfg.credentials_file),
                               resolve_api_key(cfg.mentor, cfg.credentials_file)) if k],
                should_stop=should_stop, say=say, sandbox=load_sandbox(cfg, cfg.root, ws.root))


def builder_role(cfg: DaemonConfig) -> LLMRole:
    return effective_role(cfg.builder, cfg.credentials_file)


def mentor_role(cfg: DaemonConfig) -> LLMRole:
    """The mentor's endpoint, with the seed's `mentor_model` / `mentor_reasoning_effort` on top."""
    overrides = {"model": cfg.mentor_model, "reasoning_effort": cfg.mentor_reasoning_effort}
    return effective_role(cfg.mentor, cfg.credentials_file).model_copy(
        update={k: v for k, v in overrides.items() if v})


def reap_before_launch(loop: Loop, state: LoopState) -> dict:
    """After a crash: keep following the runs state.json names (same pid and create_time; a cluster
    run by its name), kill every other process an earlier daemon of this workspace left behind, and
    cancel the executor's own leftovers that no state names."""
    runs = state.active_runs
    # a cluster run on this very host is spared like a local one (same pid, create time and tag)
    reaped = reap_leftovers(loop.sandbox.owner, also_keep=[(r.pid, r.create_time, r.run_tag) for r in runs])
    adopted = []
    for run in runs:
        alive = loop.runner().adopt(run) if run.executor != "local" else run.pid in reaped["adopted"]
        if alive:
            adopted.append(run.label)    # the others are gone: the next cycle judges them from their files
    reaped["adopted_runs"] = adopted
    reaped["adopted_run"] = adopted[0] if adopted else None
    reaped["cancelled"] = loop.runner().cancel_strays({r.run_tag for r in runs if r.label in adopted})
    return reaped


LOCK_PROBE_GRACE_S = 2.0
_NONE = RunRecord("", 0, {}, False, 0.0)        # the score before any best: 0


def run_daemon(cfg: DaemonConfig, ws: Workspace, max_cycles: int | None = None, say=print) -> LoopState:
    """Run cycles until stopped (or `max_cycles`). Holds the workspace lock throughout."""
    check_executor(cfg)                  # a Ray cluster out of reach: an error now, before the pid file
    ws.ensure()
    lock = FileLock(str(ws.lock))
    try:
        # a moment's patience: `llmloop status` and the dashboard probe the lock (for microseconds)
        # to tell a live daemon from a crashed one, and such a probe must not fail a start
        lock.acquire(timeout=LOCK_PROBE_GRACE_S)
    except Timeout:
        raise AlreadyRunning(f"the daemon is already running on {ws.root} (pid {running_pid(ws)})") from None
    stop, notifier, loop = {"requested": False}, None, None

    def on_signal(signum, _frame):
        stop["requested"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # Past a file-size limit a write should fail (EFBIG, handled as degraded), not kill the daemon.
    previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        ws.pid.write_text(f"{os.getpid()}\n")
        ws.stop_request.unlink(missing_ok=True)

        def should_stop() -> bool:
            return stop["requested"] or ws.stop_request.exists()

        from loop.notify.notifier import for_daemon
        from loop.tracking.tracker import Tracker

        notifier = for_daemon(cfg, EventLog(ws.events), say)   # reads from here on; sends off the cycles' path
        loop, state, degraded = start_up(cfg, ws, should_stop, say)
        if notifier is not None:
            notifier.feed()                  # a start after a crash says so at once
        tracker = Tracker(cfg, ws.root, loop.events, loop.secrets, say)     # MLflow / TensorBoard, best-effort
        tracker.start(state.cycle + 1)
        from loop.retention.upkeep import Upkeep

        upkeep = Upkeep(cfg.retention, ws, loop.events, say)    # the retention sweep, the free-space floor
        state, done = cycle_until_stopped(loop, state, degraded, should_stop, max_cycles, say, tracker, notifier,
                                          upkeep)
        tracker.stop(f"stop-{state.cycle:05d}")
        reason = state.stop_reason or ("stop requested" if should_stop() else f"{done} cycle(s) done")
        append_daemon_event(degraded, state, say, "daemon_stop", f"stop-{state.cycle:05d}", reason=reason,
                            cycle=state.cycle)
        say(f"llmloop daemon stopped after cycle {state.cycle}: {reason}")
        return state
    finally:
        if loop is not None:
            loop.close()
        if notifier is not None:
            notifier.close()                 # the last events out, within notify.stop_flush_seconds
        for s, handler in previous.items():
            signal.signal(s, handler)
        ws.pid.unlink(missing_ok=True)
        ws.stop_request.unlink(missing_ok=True)
        lock.release()


def start_up(cfg: DaemonConfig, ws: Workspace, should_stop, say) -> tuple[Loop, LoopState, Degraded]:
    """Checks, the loop, strays reaped, the workspace repaired after a crash, the daemon_start event."""
    from loop.agents.prompts import check_rule_budgets

    rules = check_rule_budgets(cfg, cfg.root)
    task = check_task_domain(cfg, ws)
    loop = build_loop(cfg, ws, should_stop, say)
    events = loop.events
    # Leftover processes first (nothing may still be writing while the sweep runs), then the sweep.
    reaped = reap_before_launch(loop, LoopState.load(ws.state))
    torn = events.repair_tail()
    recovered = recover(ws, events)        # stray temps, archive staging, cycle counter (loop/daemon/recovery.py)
    state = LoopState.load(ws.state)
    state.stop_reason = None
    mode = "LLM" if loop.builder is not None else "offline policy (no endpoint configured; no network)"
    degraded = Degraded(events)
    # the models that decide, and the machine that trains: the report may be written elsewhere, later
    models = {name: role(cfg).model for name, role, client in (("builder", builder_role, loop.builder),
                                                                ("mentor", mentor_role, loop.mentor)) if client}
    append_daemon_event(degraded, state, say, "daemon_start", f"start-{state.cycle + 1:05d}",
                        pid=os.getpid(), resume_cycle=state.cycle + 1,
                        builder=mode, mentor="LLM" if loop.mentor is not None else "offline policy",
                        llm_models=models, machine=collect_machine().model_dump(mode="json"),
                        prompt_rules=rules, repaired_torn_event=torn, recovery=recovered, task_domain=task,
                        sandbox=loop.sandbox.note, reaped=reaped, phase_scheduler=cfg.phase.scheduler,
                        active_run=state.active_run.label if state.active_run else None,
                        active_runs=[r.label for r in state.active_runs],
                        active_run_alive=loop.runner().alive(state.active_run) if state.active_run else None,
                        after_crash=crashed_before(events))
    say(f"llmloop daemon pid {os.getpid()}: Builder and Mentor use the {mode}; "
        f"resuming at cycle {state.cycle + 1}; {loop.sandbox.note}")
    if reaped["killed"]:
        say(f"killed {len(reaped['killed'])} leftover process(es) of an earlier daemon")
    expire_recommendations(loop, state)     # sets loop.phase_hint: PHASE's recommendations still in force
    from loop.domains import pixels

    pixels.on_rebuild = lambda path, why: events.append(     # a cache file that fails its digest: said, rebuilt
        "pixel_cache_rebuilt", f"cache-{state.cycle + 1:05d}", path=str(path), reason=why)
    return loop, state, degraded


def cycle_until_stopped(loop: Loop, state: LoopState, degraded: Degraded, should_stop, max_cycles: int | None,
                        say, tracker: Tracker | None = None, notifier: Notifier | None = None,
                        upkeep: Upkeep | None = None) -> tuple[LoopState, int]:
    """Cycles, PHASE when due, and the adaptive pause between them; a full disk backs off, never exits;
    under the free-space floor no cycle starts (waits don't count as cycles); a sweep after each cycle."""
    done = 0
    while not should_stop() and state.stop_reason is None and (max_cycles is None or done < max_cycles):
        wait = upkeep.disk_wait(state) if upkeep is not None else None
        if wait is not None:
            if notifier is not None:
                notifier.feed()               # disk_low goes out while the daemon waits, not after
            sleep_between_cycles(wait, should_stop)
            continue
        try:
            degraded.flush()                  # `degraded` events a full disk held back
            state = run_cycle(loop, state)
            if write_final_reports(loop.ws, loop.events, state.cycle) is not None:   # finish-up's last step
                state.stop_reason = FINISHED
                state.save(loop.ws.state)
            degraded.recovered()
        except OSError as exc:                # disk full, file too large, read-only: stay up, back off;
            backoff = degraded.record(exc, state, say)    # state.json on disk is the last good one
        else:
            backoff = None
        if tracker is not None:
            tracker.sync(loop.current.get("trace", "-"))   # the cycle's runs into the trackers; never raises
        if notifier is not None:
            notifier.feed()                   # queues what the cycle's events mean; never sends here
        if upkeep is not None and backoff is None:
            upkeep.after_cycle(state)         # weights and checkpoints past retention; never raises
        done += 1
        if max_cycles is not None and done >= max_cycles:
            break
        if backoff is not None:
            sleep_between_cycles(backoff, should_stop)
            continue
        try:
            # one owner: the daemon starts PHASE at its window, or a systemd timer does and the daemon pauses for it
            state = (phase_if_due if loop.cfg.phase.scheduler == "daemon" else timer_phase_if_started)(loop, state)
            if should_stop() or state.stop_reason is not None:
                break
            decision = timer_decision(loop, state)
            loop.events.append("timer", f"timer-{state.cycle:05d}", seconds=decision.seconds,
                               reasons=decision.reasons, inputs=decision.inputs)
        except OSError as exc:
            sleep_between_cycles(degraded.record(exc, state, say), should_stop)
            continue
        sleep_between_cycles(decision.seconds, should_stop)
    return state, done


def append_daemon_event(degraded: Degraded, state: LoopState, say, kind: str, trace: str, **fields) -> None:
    """daemon_start / daemon_stop: an events.jsonl that cannot be written (disk full) must not turn a
    start or a stop into a traceback. The failure takes the cycles' degraded path: a `degraded` record
    held back for the next flush, reported on stderr meanwhile, and the daemon carries on."""
    try:
        degraded.events.append(kind, trace, **fields)
    except OSError as exc:
        degraded.record(exc, state, say)


def check_task_domain(cfg: DaemonConfig, ws: Workspace) -> str:
    """The daemon runs SPICA domains only, imports only trusted ones, and never code from where runs
    write: resolve the task before the first cycle (refusing others), and refuse a workspace on
    sys.path (`import` would find modules a run wrote there)."""

    from loop.config import read_yaml
    from loop.domains import resolve_domain, trust_from
    from loop.domains.pixels import CACHE_ENV, workspace_cache

    root = ws.root.resolve()
    for entry in sys.path:
        if Path(entry or ".").resolve().is_relative_to(root):        # "": the current folder
            raise ConfigError(f"sys.path holds {entry}, inside the workspace {root} where runs write: the daemon "
                              "would import what a run planted there; remove it from PYTHONPATH")
    trust_from(cfg, root)
    # the daemon decodes into the cache its runs read (read-only to them), not a cache of its own
    os.environ.setdefault(CACHE_ENV, str(workspace_cache(root)))
    data = read_yaml(cfg.resolve(cfg.default_trainer_config)).get("data", {})
    domain = resolve_domain(data.get("domain", "digits"), data.get("domain_args"))
    return type(domain).__name__


def timer_decision(loop: Loop, state: LoopState):
    """The pause before the next cycle, from recent durations, the fitness trend, the machine's load,
    the Builder's open LLM circuit and the time to the next PHASE window (loop/daemon/timer.py)."""
    import datetime as dt

    from loop.daemon.timer import TimerInputs, next_pause, sample_resources
    from loop.phase.window import seconds_until_window

    cfg, window = loop.cfg, loop.cfg.adaptive_timer.window
    everything = loop.run_history()
    history = everything[-window:]
    # the kept best after each recent run: a tie inside the noise is no improvement for the timer either
    best = [(incumbent(everything[:len(everything) - len(history) + i + 1]) or _NONE).score
            for i in range(len(history))]
    # Waiting out an open circuit only makes sense when the cycle would wait anyway; with
    # `when_unavailable: offline` the offline policy keeps the machine busy meanwhile.
    circuit_open_for = getattr(loop.builder, "unavailable_for_seconds", None)   # None: the offline policy
    if cfg.builder.when_unavailable == "offline":
        circuit_open_for = None
    inputs = TimerInputs(base_seconds=cfg.daemon_poll_seconds, cycle_seconds=state.cycle_seconds[-window:],
                         run_seconds=[r.minutes * 60 for r in history if r.minutes], best_scores=best,
                         seconds_to_phase=seconds_until_window(cfg.phase, dt.datetime.now()),
                         llm_circuit_open_seconds=circuit_open_for() if circuit_open_for else None,
                         **sample_resources())
    return next_pause(inputs, cfg.adaptive_timer.min_seconds, cfg.adaptive_timer.max_seconds)


def sleep_between_cycles(seconds: float, should_stop, chunk: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not should_stop():
        time.sleep(min(chunk, max(0.0, deadline - time.monotonic())))
