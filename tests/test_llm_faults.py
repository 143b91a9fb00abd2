"""LLM faults: the real `openai` client (through LLMClient) against the real local server
(tests/llm_server.py) injecting 429s with Retry-After, 500s, resets, timeouts and malformed or
truncated JSON. No call crashes, attempts stay bounded, the circuit breaker opens after repeated
failures, and the daemon waits it out instead of spinning."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from loop.agents.breaker import CircuitBreaker
from loop.agents.llm import LLMCircuitOpen, LLMClient, LLMUnavailable, max_requests_per_call
from loop.agents.schema import Decision
from loop.config import DaemonConfig, LLMRole, validate
from loop.daemon.timer import TimerInputs, next_pause
from loop.journal.events import EventLog
from tests.conftest import fault_tier, record_reliability, tiny_config_dict, wait_for
from tests.llm_server import FAULT_KINDS, FaultPlan, LLMServer

GOOD = '{"action": "wait", "rationale": "nothing to do", "run_label": "w1"}'
CLIENT_TIMEOUT_S = 0.2          # the timeout fault's delay must exceed it
CAMPAIGN_CALLS = {"ci": 1000, "long": 10_000}
FAULT_RATE = 0.3                # of HTTP requests
OUTAGE_CALLS = 20               # a full outage after the campaign: the breaker must open


class ManualClock:
    """The breaker's clock, moved by hand: no test sleeps through a cooldown."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_client(server, clock=time.monotonic, events: list | None = None, **role_fields) -> LLMClient:
    role = LLMRole(**{"base_url": server.base_url, "model": "test-model", "max_attempts": 3,
                      "timeout_seconds": CLIENT_TIMEOUT_S, "circuit_breaker_failures": 5,
                      "circuit_breaker_cooldown_seconds": 300, **role_fields})
    # A tiny backoff keeps 1,000 calls fast; Retry-After "0" does the same for 429s.
    return LLMClient(role, "builder", "sk-test-fault-key", events.append if events is not None else None,
                     backoff_base=0.001, backoff_max=0.004, clock=clock)


def kinds(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind]


# ============================================================ the campaign ====

