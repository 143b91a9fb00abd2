"""One cycle of the research loop, readable top to bottom:

    follow the active run, if one is still going
    decide  (Builder: LLM or offline policy)  ->  review (Mentor, on cadence or when stuck)
    gate    (quality gate; trainer overlay validated; command policy for run_command)
    run     (structured trainer run or policy-checked command, in its own process group)
    judge   (exit code, metrics; one auto-repair pass and one retry; hand-off to promotion)
    record  (events.jsonl, notes, storyline, state.json, heartbeat)
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loop.agents import offline, prompts
from loop.cycle import finishup
from loop.agents.context import build_context
from loop.agents.usage import estimate_tokens
from loop.agents.offline import PolicyInput
from loop.agents.schema import Decision, Review, wait_decision
from loop.agents.usage import Usage
from loop.config import DaemonConfig, deep_merge, read_yaml, validate
from loop.errors import ConfigError, LoopError
from loop.journal.events import EventLog
from loop.journal.history import HistoryReader, RunRecord, append_history
from loop.util.fsutil import atomic_write_text, read_regular_text
from loop.journal.notes import (WORKPAD_SECTIONS, add_todos, append_mentor_notes, append_storyline, append_workpad,
                        resolve_todos)
from loop.run.supervise import ActiveRun, exit_code, kill_run, launch, monitor
from loop.util.secrets import looks_secret, redact
from loop.cycle.state import LoopState, write_heartbeat
from loop.trainer.config import TrainerConfig
from loop.util.workspace import Workspace

BUILDER_TODO_CAP, MENTOR_TODO_CAP = 2, 1


@dataclass
class Loop:
    """What every cycle needs, built once by the daemon."""

    cfg: DaemonConfig
    repo_root: Path
    ws: Workspace
    events: EventLog
    builder: object | None = None            # LLMClient, or None for the offline policy
    mentor: object | None = None
    secrets: list[str] = field(default_factory=list)
    should_stop: Callable[[], bool] = lambda: False
    say: Callable[[str], None] = print
    phase_hint: dict = field(default_factory=dict)   # search-space recommendations (PHASE)
    current: dict = field(default_factory=dict)      # {"trace": id of the cycle running now}
    history: HistoryReader | None = None
    sandbox: object | None = None                    # loop.run.sandbox.Sandbox; None: no OS boundary (tests)
    spend_cap: object | None = None                  # loop.agents.usage.SpendCap shared by both roles

    def run_history(self) -> list[RunRecord]:
        if self.history is None:
            self.history = HistoryReader(self.ws.runs_index)
        return self.history.read()


def scrub(model, secrets: list[str]):
    """The same record with every secret value redacted from every string in it."""
    return type(model).model_validate_json(redact(model.model_dump_json(), secrets))


def new_trace_id(cycle: int) -> str:
    return f"c{cycle:05d}-{uuid.uuid4().hex[:6]}"


# ================================================================ the cycle ====

def run_cycle(loop: Loop, state: LoopState) -> LoopState:
    cycle = state.cycle + 1
    trace = new_trace_id(cycle)
    record: dict = {"cycle": cycle, "trace": trace}
    loop.current["trace"] = trace
    t0 = time.monotonic()

    # ---- finish-up: a deadline overrides the normal flow ----
    forced = finish_up(loop, state, cycle, record)
    if forced == "done":
        return finish_cycle(loop, state, cycle, trace, record, t0, line="finish-up: final reports written; stopping")

    if state.active_run is not None:                        # a run from an earlier cycle
        followed = follow_run(loop, state, trace, cycle, record)
        record["followed_run"] = followed
        evolution_window(loop, state, cycle, trace, record)
        return finish_cycle(loop, state, cycle, trace, record, t0,
                            line=f"monitor `{followed.get('label')}` -> {followed.get('status')}"
                                 + (f" val_acc {followed['val_accuracy']:.4f}" if followed.get("val_accuracy") else ""))

    # ---- decide ----
    history = loop.run_history()
    context = build_context(loop.ws, cycle, history, state.recent_actions, state.last_outcome,
                            None, promotion_note=json.dumps(state.last_promotion) if state.last_promotion else "",
                            extra=phase_section(state), finish_up=finishup.context_text(loop.ws.finish_up))
    context_text = redact(context.render(), loop.secrets)
    if isinstance(forced, Decision):
        decision, source = forced, "finish-up"
    else:
        decision, source = decide(loop, state, context_text, history, cycle, record)
    decision = scrub(decision, loop.secrets)       # an LLM that echoes a secret: nothing downstream sees it
    record["decision"] = {"source": source, **decision.model_dump(exclude={"train_overlay"}),
                          "train_overlay": decision.train_overlay}

    # ---- review ----
    due, why = mentor_due(loop.cfg, cycle, state)
    if due and source != "finish-up":
        review = review_decision(loop, context_text, decision, history, cycle, why, record)
        if review is not None:
            state.last_mentor_cycle = cycle
            applied = (review.verdict == "off_track" and review.challenge is not None
                       and loop.cfg.mentor_apply_suggestions)
            record["mentor"]["challenge_applied"] = applied
            if applied:
                decision, source = review.challenge, "mentor"
    decision = stuck_wait_recovery(loop, state, decision, history, cycle, record)

    # ---- gate ----
    decision, run_plan = gate(loop, decision, trace, record)
    count_gate_refusals(loop, state, source, cycle, record)

    # ---- run, judge ----
    outcome = None
    if run_plan is not None:
        state.active_run = launch(**run_plan, cycle=cycle, cwd=loop.repo_root, env=child_env(loop),
                                  sandbox=loop.sandbox, stall_seconds=stall_seconds(loop.cfg))
        outcome = watch_and_judge(loop, state, trace, cycle, decision, record)
    elif decision.action == "finish":
        state.stop_reason = "the Builder chose finish"
    housekeeping(loop, decision, cycle, record)
    evolution_window(loop, state, cycle, trace, record)
    state.note_action(decision.action)
    state.idle_streak = 0 if run_plan is not None else state.idle_streak + 1
    state.last_decision = {"action": decision.action, "label": decision.run_label, "source": source,
                           "dimension": decision.strategy_dimension, "gate_ok": record["quality_gate"]["ok"]}
    line = f"{decision.action} `{decision.run_label}`" + (f" ({decision.strategy_dimension})" if decision.strategy_dimension else "")
    if source == "offline-fallback":
        line += " [offline policy: the Builder LLM was unavailable]"
    if outcome:
        line += f" -> {outcome.get('status')}" + (f" val_acc {outcome['val_accuracy']:.4f}" if outcome.get("val_accuracy") else "")
    return finish_cycle(loop, state, cycle, trace, record, t0, line=line)


def phase_section(state: LoopState) -> dict[str, str]:
    """What the last PHASE deep evaluation taught the loop, for the Builder's prompt."""
    if not (state.fitness_baselines or state.phase_recommendations):
        return {}
    return {"PHASE deep evaluation": json.dumps({"fitness_baselines": state.fitness_baselines,
                                                 "flagged_variants": state.flagged_variants[:10],
                                                 "search_space_recommendations": state.phase_recommendations})}


