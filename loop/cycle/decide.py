"""The cycle's decision, start to end: the Builder's decision (LLM, or the offline policy, or the
offline policy standing in for an LLM that cannot decide), the Mentor's review of it, and the gate it
must pass before anything runs (`gate_decision`: the quality gate, the overlay validated, no repeat,
the command policy), which hands the run its plan."""
from __future__ import annotations

import json
from pathlib import Path

from loop.agents import ladder, offline, prompts
from loop.agents.offline import PolicyInput
from loop.agents.schema import Decision, Review, wait_decision
from loop.agents.usage import estimate_tokens
from loop.config import DaemonConfig
from loop.cycle.loop import Loop, scrub
from loop.cycle.record import CycleRecord, GateEntry, LLMCall, MentorEntry, PolicyEntry
from loop.cycle.state import LoopState
from loop.domains import task_domain
from loop.errors import ConfigError, DomainError, LoopError
from loop.journal.history import RunRecord
from loop.journal.notes import add_todos, append_mentor_notes
from loop.run.plan import RunPlan, command_plan, plan_for, run_label, trainer_config
from loop.trainer.config import resolved
from loop.util.secrets import redact

MENTOR_TODO_CAP = 1


def decide(loop: Loop, state: LoopState, context_text: str, history: list[RunRecord], rec: CycleRecord
           ) -> tuple[Decision, str]:
    """The Builder's decision: from the LLM when one is configured, else the offline policy. When the
    LLM cannot decide (circuit open, budget spent, a failed call, or the gate refused its recent
    decisions), `builder.when_unavailable` says what the cycle does: `offline` asks the offline
    policy (source `offline-fallback`, the reason in `llm_fallback`), `wait` logs a wait."""
    if loop.builder is None:
        return offline_decision(loop, context_text, history, rec.cycle, state), "offline"
    fallback = loop.cfg.builder.when_unavailable == "offline"
    if fallback and state.llm_offline_until_cycle >= rec.cycle:
        rec.llm_fallback = (f"the quality gate refused {loop.cfg.llm_gate_refusal_limit} LLM decisions "
                            f"in a row: the offline policy decides until cycle {state.llm_offline_until_cycle}")
        return offline_decision(loop, context_text, history, rec.cycle, state), "offline-fallback"
    from loop.agents.llm import LLMCircuitOpen, LLMUnavailable

    system, user = prompts.builder_prompt(loop.cfg, loop.repo_root, context_text)
    rec.prompt_tokens_estimate = estimate_tokens(system + user)
    try:
        result = loop.builder.complete_json(system, user, Decision)
    except (LLMUnavailable, LoopError) as exc:
        rec.llm_error = redact(str(exc), loop.secrets)
        if isinstance(exc, LLMUnavailable):
            rec.tokens_builder = exc.usage                 # failed calls cost tokens too
        if isinstance(exc, LLMCircuitOpen):   # refused without a request; the daemon's timer waits it out
            rec.llm_circuit_open_s = round(exc.retry_in_seconds, 1)
        if fallback:
            rec.llm_fallback = f"Builder LLM unavailable: {rec.llm_error}"
            return offline_decision(loop, context_text, history, rec.cycle, state), "offline-fallback"
        return wait_decision(f"Builder LLM unavailable: {rec.llm_error}"), "llm-failed"
    rec.tokens_builder = result.usage
    rec.llm = LLMCall(attempts=result.attempts, repaired=result.repaired, mode=result.mode, seconds=result.seconds)
    return result.parsed, "llm"


def offline_decision(loop: Loop, context_text: str, history: list[RunRecord], cycle: int,
                     state: LoopState | None = None) -> Decision:
    todos = [line for line in context_text.splitlines() if line.startswith("T0")]
    return offline.builder_decision(policy_input(loop, cycle, history, todos, state), seed=loop.cfg.offline_seed)


def continuing(runs: list) -> list[str]:
    """The screens (run folders) that runs in flight continue, from their trainer configs."""
    out = []
    for run in runs:
        try:
            source = json.loads(Path(run.config_path).read_text()).get("run", {}).get("resume_from")
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if source:
            out.append(str(source))
    return out


