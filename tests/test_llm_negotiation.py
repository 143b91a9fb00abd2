"""Structured-output negotiation against the refusal shapes real servers send, the mode kept per
endpoint across clients (a restart), every request counted (failed ones, replies without usage),
cost from the price table, the spend cap, and `llmloop llm probe`.

Against tests/llm_server.py, a real HTTP server driven by a script: the refusal bodies in its
REFUSALS are copied from real servers (llama-cpp-python, FastAPI-based servers, OpenAI), so these
tests run in CI without a model; bench/llm_compat.py runs the same client against llama-cpp-python's
own server with a real model.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from loop.agents.formats import ModeStore, is_format_refusal
from loop.agents.llm import LLMBudgetSpent, LLMClient, LLMUnavailable
from loop.agents.schema import Decision
from loop.agents.usage import SpendCap, estimate_tokens
from loop.config import LLMRole, ModelPrice
from tests.llm_server import REFUSALS, LLMServer

GOOD = json.dumps({"action": "wait", "rationale": "Nothing to run until the last result is read.",
                   "run_label": "wait-for-result"})
REPO = str(__import__("pathlib").Path(__file__).resolve().parents[1])


def client_for(server, *, store=None, events=None, price=None, cap=None, **fields) -> LLMClient:
    role = LLMRole(**{"base_url": server.base_url, "model": "tiny", "max_attempts": 4,
                      "timeout_seconds": 5.0, **fields})
    return LLMClient(role, "builder", "sk-test-key-123456", events.append if events is not None else None,
                     price=price, spend_cap=cap, mode_store=store, backoff_base=0.01, backoff_max=0.02)


def formats(server) -> list:
    return [(r["body"].get("response_format") or {}).get("type") for r in server.requests]


@pytest.mark.parametrize("shape", ["llama_cpp_500", "fastapi_422", "openai_400", "grammar_500"])
def test_a_format_refusal_of_any_status_moves_on_at_once(llm_server, shape):
    # max_attempts 4: a refusal retried as transient would cost 4 requests; it must cost one.
    llm_server.script(REFUSALS[shape], {"content": GOOD})
    events: list[dict] = []
    result = client_for(llm_server, events=events).complete_json("s", "u", Decision)
    assert result.mode == "json_object_schema" and result.attempts == 2
    assert formats(llm_server) == ["json_schema", "json_object"]
    assert "schema" in llm_server.requests[1]["body"]["response_format"]
    assert [e["kind"] for e in events] == ["llm_format_fallback", "llm_format_negotiated"]
    assert "llm_retry" not in [e["kind"] for e in events]


def test_a_plain_500_is_still_transient_and_retried(llm_server):
    llm_server.script({"status": 500, "error": "upstream overloaded"}, {"content": GOOD})
    result = client_for(llm_server).complete_json("s", "u", Decision)
    assert result.mode == "json_schema" and result.attempts == 2     # same mode, retried


def test_refusal_recognition_needs_the_format_named(llm_server):
    import openai

    sdk = openai.OpenAI(base_url=llm_server.base_url, api_key="x", max_retries=0)

    def error(step: dict) -> openai.APIStatusError:
        llm_server.script(step)
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "u"}])
        return info.value

    assert is_format_refusal("json_schema", error(REFUSALS["llama_cpp_500"]))
    assert is_format_refusal("json_object_schema", error(REFUSALS["fastapi_422"]))
    assert not is_format_refusal("json_schema", error({"status": 500, "error": "CUDA out of memory"}))
    assert not is_format_refusal("json_schema", error({"status": 429, "error": "response_format rate"}))
    assert not is_format_refusal("off", error(REFUSALS["openai_400"]))       # nothing to refuse


def test_every_format_refused_ends_in_a_plain_prompt(llm_server):
    llm_server.script(REFUSALS["openai_400"], REFUSALS["llama_cpp_500"], REFUSALS["fastapi_422"],
                      {"content": "Here it is:\n" + GOOD})
    result = client_for(llm_server).complete_json("s", "u", Decision)
    assert result.mode == "off" and formats(llm_server) == ["json_schema", "json_object", "json_object", None]


def test_a_forced_mode_refused_is_unavailable_with_advice_not_retried(llm_server):
    llm_server.script(REFUSALS["llama_cpp_500"])
    with pytest.raises(LLMUnavailable, match="refuses structured_output json_schema.*structured_output: auto"):
        client_for(llm_server, structured_output="json_schema").complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 1


def test_the_negotiated_mode_survives_a_restart(llm_server, tmp_path):
    store = ModeStore(tmp_path / "logs" / "llm_modes.json")
    llm_server.script(REFUSALS["llama_cpp_500"], {"content": GOOD}, {"content": GOOD})
    client_for(llm_server, store=store).complete_json("s", "u", Decision)
    assert store.get(llm_server.base_url, "tiny") == "json_object_schema"
    restarted = client_for(llm_server, store=ModeStore(store.path))      # a new daemon: no renegotiation
    assert restarted.mode == "json_object_schema"
    restarted.complete_json("s", "u", Decision)
    assert formats(llm_server) == ["json_schema", "json_object", "json_object"]
    # Another model on the same endpoint negotiates for itself.
    assert client_for(llm_server, store=store, model="other").mode is None


def test_a_200_whose_content_is_not_json_gets_one_repair(llm_server):
    llm_server.script({"content": "I would train a bigger model."}, {"content": GOOD})
    result = client_for(llm_server).complete_json("s", "u", Decision)
    assert result.repaired and result.mode == "json_schema" and result.usage.calls == 2


# ------------------------------------------------------------- counting ----

def test_every_request_is_counted_when_the_call_fails(llm_server):
    # A refusal, a non-JSON reply and a bad repair: three requests, all counted on the exception.
    llm_server.script(REFUSALS["llama_cpp_500"], {"content": "not json"}, {"content": "still not"})
    with pytest.raises(LLMUnavailable) as info:
        client_for(llm_server).complete_json("system prompt", "user prompt", Decision)
    usage = info.value.usage
    assert (usage.calls, usage.failed_calls) == (3, 1)
    assert usage.estimated_calls == 1                    # the refusal carried no usage
    assert usage.prompt_tokens >= 2 * 10 + estimate_tokens("system prompt")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_replies_without_usage_are_estimated_and_marked(llm_server):
    llm_server.script({"content": GOOD, "usage": None})
    result = client_for(llm_server).complete_json("s" * 400, "u" * 400, Decision)
    assert result.usage.estimated and result.usage.estimated_calls == 1
    assert result.usage.completion_tokens == estimate_tokens(GOOD)
    assert result.usage.prompt_tokens >= 200


def test_a_refused_connection_is_a_failed_call_with_no_tokens(tmp_path):
    with LLMServer() as server:
        url = server.base_url
    role = LLMRole(base_url=url, model="tiny", max_attempts=2, timeout_seconds=2)
    client = LLMClient(role, "builder", None, backoff_base=0.01)
    with pytest.raises(LLMUnavailable) as info:
        client.complete_json("s", "u", Decision)
    assert (info.value.usage.calls, info.value.usage.failed_calls, info.value.usage.total_tokens) == (2, 2, 0)


def test_cost_from_the_price_table(llm_server):
    llm_server.script({"content": GOOD, "usage": {"prompt_tokens": 1000, "completion_tokens": 200,
                                                  "total_tokens": 1200}})
    price = ModelPrice(input_per_million=2.0, output_per_million=10.0)
    client = client_for(llm_server, price=price)
    result = client.complete_json("s", "u", Decision)
    assert result.usage.cost == pytest.approx(1000 * 2e-6 + 200 * 1e-5)
    assert client.total_usage.cost == pytest.approx(0.004)


def test_the_spend_cap_stops_calls_without_a_request(llm_server):
    spent: list[str] = []
    cap = SpendCap(max_tokens=20, on_spent=spent.append)
    builder = client_for(llm_server, cap=cap)
    llm_server.script({"content": GOOD}, {"content": GOOD})     # 15 tokens each
    builder.complete_json("s", "u", Decision)
    builder.complete_json("s", "u", Decision)
    assert spent == ["LLM token budget spent: 30 of 20 tokens"]      # announced once
    with pytest.raises(LLMBudgetSpent, match="no request sent"):
        client_for(llm_server, cap=cap).complete_json("s", "u", Decision)   # shared by both roles
    assert len(llm_server.requests) == 2


def test_a_spent_budget_does_not_open_the_circuit(llm_server):
    cap = SpendCap(max_cost=0.0)
    client = client_for(llm_server, cap=cap, circuit_breaker_failures=1)
    for _ in range(3):
        with pytest.raises(LLMBudgetSpent):
            client.complete_json("s", "u", Decision)
    assert client.circuit.consecutive_failures == 0 and not llm_server.requests


# ---------------------------------------------------------------- probe ----

def test_llm_probe_reports_mode_latency_and_validity(llm_server, tmp_path):
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(yaml.safe_dump({
        "workspace": str(tmp_path / "ws"),
        "builder": {"base_url": llm_server.base_url, "model": "tiny", "max_attempts": 1},
        "mentor": {"base_url": None}}))
    decision = json.dumps({"action": "train", "run_label": "baseline-resnet10t", "strategy_dimension": "model_arch",
                           "rationale": "No run yet: a baseline measures where the task stands.",
                           "train_overlay": {"run": {"epochs": 2}}})
    llm_server.script(REFUSALS["llama_cpp_500"], {"content": decision})
    probe = subprocess.run([sys.executable, "-m", "loop.cli.main", "llm", "probe", "--daemon-config", str(cfg)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "builder: tiny at" in probe.stdout and "mode json_object_schema" in probe.stdout
    assert "reply valid; quality gate passed; 2 request(s)" in probe.stdout
    assert "mentor: offline policy" in probe.stdout
    modes = ModeStore(tmp_path / "ws" / "logs" / "llm_modes.json")
    assert modes.get(llm_server.base_url, "tiny") == "json_object_schema"
    # The system prompt is the daemon's: the mission and the JSON contract.
    assert "Decision" in llm_server.requests[1]["body"]["messages"][0]["content"]

    llm_server.script({"content": "no json"}, {"content": "no json either"})
    failed = subprocess.run([sys.executable, "-m", "loop.cli.main", "llm", "probe", "--daemon-config", str(cfg),
                             "--role", "builder", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert failed.returncode == 1
    [row] = json.loads(failed.stdout)
    assert row["ok"] is False and "invalid reply after one repair" in row["error"] and row["requests"] == 2


def test_raw_control_characters_in_strings_are_accepted(llm_server):
    # What llama.cpp's schema grammar lets a small model write: a bare newline inside a string.
    llm_server.script({"content": '{"action": "wait", "rationale": "line one\nline two", "run_label": "w"}'})
    result = client_for(llm_server, max_output_tokens=300).complete_json("s", "u", Decision)
    assert result.parsed.rationale == "line one\nline two" and not result.repaired
    assert llm_server.requests[0]["body"]["max_tokens"] == 300