# =============================================================== finish-up ====

def finish_up(loop: Loop, state: LoopState, cycle: int, record: dict) -> Decision | str | None:
    """Returns a final-round Decision, 'done' after writing the reports, or None (carry on)."""
    from loop.agents.offline import best_run

    request = finishup.load(loop.ws.finish_up)
    now = finishup.now_utc()
    if request is None or not request.is_active(now):
        return None
    if request.status == "scheduled":
        request.status = "active"
        finishup.save(loop.ws.finish_up, request)
    best = best_run(loop.run_history())
    step = finishup.next_step(request, now, state.active_run is not None, best.minutes if best else None)
    record["finish_up"] = {"step": step, "deadline": request.deadline_utc,
                           "minutes_left": round(request.minutes_to_deadline(now), 1)}
    if step == "final_round":
        request.rounds_started += 1
        finishup.save(loop.ws.finish_up, request)
        return Decision(action="train", run_label=f"final-round-{request.rounds_started}-{best.label}"[:60],
                        strategy_dimension="evaluation", train_overlay=finishup.final_round_overlay(best.config),
                        rationale=f"Finish-up: final training round {request.rounds_started} of "
                                  f"{request.final_training_rounds}: the best configuration ({best.label}, "
                                  f"{best.score:.4f}) trained longer before the deadline.")
    if step != "report":
        return None
    if state.active_run is not None:                      # out of time: the run cannot finish
        kill_run(state.active_run)
        record["run_outcome"] = judge(state.active_run, "stopping") | {"error": "finish-up deadline reached"}
        state.active_run = None
    from loop.report import generate_reports

    request.status = "reporting"
    finishup.save(loop.ws.finish_up, request)
    paths = generate_reports(loop.ws.root, request.top_k, request.note, progress=False)
    request.status, request.reports = "done", {k: str(v) for k, v in paths.items()}
    finishup.save(loop.ws.finish_up, request)
    record["finish_up"]["reports"] = request.reports
    state.stop_reason = "finish-up complete: final reports written"
    return "done"


