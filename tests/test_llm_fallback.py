"""A night is never lost to the LLM: with `when_unavailable: offline` (the Builder's default) the
offline policy decides while the endpoint is down, the budget is spent, or the gate keeps refusing
the LLM's decisions, and the loop goes back to the LLM when it can. Each such decision is marked
with its source; status shows the negotiated mode, the tokens and the cost.

Real cycles (`run_cycle`) against the real HTTP server of tests/llm_server.py, stopped and started
again on the same port, with real (tiny) training runs.
"""
from __future__ import annotations

import json

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.cycle.cycle import run_cycle
from loop.cycle.state import LoopState
from loop.daemon.process import build_loop, workspace_of
from loop.daemon.status import render, status_info
from loop.journal.events import EventLog
from tests.conftest import tiny_config_dict
from tests.llm_server import LLMServer


def make_cfg(tmp_path, base_url: str, **extra) -> DaemonConfig:
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict()))
    data = {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
            "daemon_poll_seconds": 0, "mentor_enabled": False, "evo_period_cycles": 1000,
            "builder": {"base_url": base_url, "model": "tiny", "max_attempts": 1, "timeout_seconds": 5},
            "evolution": {"rules": {"per_class_accuracy_floor": None}}, "phase": {"schedule": "off"},
            "adaptive_timer": {"min_seconds": 0}, "sandbox": "optional"}
    data.update(extra)
    return validate(DaemonConfig, data, "<test>")


def research(**fields) -> dict:
    body = {"action": "research", "run_label": "read-the-leaderboard", "strategy_dimension": "evaluation",
            "rationale": "Reading the last results before choosing the next experiment."}
    return {"content": json.dumps(body | fields)}


def cycles(ws) -> list[dict]:
    return [e for e in EventLog(ws.root / "events.jsonl") if e["kind"] == "cycle"]


def run_cycles(cfg, n: int, state: LoopState | None = None) -> LoopState:
    ws = workspace_of(cfg).ensure()
    loop = build_loop(cfg, ws, lambda: False, lambda *_: None)
    state = state or LoopState()
    for _ in range(n):
        state = run_cycle(loop, state)
    return state


@pytest.mark.slow
def test_server_down_mid_run_then_back(tmp_path):
    server = LLMServer().__enter__()
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    cfg = make_cfg(tmp_path, server.base_url)
    server.script(research())
    state = run_cycles(cfg, 1)
    server.__exit__(None, None, None)                         # the LLM server goes away

    state = run_cycles(cfg, 1, state)                         # refused connection: the offline policy trains
    with LLMServer(port=port) as back:                        # ... and it comes back on the same port
        back.script(research(run_label="back-on-the-llm"))
        state = run_cycles(cfg, 1, state)
        assert len(back.requests) == 1

    ws = workspace_of(cfg)
    first, down, again = cycles(ws)
    assert [c["decision"]["source"] for c in (first, down, again)] == ["llm", "offline-fallback", "llm"]
    assert down["decision"]["action"] == "train" and down["run_outcome"]["status"] == "ok"
    assert "Builder LLM unavailable" in down["llm_fallback"] and "Connection" in down["llm_error"]
    assert down["tokens_builder"]["failed_calls"] == 1 and down["tokens_builder"]["calls"] == 1
    assert again["decision"]["run_label"] == "back-on-the-llm"
    assert "[offline policy: the Builder LLM was unavailable]" in (ws.root / "notes" / "storyline.md").read_text()
    assert state.tokens["builder"].calls == 3 and state.tokens["builder"].failed_calls == 1


def test_with_wait_chosen_the_cycle_waits_instead(tmp_path):
    with LLMServer() as server:
        url = server.base_url
    cfg = make_cfg(tmp_path, url, builder={"base_url": url, "model": "tiny", "max_attempts": 1,
                                           "when_unavailable": "wait"})
    run_cycles(cfg, 1)
    [only] = cycles(workspace_of(cfg))
    assert only["decision"]["action"] == "wait" and only["decision"]["source"] == "llm-failed"
    assert "run" not in only


