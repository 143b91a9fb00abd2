"""One cycle of the research loop, readable top to bottom:

    follow the active run, if one is still going
    know the data (the data report, built at the first cycle on a task and when the data changes)
    decide  (Builder: LLM or offline policy)  ->  review (Mentor, on cadence or when stuck)
    gate    (quality gate; trainer overlay validated; command policy for run_command)
    run     (structured trainer run or policy-checked command, in its own process group)
    judge   (exit code, metrics; one auto-repair pass and one retry; hand-off to the candidate path)
    record  (events.jsonl, notes, storyline, state.json, heartbeat)

Every step writes into one typed `CycleRecord` (loop/cycle/record.py), the `cycle` event.
"""
from __future__ import annotations

import json
import os
import time

from loop.agents.context import build_context, search_context
from loop.agents.schema import Decision
from loop.agents.usage import Usage
from loop.cycle import finishup
from loop.cycle.dataprofile import refresh_data_report
from loop.cycle.decide import (
    count_gate_refusals,
    decide,
    gate_decision,
    mentor_due,
    review_decision,
    stuck_wait_recovery,
)
from loop.cycle.failures import unblock
from loop.cycle.loop import Loop, new_trace_id, scrub
from loop.cycle.record import (
    CycleRecord,
    DecisionEntry,
    FinishUpEntry,
    HousekeepingEntry,
    RunStart,
)
from loop.cycle.state import LoopState, write_heartbeat
from loop.cycle.watch import evolution_window, follow_runs, start, watch_and_judge
from loop.journal.notes import WORKPAD_SECTIONS, add_todos, append_storyline, append_workpad, resolve_todos
from loop.run.judge import RunOutcome, outcome_of
from loop.run.plan import RunPlan
from loop.util.secrets import redact, workspace_secrets

__all__ = ["Loop", "run_cycle"]

BUILDER_TODO_CAP = 2


# ================================================================ the cycle ====

def run_cycle(loop: Loop, state: LoopState) -> LoopState:
    rec = CycleRecord(cycle=state.cycle + 1, trace=new_trace_id(state.cycle + 1))
    loop.current["trace"] = rec.trace
    loop.secrets = [*loop.base_secrets, *workspace_secrets(loop.ws.root)]    # a dashboard started since: its token
    t0 = time.monotonic()

    if loop.ws.unblock_request.exists():                    # `llmloop unblock` while the daemon runs
        loop.ws.unblock_request.unlink(missing_ok=True)
        loop.say(unblock(state, loop.events, "operator: llmloop unblock", rec.trace))

    # ---- finish-up: a deadline overrides the normal flow ----
    forced = finish_up(loop, state, rec)
    if forced == "report":
        return finish_cycle(loop, state, rec, t0, line="finish-up: the deadline is here; the daemon writes the "
                                                       "final reports and stops")

    if state.active_runs:                                   # runs from earlier cycles
        line = follow_active(loop, state, rec)
        if line is not None:
            return finish_cycle(loop, state, rec, t0, line=line)

    # ---- know the data: the first cycle on a task, and again when its data changes ----
    refresh_data_report(loop, rec)

    # ---- decide, review ----
    decision, source = decide_and_review(loop, state, rec, forced)

    # ---- gate ----
    decision, plan = gate_decision(loop, state, decision, rec)
    count_gate_refusals(loop, state, source, rec)

    # ---- run, judge ----
    outcome = run_and_judge(loop, state, decision, plan, rec)

    # ---- record ----
    housekeeping(loop, decision, rec)
    evolution_window(loop, state, rec)
    state.note_action(decision.action)
    state.idle_streak = 0 if plan is not None else state.idle_streak + 1
    state.last_decision = {"action": decision.action, "label": decision.run_label, "source": source,
                           "dimension": decision.strategy_dimension, "gate_ok": rec.quality_gate.ok,
                           "gate_reasons": rec.quality_gate.reasons}
    return finish_cycle(loop, state, rec, t0, line=cycle_line(decision, source, outcome))