# ================================================================== decide ====

def decide(loop: Loop, state: LoopState, context_text: str, history: list[RunRecord], cycle: int,
           record: dict) -> tuple[Decision, str]:
    """The Builder's decision: from the LLM when one is configured, else the offline policy. When the
    LLM cannot decide (circuit open, budget spent, a failed call, or the gate refused its recent
    decisions), `builder.when_unavailable` says what the cycle does: `offline` asks the offline
    policy (source `offline-fallback`, the reason in `llm_fallback`), `wait` logs a wait."""
    if loop.builder is None:
        return offline_decision(loop, context_text, history, cycle), "offline"
    fallback = loop.cfg.builder.when_unavailable == "offline"
    if fallback and state.llm_offline_until_cycle >= cycle:
        record["llm_fallback"] = (f"the quality gate refused {loop.cfg.llm_gate_refusal_limit} LLM decisions "
                                  f"in a row: the offline policy decides until cycle {state.llm_offline_until_cycle}")
        return offline_decision(loop, context_text, history, cycle), "offline-fallback"
    from loop.agents.llm import LLMCircuitOpen, LLMUnavailable

    system, user = prompts.builder_prompt(loop.cfg, loop.repo_root, context_text)
    record["prompt_tokens_estimate"] = estimate_tokens(system + user)
    try:
        result = loop.builder.complete_json(system, user, Decision)
    except (LLMUnavailable, LoopError) as exc:
        record["llm_error"] = redact(str(exc), loop.secrets)
        if isinstance(exc, LLMUnavailable):
            record["tokens_builder"] = exc.usage.model_dump()       # failed calls cost tokens too
        if isinstance(exc, LLMCircuitOpen):   # refused without a request; the daemon's timer waits it out
            record["llm_circuit_open_s"] = round(exc.retry_in_seconds, 1)
        if fallback:
            record["llm_fallback"] = f"Builder LLM unavailable: {record['llm_error']}"
            return offline_decision(loop, context_text, history, cycle), "offline-fallback"
        return wait_decision(f"Builder LLM unavailable: {record['llm_error']}"), "llm-failed"
    record["tokens_builder"] = result.usage.model_dump()
    record["llm"] = {"attempts": result.attempts, "repaired": result.repaired, "mode": result.mode,
                     "seconds": result.seconds}
    return result.parsed, "llm"


def offline_decision(loop: Loop, context_text: str, history: list[RunRecord], cycle: int) -> Decision:
    todos = [line for line in context_text.splitlines() if line.startswith("T0")]
    return offline.builder_decision(PolicyInput(cycle, history, todos, loop.phase_hint), seed=loop.cfg.offline_seed)


def count_gate_refusals(loop: Loop, state: LoopState, source: str, cycle: int, record: dict) -> None:
    """Past `llm_gate_refusal_limit` LLM decisions refused in a row (quality gate, overlay or command
    policy), the offline policy decides for `llm_gate_refusal_offline_cycles` cycles."""
    if source != "llm":
        return
    refused = not record["quality_gate"]["ok"] or not record.get("policy", {}).get("allowed", True)
    state.llm_gate_refusals = state.llm_gate_refusals + 1 if refused else 0
    if state.llm_gate_refusals >= loop.cfg.llm_gate_refusal_limit and loop.cfg.builder.when_unavailable == "offline":
        state.llm_offline_until_cycle = cycle + loop.cfg.llm_gate_refusal_offline_cycles
        state.llm_gate_refusals = 0
        record["llm_gate_fallback"] = (f"{loop.cfg.llm_gate_refusal_limit} LLM decisions refused in a row: "
                                       f"offline policy until cycle {state.llm_offline_until_cycle}")