@pytest.mark.faults
def test_fault_campaign_no_crash_bounded_attempts_and_the_breaker_opens():
    calls = CAMPAIGN_CALLS[fault_tier()]
    plan = FaultPlan(rate=FAULT_RATE, seed=20260107, content=GOOD, retry_after="0", delay_s=CLIENT_TIMEOUT_S * 2.5)
    clock, events = ManualClock(), []
    outcomes: Counter = Counter()
    per_call: Counter = Counter()          # server-side requests per call, by the call's tag
    ok_attempts: dict[str, int] = {}
    started = time.monotonic()
    with LLMServer(faults=plan) as server:
        client = make_client(server, clock, events)
        bound = max_requests_per_call(client.role)

        def call(tag: str) -> str:
            """One call as the loop makes it: a validated reply, or LLMUnavailable (never anything else)."""
            try:
                result = client.complete_json("be a builder", tag, Decision)
            except LLMCircuitOpen as exc:
                assert exc.retry_in_seconds > 0
                return "refused"
            except LLMUnavailable as exc:
                assert "sk-test-fault-key" not in str(exc)
                return "unavailable"
            assert isinstance(result.parsed, Decision) and result.parsed.rationale == "nothing to do"
            ok_attempts[tag] = result.attempts
            return "ok"

        def count_requests() -> int:
            taken = server.take_requests()
            per_call.update(r["body"]["messages"][1]["content"] for r in taken)
            return len(taken)

        # ---- 30% of requests faulted ----
        for i in range(calls):
            outcome = call(f"call {i}")
            outcomes[outcome] += 1
            sent = count_requests()
            if outcome == "refused":
                assert sent == 0                        # fail fast: no HTTP request
                clock.advance(client.unavailable_for_seconds())   # the loop waits out the cooldown
        campaign = dict(plan.injected)

        # ---- then a full outage: the breaker opens and the requests stop ----
        plan.rate = 1.0
        outage_sent = []
        for i in range(OUTAGE_CALLS):
            outcomes["outage_" + call(f"outage {i}")] += 1
            outage_sent.append(count_requests())
        time.sleep(plan.delay_s)                        # let a timed-out request's late arrival land
        count_requests()
    seconds = round(time.monotonic() - started, 2)

    # every call ended as a validated reply or LLMUnavailable, most of them a reply
    assert outcomes["ok"] + outcomes["unavailable"] + outcomes["refused"] == calls
    assert outcomes["ok"] >= 0.9 * calls
    # every kind of fault was injected, about 30% of the requests in all
    assert set(campaign) == set(FAULT_KINDS)
    http_attempts = sum(n for tag, n in per_call.items() if tag.startswith("call"))
    assert 0.2 < sum(campaign.values()) / http_attempts < 0.4
    # attempts bounded per call and in all; a reply's own count is never below what the server saw
    assert max(per_call.values()) <= bound
    assert http_attempts <= calls * bound and sum(outage_sent) <= OUTAGE_CALLS * bound
    assert all(per_call[tag] <= n <= bound for tag, n in ok_attempts.items())
    # the outage: after `circuit_breaker_failures` failed calls, no request at all
    failures = client.role.circuit_breaker_failures
    assert all(n > 0 for n in outage_sent[:failures]) and sum(outage_sent[failures:]) == 0
    assert outcomes["outage_refused"] == OUTAGE_CALLS - failures
    opened = kinds(events, "llm_circuit_open")
    assert opened and opened[-1]["failures"] == failures and opened[-1]["cooldown_s"] == 300
    assert client.circuit.times_opened == len(opened)

    record_reliability(
        "llm_faults", calls=calls, fault_rate=FAULT_RATE, faults_injected=sum(campaign.values()),
        by_kind=campaign, http_attempts=http_attempts, max_attempts_per_call=max(per_call.values()),
        attempts_bound_per_call=bound, ok=outcomes["ok"], unavailable=outcomes["unavailable"],
        refused_by_open_circuit=outcomes["refused"], breaker_opened=client.circuit.times_opened,
        outage_calls=OUTAGE_CALLS, outage_requests=sum(outage_sent),
        outage_refused_without_request=outcomes["outage_refused"], seconds=seconds)


# ========================================================= bounded attempts ====

def test_malformed_body_is_retried_not_raised(llm_server):
    # The SDK raises a bare JSONDecodeError for a 200 whose body is not JSON: it must not escape.
    llm_server.script({"malformed": True}, {"content": GOOD})
    result = make_client(llm_server).complete_json("s", "u", Decision)
    assert result.parsed.action == "wait" and result.attempts == 2


@pytest.mark.parametrize("step", [{"malformed": True}, {"truncated": True}, {"reset": True}],
                         ids=["malformed", "truncated", "reset"])
def test_bad_bodies_every_attempt_end_as_unavailable(llm_server, step):
    llm_server.script(*[step] * 3)
    with pytest.raises(LLMUnavailable, match="failed 3 attempt"):
        make_client(llm_server).complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 3


def test_worst_case_attempts_equal_the_bound(llm_server):
    # Every mode refused after a retry, then a bad reply and a bad repair: the most one call can send.
    refusal = {"status": 400, "error": "response_format json_schema is not supported"}
    llm_server.script({"status": 500}, refusal, {"status": 500}, refusal,          # json_schema, json_object_schema
                      {"status": 500}, refusal,                                      # json_object
                      {"status": 500}, {"content": "no json"},                       # off
                      {"status": 500}, {"content": "still no json"}, {"content": GOOD})   # the repair
    client = make_client(llm_server, max_attempts=2)
    with pytest.raises(LLMUnavailable, match="after one repair"):
        client.complete_json("s", "u", Decision)
    assert len(llm_server.requests) == max_requests_per_call(client.role) == 10