def follow_active(loop: Loop, state: LoopState, rec: CycleRecord) -> str | None:
    """Follow the runs of earlier cycles. Returns the cycle's line when no slot is free for a new
    decision (the cycle ends there; with one run at a time: the next cycle decides), else None."""
    followed = follow_runs(loop, state, rec)
    rec.followed_runs = followed
    rec.followed_run = followed[0]
    line = "; ".join(f"monitor `{f.label}` -> {f.status}" + (f" val_acc {f.val_accuracy:.4f}" if f.val_accuracy
                                                               else "") for f in followed)
    if loop.cfg.max_concurrent_runs == 1 or len(state.active_runs) >= loop.cfg.max_concurrent_runs \
            or loop.should_stop():
        evolution_window(loop, state, rec)
        return line
    return None


def decide_and_review(loop: Loop, state: LoopState, rec: CycleRecord,
                      forced: Decision | str | None) -> tuple[Decision, str]:
    """The Builder's decision (or finish-up's), then the Mentor's review when due: (decision, source)."""
    history = loop.run_history()
    context = build_context(loop.ws, rec.cycle, history, state.recent_actions,
                            state.last_outcome.model_dump() if state.last_outcome else None,
                            ", ".join(r.label for r in state.active_runs) or None,
                            promotion_note=state.promotion_note(),
                            extra={**phase_section(state), **gate_section(state)},
                            finish_up=finishup.context_text(loop.ws.finish_up),
                            search_text=search_context(loop.task_profile, loop.phase_hint, loop.base_config(),
                                                       history))
    context_text = redact(context.render(), loop.secrets)
    if isinstance(forced, Decision):
        decision, source = forced, "finish-up"
    else:
        decision, source = decide(loop, state, context_text, history, rec)
    decision = scrub(decision, loop.secrets)       # an LLM that echoes a secret: nothing downstream sees it
    rec.decision = DecisionEntry(source=source, **decision.model_dump())

    due, why = mentor_due(loop.cfg, rec.cycle, state)
    if due and source != "finish-up":
        review = review_decision(loop, context_text, decision, history, why, rec)
        if review is not None:
            state.last_mentor_cycle = rec.cycle
            applied = (review.verdict == "off_track" and review.challenge is not None
                       and loop.cfg.mentor_apply_suggestions)
            rec.mentor.challenge_applied = applied
            if applied:
                decision, source = review.challenge, "mentor"
    return stuck_wait_recovery(loop, state, decision, history, rec), source


def run_and_judge(loop: Loop, state: LoopState, decision: Decision, plan: RunPlan | None,
                  rec: CycleRecord) -> RunOutcome | None:
    """Start the gated plan; with one run at a time, watch and judge it now (its outcome), else it is
    followed from the next cycle (None)."""
    if plan is None:
        if decision.action == "finish":
            state.stop_reason = "the Builder chose finish"
        return None
    run = start(loop, plan, rec.cycle, dimension=decision.strategy_dimension)
    if run is None:
        return None
    state.active_runs.append(run)
    if loop.cfg.max_concurrent_runs == 1:
        return watch_and_judge(loop, state, run, decision, rec)
    # several in flight: every one is followed together from the next cycle
    rec.run = RunStart(label=run.label, pid=run.pid, kind=run.kind, log_path=run.log_path,
                       monitor="started", sandbox=run.sandbox, device=run.device, executor=run.executor)
    return None


def cycle_line(decision: Decision, source: str, outcome: RunOutcome | None) -> str:
    """The cycle's one line (daemon log, workpad): what was decided and how the run ended."""
    line = f"{decision.action} `{decision.run_label}`" + (f" ({decision.strategy_dimension})"
                                                           if decision.strategy_dimension else "")
    if source == "offline-fallback":
        line += " [offline policy: the Builder LLM was unavailable]"
    if outcome:
        line += f" -> {outcome.status}" + (f" val_acc {outcome.val_accuracy:.4f}" if outcome.val_accuracy else "")
        line += f" ({outcome.signature.text()})" if outcome.signature else ""
    return line


def gate_section(state: LoopState) -> dict[str, str]:
    """Why the gate refused the last decision, and what the daemon is blocked on: the Builder must
    see both to propose something else."""
    out = {}
    last = state.last_decision or {}
    if last and not last.get("gate_ok", True) and last.get("gate_reasons"):
        out["Your last decision was refused"] = "\n".join(f"- {r}" for r in last["gate_reasons"])
    if state.blocked is not None:
        out["Blocked"] = (f"{state.blocked.text()}. Configurations that failed this way are refused; propose "
                          "a different one (or the fix for this failure).")
    return out