def mentor_due(cfg: DaemonConfig, cycle: int, state: LoopState) -> tuple[bool, str]:
    if not cfg.mentor_enabled:
        return False, ""
    if cfg.interaction_mode == "builder_health_helper" and cycle % cfg.mentor_health_check_every_n_cycles == 0:
        return True, f"health check every {cfg.mentor_health_check_every_n_cycles} cycles"
    if cfg.interaction_mode == "standard" and cycle % cfg.mentor_every_n_cycles == 0:
        return True, f"cadence: every {cfg.mentor_every_n_cycles} cycles"
    if cfg.mentor_force_when_stuck and state.last_mentor_cycle < cycle - 1:
        if state.idle_streak >= max(1, cfg.mentor_challenge_streak_min_idle_cycles):
            return True, f"stuck: {state.idle_streak} cycles without a run"
        if state.failure_streak >= 2:
            return True, f"stuck: {state.failure_streak} failed runs in a row"
    return False, ""


def review_decision(loop: Loop, context_text: str, decision: Decision, history: list[RunRecord], cycle: int,
                    why: str, record: dict) -> Review | None:
    cfg = loop.cfg
    web = ("unavailable: the endpoint offers no web-search tool" if cfg.mentor_require_web_search
           or cfg.mentor_web_search_mode != "off" else "off")
    record["mentor"] = {"why": why, "name": cfg.mentor_display_name, "web_search": web}
    if loop.mentor is None:
        review = offline.mentor_review(PolicyInput(cycle, history, [], loop.phase_hint), decision, cfg.offline_seed)
        record["mentor"].update(source="offline")
    else:
        from loop.agents.llm import LLMUnavailable

        system, user = prompts.mentor_prompt(cfg, loop.repo_root, context_text,
                                             redact(decision.model_dump_json(), loop.secrets), why)
        try:
            result = loop.mentor.complete_json(system, user, Review)
        except (LLMUnavailable, LoopError) as exc:
            record["mentor"].update(source="llm-failed", error=redact(str(exc), loop.secrets))
            if isinstance(exc, LLMUnavailable):
                record["tokens_mentor"] = exc.usage.model_dump()
            if cfg.mentor.when_unavailable != "offline":
                return None
            review = offline.mentor_review(PolicyInput(cycle, history, [], loop.phase_hint), decision, cfg.offline_seed)
            record["mentor"].update(source="offline-fallback")
        else:
            review = scrub(result.parsed, loop.secrets)
            record["tokens_mentor"] = result.usage.model_dump()
            record["mentor"].update(source="llm")
    record["mentor"].update(verdict=review.verdict, critical_question=review.critical_question,
                            challenge=review.challenge.model_dump() if review.challenge else None)
    todos = review.todo_new if review.challenge else []       # none on continue
    if todos:
        record["mentor"]["todo_added"], _ = add_todos(loop.ws.todo, todos, cfg.mentor_display_name, cycle,
                                                      MENTOR_TODO_CAP)
    append_mentor_notes(loop.ws.mentor_notes, cycle, record["trace"], cfg.mentor_display_name,
                        review.verdict, review.critical_question, review.notes)
    return review


def stuck_wait_recovery(loop: Loop, state: LoopState, decision: Decision, history, cycle, record) -> Decision:
    cfg = loop.cfg
    if (cfg.enable_stuck_wait_recovery and decision.action == "wait"
            and state.idle_streak >= cfg.stuck_wait_recovery_cycles):
        record["stuck_wait_recovery"] = f"{state.idle_streak} idle cycles: relaunching from the offline policy"
        return offline.builder_decision(PolicyInput(cycle, history, [], loop.phase_hint), seed=cfg.offline_seed)
    return decision


# ==================================================================== gate ====