# ========================================================== the breaker ====

def test_breaker_states_with_an_injected_clock():
    clock = ManualClock()
    breaker = CircuitBreaker(failures_to_open=3, cooldown_seconds=60, clock=clock)
    assert [breaker.record_failure() for _ in range(3)] == [None, None, "open"]
    assert (breaker.state, breaker.allow(), breaker.seconds_until_retry()) == ("open", False, 60)
    clock.advance(59.5)
    assert not breaker.allow() and breaker.seconds_until_retry() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.state == "half_open" and breaker.allow()
    assert breaker.record_failure() == "open"           # a failed trial opens it again at once
    assert breaker.seconds_until_retry() == 60 and breaker.times_opened == 2
    clock.advance(60)
    assert breaker.record_success() == "closed" and breaker.state == "closed"
    assert breaker.consecutive_failures == 0 and breaker.record_success() is None
    with pytest.raises(ValueError):
        CircuitBreaker(failures_to_open=0, cooldown_seconds=1)


def test_breaker_opens_after_n_failed_calls_and_sends_nothing_until_the_cooldown(llm_server):
    # Empty script: the server answers 500 to everything.
    clock, events = ManualClock(), []
    client = make_client(llm_server, clock, events, max_attempts=2, circuit_breaker_failures=3,
                         circuit_breaker_cooldown_seconds=60)
    for _ in range(3):
        with pytest.raises(LLMUnavailable, match="failed 2 attempt"):
            client.complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 6 and client.circuit.state == "open"
    [opened] = kinds(events, "llm_circuit_open")
    assert opened["role"] == "builder" and opened["failures"] == 3 and opened["cooldown_s"] == 60
    assert "500" in opened["error"] or "InternalServerError" in opened["error"]

    for step in (0, 30, 29.9):                            # refused without a request until 60 s
        clock.advance(step)
        with pytest.raises(LLMCircuitOpen, match="no request sent") as info:
            client.complete_json("s", "u", Decision)
        assert info.value.retry_in_seconds == pytest.approx(60 - clock.now + 1000)
    assert len(llm_server.requests) == 6
    assert client.unavailable_for_seconds() == pytest.approx(0.1)

    clock.advance(0.1)                                    # half-open: one trial call, which fails
    with pytest.raises(LLMUnavailable, match="failed 2 attempt"):
        client.complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 8 and client.circuit.state == "open"
    assert len(kinds(events, "llm_circuit_open")) == 2 and client.unavailable_for_seconds() == 60


def test_half_open_success_closes_the_circuit(llm_server):
    clock, events = ManualClock(), []
    client = make_client(llm_server, clock, events, max_attempts=1, circuit_breaker_failures=2,
                         circuit_breaker_cooldown_seconds=10)
    llm_server.script({"status": 500}, {"status": 503})
    for _ in range(2):
        with pytest.raises(LLMUnavailable):
            client.complete_json("s", "u", Decision)
    clock.advance(10)
    llm_server.script({"content": GOOD}, {"status": 500}, {"content": GOOD})
    assert client.complete_json("s", "u", Decision).parsed.action == "wait"
    [closed] = kinds(events, "llm_circuit_closed")
    assert closed["role"] == "builder" and closed["failures"] == 2 and closed["cooldown_s"] == 10
    assert client.circuit.state == "closed" and client.unavailable_for_seconds() == 0
    # closed means counting afresh: one failure then a success does not open it
    with pytest.raises(LLMUnavailable):
        client.complete_json("s", "u", Decision)
    assert client.complete_json("s", "u", Decision).parsed.action == "wait"
    assert client.circuit.state == "closed" and len(kinds(events, "llm_circuit_open")) == 1