@pytest.mark.slow
def test_budget_spent_the_offline_policy_takes_over_and_status_says_so(tmp_path):
    with LLMServer() as server:
        cfg = make_cfg(tmp_path, server.base_url, llm_budget={"max_tokens": 20},
                       llm_prices={"tiny": {"input_per_million": 100.0, "output_per_million": 1000.0}})
        server.script(research(), research(), research())
        state = run_cycles(cfg, 3)
        assert len(server.requests) == 2                    # the third cycle sent nothing

    ws = workspace_of(cfg)
    events = list(EventLog(ws.root / "events.jsonl"))
    [spent] = [e for e in events if e["kind"] == "llm_budget_spent"]
    assert spent["reason"] == "LLM token budget spent: 30 of 20 tokens"
    third = cycles(ws)[2]
    assert third["decision"]["source"] == "offline-fallback" and "budget spent" in third["llm_fallback"]
    cost = 2 * (10 * 100 + 5 * 1000) / 1e6
    assert state.tokens["builder"].cost == cost and state.tokens["builder"].total_tokens == 30
    assert cycles(ws)[1]["tokens_total"]["builder"]["cost"] == cost
    text = render(status_info(cfg, ws))
    assert "tokens: builder 30 tokens (2 calls), cost 0.0120" in text
    assert "LLM cost so far: 0.0120 (0.0040 per cycle)" in text
    assert "LLM budget: SPENT (LLM token budget spent: 30 of 20 tokens)" in text
    assert f"LLM tiny at {cfg.builder.base_url} (mode json_schema; when unavailable: offline)" in text
    from loop.report import generate_reports

    paper = generate_reports(ws.root, 3, "", progress=False)["paper"].read_text()
    assert "- LLM tokens: builder 30 tokens (2 calls), cost 0.0120; mentor 0 tokens (0 calls)." in paper
    assert "- LLM cost: 0.0120 in all, 0.0040 per cycle." in paper
    assert "The offline policy decided 1 cycle while the Builder LLM was unavailable" in paper


@pytest.mark.slow
def test_gate_refusals_in_a_row_hand_the_builder_to_the_offline_policy(tmp_path):
    poor = {"content": json.dumps({"action": "train", "rationale": "10", "run_label": "run"})}
    with LLMServer() as server:
        cfg = make_cfg(tmp_path, server.base_url, llm_gate_refusal_limit=2, llm_gate_refusal_offline_cycles=1)
        server.script(poor, poor, research())
        run_cycles(cfg, 4)
        assert len(server.requests) == 3                    # cycle 3 was decided offline

    sources = [(c["decision"]["source"], c["quality_gate"]["ok"]) for c in cycles(workspace_of(cfg))]
    assert sources == [("llm", False), ("llm", False), ("offline-fallback", True), ("llm", True)]
    second, third = cycles(workspace_of(cfg))[1:3]
    assert "2 LLM decisions refused in a row" in second["llm_gate_fallback"]
    assert "quality gate refused 2 LLM decisions" in third["llm_fallback"]


def test_valid_but_poor_decisions_are_refused_with_reasons(tmp_path):
    """What a small model may well say: schema-valid, but a one-word rationale or an absurd lr."""
    lr_200 = {"content": json.dumps({"action": "train", "run_label": "lr-sweep-high",
                                     "strategy_dimension": "optimization",
                                     "rationale": "A much larger learning rate should converge faster on this task.",
                                     "train_overlay": {"optim": {"lr": 200}}})}
    terse = {"content": json.dumps({"action": "train", "rationale": "10", "run_label": "run"})}
    with LLMServer() as server:
        cfg = make_cfg(tmp_path, server.base_url)
        server.script(lr_200, terse)
        run_cycles(cfg, 2)
    first, second = cycles(workspace_of(cfg))
    assert not first["quality_gate"]["ok"] and "optim.lr" in " ".join(first["quality_gate"]["reasons"])
    assert not second["quality_gate"]["ok"] and any("rationale" in r for r in second["quality_gate"]["reasons"])
    assert "run" not in first and "run" not in second