def gate(loop: Loop, decision: Decision, trace: str, record: dict) -> tuple[Decision, dict | None]:
    """Quality gate, then the action's own checks. Returns the decision to act on and, for a run,
    the arguments of `runner.launch`."""
    from loop.gate.policy import check_configured
    from loop.gate.quality import downgrade, quality_gate

    quality = quality_gate(decision)
    record["quality_gate"] = {"ok": quality.ok, "reasons": quality.reasons, "housekeeping": quality.housekeeping}
    if not quality.ok:
        return downgrade(decision, quality), None
    label = safe_label(decision.run_label or f"{decision.action}-{decision.strategy_dimension or 'run'}")
    run_dir = loop.ws.runs / f"{label}-{trace}"
    if decision.action == "train":
        try:
            config_path = write_trainer_config(loop, decision, label, run_dir)
        except ConfigError as exc:
            record["quality_gate"] = {"ok": False, "reasons": [f"train_overlay: {exc}"],
                                      "housekeeping": quality.housekeeping}
            return wait_decision(f"train_overlay refused: {exc}"), None
        argv = [sys.executable, "-m", "loop.trainer", "--config", str(config_path), "--out", str(run_dir / "out")]
        return decision, {"label": label, "trace_id": trace, "kind": "train", "argv": argv, "run_dir": run_dir,
                          "config_path": str(config_path), "walltime_limit_seconds": walltime_limit(loop.cfg)}
    if decision.action == "run_command":
        verdict = check_configured(decision.command, loop.cfg, loop.ws.root)
        record["policy"] = {"allowed": verdict.allowed, "reasons": verdict.reasons}
        if not verdict.allowed:
            return wait_decision("command refused by the policy: " + "; ".join(verdict.reasons)), None
        return decision, {"label": label, "trace_id": trace, "kind": "command",
                          "argv": ["bash", "-c", decision.command], "run_dir": run_dir,
                          "walltime_limit_seconds": walltime_limit(loop.cfg)}
    return decision, None


def safe_label(label: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.strip())[:60].strip("-.")
    return keep or "run"


def stall_seconds(cfg: DaemonConfig) -> float | None:
    return cfg.run_stall_minutes * 60 if cfg.run_stall_minutes else None


def walltime_limit(cfg: DaemonConfig) -> float | None:
    return cfg.budget.max_walltime_minutes * 60 + 60 if cfg.budget.max_walltime_minutes else None


def write_trainer_config(loop: Loop, decision: Decision, label: str, run_dir: Path) -> Path:
    """The default trainer config + the decision's overlay + the daemon's budget caps (the tighter
    of the two wins), validated before anything starts."""
    base_path = Path(loop.cfg.default_trainer_config)
    base = read_yaml(base_path if base_path.is_absolute() else loop.repo_root / base_path)
    merged = deep_merge(base, decision.train_overlay)
    merged = deep_merge(merged, {"run": {"label": label}})
    caps = merged.get("budget", {}) or {}
    if not isinstance(caps, dict) or not all(v is None or isinstance(v, (int, float)) for v in caps.values()):
        raise ConfigError(f"train_overlay: budget must map cap names to numbers, got {caps!r:.200}")
    for key, limit in loop.cfg.budget.model_dump().items():
        if limit is not None:
            caps[key] = min(limit, caps[key]) if caps.get(key) is not None else limit
    merged["budget"] = caps
    validate(TrainerConfig, merged, "train_overlay")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.yaml"
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return path


def child_env(loop: Loop) -> dict[str, str]:
    """The run's environment: the daemon's, minus anything that looks like a secret."""
    env = {k: v for k, v in os.environ.items() if not looks_secret(k)}
    env["PYTHONPATH"] = str(loop.repo_root)
    return env


# ============================================================= run, judge ====

def monitor_seconds(cfg: DaemonConfig, decision: Decision | None) -> float:
    wanted = decision.monitor_seconds if decision and decision.monitor_seconds else cfg.default_monitor_seconds
    return float(max(1, min(wanted, cfg.max_monitor_seconds)))


def watch_and_judge(loop: Loop, state: LoopState, trace: str, cycle: int, decision: Decision | None,
                    record: dict) -> dict | None:
    run = state.active_run
    status = monitor(run, monitor_seconds(loop.cfg, decision), loop.should_stop)
    record["run"] = {"label": run.label, "pid": run.pid, "kind": run.kind, "log_path": run.log_path,
                     "monitor": status, "sandbox": run.sandbox}
    if status == "running":
        return None
    if status == "stopping":
        kill_run(run)
    outcome = judge(run, status)
    state.active_run = None
    record["run_outcome"] = outcome
    if outcome["status"] != "ok" and status != "stopping" and run.retry_of is None:
        outcome = repair_and_retry(loop, state, trace, cycle, run, outcome, record) or outcome
    finish_run(loop, state, run, outcome, cycle, trace, record)
    return outcome