def test_each_client_has_its_own_breaker(llm_server):
    clock = ManualClock()
    builder = make_client(llm_server, clock, max_attempts=1, circuit_breaker_failures=1)
    mentor = make_client(llm_server, clock, max_attempts=1, circuit_breaker_failures=1)
    with pytest.raises(LLMUnavailable):
        builder.complete_json("s", "u", Decision)
    assert builder.circuit.state == "open" and mentor.circuit.state == "closed"
    llm_server.script({"content": GOOD})
    assert mentor.complete_json("s", "u", Decision).parsed.action == "wait"


# ============================================================ the timer ====

def test_timer_waits_out_an_open_circuit_even_past_its_maximum():
    quiet = next_pause(TimerInputs(base_seconds=5), min_seconds=0.5, max_seconds=120)
    assert quiet.seconds == 5
    decision = next_pause(TimerInputs(base_seconds=5, llm_circuit_open_seconds=250.0004),
                          min_seconds=0.5, max_seconds=120)
    assert decision.seconds == 250.001                     # rounded up: never wakes a hair early
    assert any("circuit open" in r for r in decision.reasons)
    # a PHASE window still wins: a cycle before the circuit half-opens only waits, with no request
    phase_first = next_pause(TimerInputs(base_seconds=5, llm_circuit_open_seconds=250, seconds_to_phase=100),
                             min_seconds=0.5, max_seconds=120)
    assert phase_first.seconds == 50


# ========================================================== the daemon ====

def daemon_cfg(tmp_path: Path, base_url: str, **builder) -> DaemonConfig:
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict()))
    data = {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
            "daemon_poll_seconds": 0, "mentor_enabled": False,
            "builder": {"base_url": base_url, "model": "test", "max_attempts": 2, "timeout_seconds": 5,
                        "circuit_breaker_failures": 2, "when_unavailable": "wait", **builder},
            "evolution": {"rules": {"per_class_accuracy_floor": None}}, "phase": {"schedule": "off"},
            "adaptive_timer": {"min_seconds": 0}}
    return validate(DaemonConfig, data, "<test>")


def finish_step() -> dict:
    return {"content": json.dumps({"action": "finish", "run_label": "finish-now", "strategy_dimension": "evaluation",
                                   "rationale": "The endpoint is back; finishing the test run here."})}


@pytest.mark.slow
def test_daemon_waits_out_the_open_circuit_then_resumes(tmp_path, llm_server):
    """A server that fails every call: two failed cycles open the Builder's circuit, the timer sleeps
    until it half-opens (no request meanwhile), and the trial call, now answered, closes it."""
    from loop.daemon.process import run_daemon, workspace_of

    cooldown = 1.5
    cfg = daemon_cfg(tmp_path, llm_server.base_url, circuit_breaker_cooldown_seconds=cooldown)
    ws = workspace_of(cfg)
    events_path = ws.root / "events.jsonl"
    at_open: dict = {}

    def heal_after_open() -> None:     # the endpoint comes back once the circuit has opened
        try:
            wait_for(lambda: (events_path.exists()
                              and any(e["kind"] == "llm_circuit_open" for e in EventLog(events_path))),
                     15, "the circuit to open")
            at_open["requests"] = len(llm_server.requests)
        finally:
            llm_server.script(finish_step())

    helper = threading.Thread(target=heal_after_open, daemon=True)
    helper.start()
    state = run_daemon(cfg, ws, max_cycles=6, say=lambda *_: None)
    helper.join(5)

    events = list(EventLog(events_path))
    cycles = [e for e in events if e["kind"] == "cycle"]
    assert [c["decision"]["action"] for c in cycles] == ["wait", "wait", "finish"]   # no spinning
    for failed in cycles[:2]:
        assert failed["decision"]["source"] == "llm-failed"
        assert failed["decision"]["rationale"].startswith("Builder LLM unavailable")
        assert "failed 2 attempt" in failed["llm_error"]
    assert state.stop_reason == "the Builder chose finish"
    [opened] = [e for e in events if e["kind"] == "llm_circuit_open"]
    assert opened["failures"] == 2 and opened["cooldown_s"] == cooldown
    [closed] = [e for e in events if e["kind"] == "llm_circuit_closed"]
    assert closed["role"] == "builder"
    # after the open: the timer slept at least the remaining cooldown, and no request came sooner
    timer = [e for e in events if e["kind"] == "timer"][-1]
    assert timer["inputs"]["llm_circuit_open_seconds"] > cooldown - 0.5
    assert timer["seconds"] >= timer["inputs"]["llm_circuit_open_seconds"]
    assert any("circuit open" in r for r in timer["reasons"])
    assert at_open["requests"] == 4 and len(llm_server.requests) == 5
    trial, last_failure = llm_server.requests[4]["at"], llm_server.requests[3]["at"]
    assert trial - last_failure >= cooldown