def phase_section(state: LoopState) -> dict[str, str]:
    """What the last PHASE deep evaluation taught the loop, for the Builder's prompt."""
    if not (state.fitness_baselines or state.phase_recommendations):
        return {}
    return {"PHASE deep evaluation": json.dumps({"fitness_baselines": state.fitness_baselines,
                                                 "flagged_variants": state.flagged_variants[:10],
                                                 "search_space_recommendations": state.phase_recommendations})}


# =============================================================== finish-up ====

def finish_up(loop: Loop, state: LoopState, rec: CycleRecord) -> Decision | str | None:
    """Returns a final-round Decision, 'report' once the reports are due (the request marked
    `reporting`: the daemon writes them after this cycle is recorded), or None (carry on)."""
    from loop.agents.offline import best_run

    request = finishup.load(loop.ws.finish_up)
    now = finishup.now_utc()
    if request is None or not request.is_active(now):
        return None
    if request.status == "scheduled":
        request.status = "active"
        finishup.save(loop.ws.finish_up, request)
    best = best_run(loop.run_history())
    step = finishup.next_step(request, now, bool(state.active_runs), best.minutes if best else None)
    rec.finish_up = FinishUpEntry(step=step, deadline=request.deadline_utc,
                                  minutes_left=round(request.minutes_to_deadline(now), 1))
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
    for run in list(state.active_runs):                   # out of time: the runs cannot finish
        loop.runner().kill(run)
        rec.run_outcome = outcome_of(run, "stopping").model_copy(update={"error": "finish-up deadline reached"})
        state.drop_run(run)
    request.status = "reporting"
    finishup.save(loop.ws.finish_up, request)
    return "report"


# ==================================================================== gate ====

# ================================================================== record ====

def housekeeping(loop: Loop, decision: Decision, rec: CycleRecord) -> None:
    ws, name = loop.ws, loop.cfg.worker_display_name
    added, refused = add_todos(ws.todo, decision.todo_new, name, rec.cycle, BUILDER_TODO_CAP)
    resolved = resolve_todos(ws.todo, decision.resolve_shared_todo_ids, rec.cycle)
    append_workpad(ws.workpad, WORKPAD_SECTIONS[0], redact(decision.notes_update, loop.secrets), rec.cycle)
    append_workpad(ws.workpad, WORKPAD_SECTIONS[1], redact(decision.data_exploration_update, loop.secrets), rec.cycle)
    rec.housekeeping = HousekeepingEntry(todo_added=added, todo_refused=refused, todo_resolved=resolved)


def finish_cycle(loop: Loop, state: LoopState, rec: CycleRecord, t0: float, line: str) -> LoopState:
    """Tokens into the totals, then the event, the storyline, state.json and the heartbeat."""
    for role, usage in (("builder", rec.tokens_builder), ("mentor", rec.tokens_mentor)):
        if usage is not None:
            state.tokens.setdefault(role, Usage()).add(usage)
    rec.tokens_total = {role: usage.model_copy() for role, usage in state.tokens.items()}
    rec.seconds = round(time.monotonic() - t0, 3)
    state.cycle_seconds = (state.cycle_seconds + [rec.seconds])[-20:]
    loop.events.append("cycle", rec.trace, **json.loads(redact(json.dumps(rec.event_fields()), loop.secrets)))
    if rec.keeps:                    # real gains and ties, as such, in the storyline
        line += " [" + "; ".join(k.text() for k in rec.keeps) + "]"
    gate_note = "" if rec.quality_gate is None or rec.quality_gate.ok else \
        " [gate: " + "; ".join(rec.quality_gate.reasons) + "]"
    story = f"c{rec.cycle:05d} [{rec.trace}] {loop.cfg.worker_display_name}: {redact(line, loop.secrets)}{gate_note}"
    append_storyline(loop.ws.storyline, f"- {story}")
    loop.say(f"{time.strftime('%H:%M:%S')} {story} ({rec.seconds:.1f}s)")
    state.cycle = rec.cycle
    state.save(loop.ws.state)
    write_heartbeat(loop.ws.heartbeat, rec.cycle, rec.trace, os.getpid(),
                    ", ".join(r.label for r in state.active_runs) or None)
    return state