def judge(run: ActiveRun, monitor_status: str) -> dict:
    code = exit_code(run)
    out = {"label": run.label, "kind": run.kind, "exit_code": code, "log_path": run.log_path,
           "run_dir": run.run_dir, "seconds": round(time.time() - run.started_at, 1)}
    if monitor_status == "timed_out":
        return {**out, "status": "timed_out", "error": "walltime limit reached; process group killed"}
    if monitor_status == "stopping":
        return {**out, "status": "interrupted", "error": "the daemon was asked to stop"}
    if monitor_status == "stalled":
        return {**out, "status": "stalled",
                "error": f"no output for {run.stall_seconds:.0f}s; the run's whole tree was killed"}
    if run.kind == "train":
        metrics_path = Path(run.run_dir) / "out" / "metrics.json"
        if metrics_path.exists() or metrics_path.is_symlink():
            try:
                metrics = json.loads(read_regular_text(metrics_path))
            except (OSError, ValueError) as exc:     # the run wrote it: it may be anything
                return {**out, "status": "failed", "error": f"unreadable metrics.json: {exc}"[:300]}
            if not isinstance(metrics, dict) or "status" not in metrics:
                return {**out, "status": "failed", "error": "metrics.json has no status"}
            out.update(status=metrics["status"], val_accuracy=(metrics.get("eval") or {}).get("accuracy"),
                       error=metrics.get("error"), budget_breach=metrics.get("budget_breach"))
            return out
    if code is None:
        return {**out, "status": "killed", "error": "the run died without an exit code"}
    return {**out, "status": "ok" if code == 0 else "failed", "error": None if code == 0 else f"exit {code}"}


def repair_and_retry(loop: Loop, state: LoopState, trace: str, cycle: int, run: ActiveRun, outcome: dict,
                     record: dict) -> dict | None:
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
    record["auto_repair"] = {"applied": fix.applied, "actions": fix.actions, "reason": getattr(fix, "reason", None)}
    if not fix.applied or not loop.cfg.auto_repair_retry_on_success:
        return None
    argv = fix.retry_command if isinstance(fix.retry_command, list) else ["bash", "-c", fix.retry_command]
    retry_dir = Path(run.run_dir + "-retry")
    if run.kind == "train" and "--out" in argv:
        argv = list(argv)
        argv[argv.index("--out") + 1] = str(retry_dir / "out")
    state.active_run = launch(f"{run.label}-retry", trace, run.kind, argv, retry_dir, cycle, loop.repo_root,
                              child_env(loop), retry_of=run.label, walltime_limit_seconds=run.walltime_limit_seconds,
                              sandbox=loop.sandbox, stall_seconds=run.stall_seconds)
    retry_run = state.active_run
    status = monitor(retry_run, max(monitor_seconds(loop.cfg, None), 60.0), loop.should_stop)
    if status == "running":                     # keep following it next cycle
        record["run_outcome_retry"] = {"status": "running", "label": retry_run.label}
        return {"label": retry_run.label, "status": "running"}
    if status == "stopping":
        kill_run(retry_run)
    retry = judge(retry_run, status)
    state.active_run = None
    record["run_outcome_retry"] = retry
    return retry


def follow_run(loop: Loop, state: LoopState, trace: str, cycle: int, record: dict) -> dict:
    """Monitor a run started in an earlier cycle (or by a daemon that crashed)."""
    run = state.active_run
    run.monitor_cycles += 1
    outcome = watch_and_judge(loop, state, trace, cycle, None, record)
    if outcome is None and run.monitor_cycles >= loop.cfg.stale_orphan_idle_cycles and not log_growing(run):
        kill_run(run)
        outcome = judge(run, "timed_out") | {"status": "stale_orphan",
                                             "error": f"no log progress for {run.monitor_cycles} cycles"}
        state.active_run = None
        finish_run(loop, state, run, outcome, cycle, trace, record)
    return outcome or {"label": run.label, "status": "running", "monitor_cycles": run.monitor_cycles}


def log_growing(run: ActiveRun, window_seconds: float = 300) -> bool:
    try:
        return time.time() - Path(run.log_path).stat().st_mtime < window_seconds
    except OSError:
        return False