@pytest.mark.slow
def test_daemon_sleeps_through_a_long_open_circuit_and_still_stops_on_request(tmp_path, llm_server):
    """With the default 300 s cooldown the daemon's next pause covers it; nothing is sent while it
    sleeps, and a stop request still ends the sleep at once."""
    from loop.daemon.process import run_daemon, workspace_of

    cfg = daemon_cfg(tmp_path, llm_server.base_url)          # cooldown: the default 300 s
    ws = workspace_of(cfg)
    events_path = ws.root / "events.jsonl"
    seen: dict = {}

    def stop_while_backing_off() -> None:
        try:
            wait_for(lambda: events_path.exists() and any(e["kind"] == "timer" and e["seconds"] >= 290
                                                          for e in EventLog(events_path)), 120, "a long timer")
            seen["before"] = len(llm_server.requests)
            time.sleep(0.5)
            seen["after"] = len(llm_server.requests)
        finally:
            ws.stop_request.touch()

    helper = threading.Thread(target=stop_while_backing_off, daemon=True)
    helper.start()
    started = time.monotonic()
    state = run_daemon(cfg, ws, max_cycles=10, say=lambda *_: None)
    helper.join(5)

    events = list(EventLog(events_path))
    timer = [e for e in events if e["kind"] == "timer"][-1]
    # the bound is the daemon's own planned pause (>= 290 s), not a guess at this machine's speed
    assert time.monotonic() - started < timer["seconds"]     # stopped out of the 300 s sleep
    assert state.cycle == 2 and seen == {"before": 4, "after": 4} and len(llm_server.requests) == 4
    assert 299 <= timer["inputs"]["llm_circuit_open_seconds"] <= timer["seconds"]
    assert [e["reason"] for e in events if e["kind"] == "daemon_stop"] == ["stop requested"]


def test_a_cycle_during_an_open_circuit_waits_without_a_request(tmp_path, llm_server):
    from loop.cycle.cycle import run_cycle
    from loop.cycle.state import LoopState
    from loop.daemon.process import build_loop, timer_decision, workspace_of

    cfg = daemon_cfg(tmp_path, llm_server.base_url)
    ws = workspace_of(cfg).ensure()
    loop = build_loop(cfg, ws, lambda: False, lambda *_: None)
    state = LoopState()
    for _ in range(3):
        state = run_cycle(loop, state)
    assert len(llm_server.requests) == 4                      # cycles 1 and 2 only
    third = [e for e in EventLog(ws.root / "events.jsonl") if e["kind"] == "cycle"][-1]
    assert third["decision"]["action"] == "wait" and third["decision"]["source"] == "llm-failed"
    assert "circuit open" in third["decision"]["rationale"] and "no request sent" in third["llm_error"]
    assert 290 < third["llm_circuit_open_s"] <= 300
    pause = timer_decision(loop, state)
    assert pause.seconds >= loop.builder.unavailable_for_seconds() > 290