def policy_input(loop: Loop, cycle: int, history: list[RunRecord], todos: list[str],
                 state: LoopState | None = None) -> PolicyInput:
    """What the offline policy needs: the history, the task, the runs in flight, the base config,
    the walltime cap (its cost model keeps every proposal under it) and what was trained (it never
    proposes a repeat)."""
    from loop.gate.repeats import trained_runs

    runs = state.active_runs if state else []
    blocked = state.blocked if state else None
    return PolicyInput(cycle, history, todos, loop.phase_hint, profile=loop.task_profile, in_flight=len(runs),
                       continuing=tuple(continuing(runs)),
                       base_config=loop.base_config(), walltime_cap_seconds=loop.walltime_cap_seconds(),
                       trained=trained_runs(history, runs),
                       refused=frozenset(blocked.fingerprints) if blocked else frozenset())


def count_gate_refusals(loop: Loop, state: LoopState, source: str, rec: CycleRecord) -> None:
    """Past `llm_gate_refusal_limit` LLM decisions refused in a row (quality gate, overlay or command
    policy), the offline policy decides for `llm_gate_refusal_offline_cycles` cycles."""
    if source != "llm":
        return
    refused = not rec.quality_gate.ok or (rec.policy is not None and not rec.policy.allowed)
    state.llm_gate_refusals = state.llm_gate_refusals + 1 if refused else 0
    cfg = loop.cfg
    if state.llm_gate_refusals >= cfg.llm_gate_refusal_limit and cfg.builder.when_unavailable == "offline":
        state.llm_offline_until_cycle = rec.cycle + cfg.llm_gate_refusal_offline_cycles
        state.llm_gate_refusals = 0
        rec.llm_gate_fallback = (f"{cfg.llm_gate_refusal_limit} LLM decisions refused in a row: "
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


def review_decision(loop: Loop, context_text: str, decision: Decision, history: list[RunRecord], why: str,
                    rec: CycleRecord) -> Review | None:
    """The Mentor's review (LLM, offline, or the offline mentor standing in); None when skipped."""
    cfg = loop.cfg
    web = ("unavailable: the endpoint offers no web-search tool" if cfg.mentor_require_web_search
           or cfg.mentor_web_search_mode != "off" else "off")
    rec.mentor = entry = MentorEntry(why=why, name=cfg.mentor_display_name, web_search=web)
    review = ask_mentor(loop, context_text, decision, history, why, rec)
    if review is None:
        return None
    failed = offline.failing(history)
    if failed and review.verdict == "on_track":       # an LLM that calls a failing night on track is overruled
        review = review.model_copy(update={
            "verdict": "off_track", "notes": f"{review.notes} [overruled: the last {len(failed)} runs failed, "
                                             f"{(failed[-1].failure or {}).get('key', 'no signature')}]".strip()})
        entry.overruled = "on_track while the last runs failed"
    entry.verdict, entry.critical_question = review.verdict, review.critical_question
    entry.challenge = review.challenge.model_dump() if review.challenge else None
    todos = review.todo_new if review.challenge else []       # none on continue
    if todos:
        entry.todo_added, _ = add_todos(loop.ws.todo, todos, cfg.mentor_display_name, rec.cycle, MENTOR_TODO_CAP)
    append_mentor_notes(loop.ws.mentor_notes, rec.cycle, rec.trace, cfg.mentor_display_name,
                        review.verdict, review.critical_question, review.notes)
    return review


def ask_mentor(loop: Loop, context_text: str, decision: Decision, history: list[RunRecord], why: str,
               rec: CycleRecord) -> Review | None:
    cfg, entry = loop.cfg, rec.mentor

    def offline_review() -> Review:
        return offline.mentor_review(policy_input(loop, rec.cycle, history, []), decision, cfg.offline_seed)

    if loop.mentor is None:
        entry.source = "offline"
        return offline_review()
    from loop.agents.llm import LLMUnavailable

    system, user = prompts.mentor_prompt(cfg, loop.repo_root, context_text,
                                         redact(decision.model_dump_json(), loop.secrets), why)
    try:
        result = loop.mentor.complete_json(system, user, Review)
    except (LLMUnavailable, LoopError) as exc:
        entry.source, entry.error = "llm-failed", redact(str(exc), loop.secrets)
        if isinstance(exc, LLMUnavailable):
            rec.tokens_mentor = exc.usage
        if cfg.mentor.when_unavailable != "offline":
            return None
        entry.source = "offline-fallback"
        return offline_review()
    rec.tokens_mentor = result.usage
    entry.source = "llm"
    return scrub(result.parsed, loop.secrets)


def stuck_wait_recovery(loop: Loop, state: LoopState, decision: Decision, history: list[RunRecord],
                        rec: CycleRecord) -> Decision:
    cfg = loop.cfg
    if (cfg.enable_stuck_wait_recovery and decision.action == "wait"
            and state.idle_streak >= cfg.stuck_wait_recovery_cycles):
        rec.stuck_wait_recovery = f"{state.idle_streak} idle cycles: relaunching from the offline policy"
        return offline.builder_decision(policy_input(loop, rec.cycle, history, [], state), seed=cfg.offline_seed)
    return decision


def gate_decision(loop: Loop, state: LoopState, decision: Decision, rec: CycleRecord
                  ) -> tuple[Decision, RunPlan | None]:
    """Quality gate, then the action's own checks (the overlay validated against the trainer config
    and never a repeat of a run, the command policy; none while a blocked daemon waits out its
    back-off). Returns the decision to act on and, for a run, its plan."""
    from loop.gate.policy import check_configured
    from loop.gate.quality import downgrade, quality_gate
    from loop.gate.repeats import blocked_wait, repeat_refusal

    quality = quality_gate(decision)
    rec.quality_gate = GateEntry(ok=quality.ok, reasons=quality.reasons, housekeeping=quality.housekeeping)
    if not quality.ok:
        return downgrade(decision, quality), None

    def refuse(reason: str) -> tuple[Decision, None]:
        rec.quality_gate = GateEntry(ok=False, reasons=[reason], housekeeping=quality.housekeeping)
        return wait_decision(f"refused: {reason}"), None

    if state.blocked is not None and decision.action in ("train", "run_command"):
        why = blocked_wait(state.blocked.next_try_at, state.blocked.signature.text())
        if why:
            return refuse(why)
    label = run_label(decision.run_label or f"{decision.action}-{decision.strategy_dimension or 'run'}")
    run_dir = loop.ws.runs / f"{label}-{rec.trace}"
    if decision.action == "train":
        try:
            overlay = ladder.resolve(decision, loop.base_config(), loop.run_history())
            config = trainer_config(loop.cfg, overlay, label)
        except ConfigError as exc:
            return refuse(f"train_overlay: {exc}")
        full = resolved(config)
        why = repeat_refusal(full, bool(decision.replica_of), loop.run_history(), state.active_runs,
                             state.blocked.fingerprints if state.blocked else [])
        if why:
            return refuse(why)
        try:             # the run sees the pixel cache read-only: decode what it will read now
            task_domain(loop.cfg).warm_cache([full["data"]["image_size"]])
        except (DomainError, OSError) as exc:
            return refuse(f"the task's images at {full['data']['image_size']}px: {exc}")
        return decision, plan_for(loop.cfg, config, label, rec.trace, run_dir)
    if decision.action == "run_command":
        if loop.sandbox is None or not loop.sandbox.active:    # the policy is a filter, not a boundary
            return refuse("run_command runs only inside the sandbox, and there is none here (sandbox: optional "
                          "without bubblewrap): the command policy alone cannot contain a shell line")
        verdict = check_configured(decision.command, loop.cfg, loop.ws.root)
        rec.policy = PolicyEntry(allowed=verdict.allowed, reasons=verdict.reasons)
        if not verdict.allowed:
            return wait_decision("command refused by the policy: " + "; ".join(verdict.reasons)), None
        return decision, command_plan(loop.cfg, decision.command, label, rec.trace, run_dir)
    return decision, None