def finish_run(loop: Loop, state: LoopState, run: ActiveRun, outcome: dict, cycle: int, trace: str,
               record: dict) -> None:
    """A run is over: remember it, and hand a finished training run to the promotion pipeline."""
    state.last_outcome = outcome
    state.failure_streak = 0 if outcome.get("status") == "ok" else state.failure_streak + 1
    if run.kind != "train" and outcome.get("kind") != "train":
        return
    out_dir = Path(outcome.get("run_dir", run.run_dir)) / "out"
    config = {}
    if (out_dir / "train_args.json").exists():
        try:
            config = json.loads(read_regular_text(out_dir / "train_args.json"))
        except (OSError, ValueError):
            config = {}
    append_history(loop.ws, RunRecord(label=outcome.get("label", run.label), cycle=cycle, trace=trace,
                                      config=config, ok=outcome.get("status") == "ok",
                                      score=outcome.get("val_accuracy") or 0.0,
                                      dimension=record.get("decision", {}).get("strategy_dimension"),
                                      minutes=round(outcome.get("seconds", 0) / 60.0, 3), run_dir=str(out_dir)))
    if outcome.get("status") == "ok" and (out_dir / "model.safetensors").exists():
        from loop.candidates.intake import submit_run

        try:
            state.last_promotion = submit_run(loop.cfg, loop.ws.root, out_dir, cycle, trace)
        except (LoopError, OSError, ValueError) as exc:
            state.last_promotion = {"error": f"hand-off failed: {exc}"}
        record["promotion"] = state.last_promotion


def evolution_window(loop: Loop, state: LoopState, cycle: int, trace: str, record: dict) -> None:
    """Heartbeat cycles are the evolution clock: a window opens on multiples of evo_period_cycles
    (and waits for the active run to end, so candidates never compete with it for the machine)."""
    from loop.candidates.scheduler import window_open

    if window_open(cycle, loop.cfg.evo_period_cycles):
        state.window_pending = True
    if not state.window_pending or state.active_run is not None:
        return
    from loop.candidates.window import run_window

    state.window_pending = False
    try:
        result = run_window(loop.cfg, loop.ws.root, cycle, None, trace, say=loop.say)
        record["evolution"] = {"gen_id": result.gen_id, "head": result.head,
                               "ranking": [{"name": o.name, "status": o.status, "score": o.gates.score}
                                           for o in result.ranking],
                               "proposal": result.proposal["proposed_head"] if result.proposal else None}
        state.last_promotion = {"evolution_window": record["evolution"]}
    except (LoopError, OSError, ValueError) as exc:
        record["evolution"] = {"error": redact(str(exc), loop.secrets)}


# ================================================================== record ====

def housekeeping(loop: Loop, decision: Decision, cycle: int, record: dict) -> None:
    ws, name = loop.ws, loop.cfg.worker_display_name
    added, refused = add_todos(ws.todo, decision.todo_new, name, cycle, BUILDER_TODO_CAP)
    resolved = resolve_todos(ws.todo, decision.resolve_shared_todo_ids, cycle)
    append_workpad(ws.workpad, WORKPAD_SECTIONS[0], redact(decision.notes_update, loop.secrets), cycle)
    append_workpad(ws.workpad, WORKPAD_SECTIONS[1], redact(decision.data_exploration_update, loop.secrets), cycle)
    record["housekeeping"] = {"todo_added": added, "todo_refused": refused, "todo_resolved": resolved}


def finish_cycle(loop: Loop, state: LoopState, cycle: int, trace: str, record: dict, t0: float,
                 line: str) -> LoopState:
    for role in ("builder", "mentor"):
        usage = record.get(f"tokens_{role}")
        if usage:
            state.tokens.setdefault(role, Usage()).add(Usage.model_validate(usage))
    record["tokens_total"] = {role: t.model_dump() for role, t in state.tokens.items()}
    record["seconds"] = round(time.monotonic() - t0, 3)
    state.cycle_seconds = (state.cycle_seconds + [record["seconds"]])[-20:]
    loop.events.append("cycle", trace, **json.loads(redact(json.dumps(record, default=str), loop.secrets)))
    gate_note = "" if record.get("quality_gate", {}).get("ok", True) else \
        " [gate: " + "; ".join(record["quality_gate"]["reasons"]) + "]"
    story = f"c{cycle:05d} [{trace}] {loop.cfg.worker_display_name}: {redact(line, loop.secrets)}{gate_note}"
    append_storyline(loop.ws.storyline, f"- {story}")
    loop.say(f"{time.strftime('%H:%M:%S')} {story} ({record['seconds']:.1f}s)")
    state.cycle = cycle
    state.save(loop.ws.state)
    write_heartbeat(loop.ws.heartbeat, cycle, trace, os.getpid(), state.active_run.label if state.active_run else None)
    return state
