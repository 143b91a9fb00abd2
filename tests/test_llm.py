"""LLMClient against a real local HTTP server (tests/llm_server.py): retries, structured-output
fallback, repair, usage, and that the API key never leaks. Also credentials and redaction."""
from __future__ import annotations

import json
import logging
import os
import stat
import time
import traceback

import pytest

from loop.agents import retry
from loop.agents.credentials import resolve_api_key, write_credentials
from loop.agents.llm import LLMClient, LLMUnavailable, for_role
from loop.agents.schema import Decision, Review
from loop.agents.usage import Usage
from loop.config import LLMRole
from loop.errors import ConfigError
from loop.util.secrets import MASK, known_secrets, redact

KEY = "sk-canary-1234567890abcdef"
GOOD = '{"action": "wait", "rationale": "nothing to do", "run_label": "w1"}'


def make_client(server, *, key: str | None = KEY, events: list | None = None, backoff: float = 0.01,
                slept: list | None = None, **role_fields) -> LLMClient:
    """`slept`: the waits between retries are recorded there instead of slept (no wall clock)."""
    role = LLMRole(**{"base_url": server.base_url, "model": "test-model", "max_attempts": 3,
                      "timeout_seconds": 5.0, **role_fields})
    sink = events.append if events is not None else None
    sleep = slept.append if slept is not None else time.sleep
    return LLMClient(role, "builder", key, sink, backoff_base=backoff, backoff_max=backoff * 4, sleep=sleep)


def bodies(server) -> list[dict]:
    return [r["body"] for r in server.requests]


# ------------------------------------------------------------- happy path ----

def test_decision_via_json_schema(llm_server):
    llm_server.script({"content": GOOD})
    result = make_client(llm_server).complete_json("be a builder", "what next?", Decision)

    assert isinstance(result.parsed, Decision) and result.parsed.action == "wait"
    assert result.parsed.run_label == "w1"
    assert (result.attempts, result.repaired, result.mode, result.raw) == (1, False, "json_schema", GOOD)
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, calls=1)
    [request] = llm_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "system", "content": "be a builder"},
                                {"role": "user", "content": "what next?"}]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Decision" and fmt["json_schema"]["strict"] is False
    assert "action" in fmt["json_schema"]["schema"]["properties"]
    assert "reasoning_effort" not in body and "temperature" not in body


def test_review_model_and_no_key_placeholder(llm_server):
    llm_server.script({"content": '{"verdict": "off_track", "critical_question": "why?"}'})
    result = make_client(llm_server, key=None).complete_json("mentor", "review", Review)
    assert result.parsed.verdict == "off_track"
    assert llm_server.requests[0]["headers"]["authorization"] == "Bearer no-key"
    assert llm_server.requests[0]["body"]["response_format"]["json_schema"]["name"] == "Review"


def test_reasoning_effort_and_temperature_sent_only_when_set(llm_server):
    llm_server.script({"content": GOOD}, {"content": GOOD})
    make_client(llm_server).complete_json("s", "u", Decision)
    make_client(llm_server, reasoning_effort="high", temperature=0.3).complete_json("s", "u", Decision)
    plain, tuned = bodies(llm_server)
    assert "reasoning_effort" not in plain and "temperature" not in plain
    assert tuned["reasoning_effort"] == "high" and tuned["temperature"] == 0.3


# ---------------------------------------------------------------- retries ----

def test_429_with_retry_after_then_success(llm_server, caplog):
    llm_server.script({"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"},
                      {"content": GOOD})
    events: list[dict] = []
    slept: list[float] = []
    # A 5 s backoff base: a wait of 0 proves the Retry-After of 0 was used instead.
    client = make_client(llm_server, events=events, backoff=5.0, slept=slept)
    with caplog.at_level(logging.WARNING, logger="loop.agents.llm"):
        result = client.complete_json("s", "u", Decision)
    assert slept == [0]
    assert result.attempts == 2 and len(llm_server.requests) == 2
    [event] = events
    assert event["kind"] == "llm_retry" and event["role"] == "builder" and event["attempt"] == 1
    assert "RateLimitError" in event["error"] and event["wait_s"] == 0
    assert "attempt 1/3 failed" in caplog.text


def test_retry_after_is_capped(llm_server, monkeypatch):
    monkeypatch.setattr(retry, "RETRY_AFTER_CAP_S", 0.1)
    llm_server.script({"status": 429, "headers": {"Retry-After": "120"}}, {"content": GOOD})
    events: list[dict] = []
    slept: list[float] = []
    result = make_client(llm_server, events=events, slept=slept).complete_json("s", "u", Decision)
    assert slept == [pytest.approx(0.1)]                   # not the 120 s asked for
    assert result.attempts == 2 and events[0]["wait_s"] == pytest.approx(0.1)


@pytest.mark.parametrize("failure", [
    {"status": 500},
    {"status": 503, "error": "overloaded"},
    {"drop": True},
    {"truncated": True},
], ids=["500", "503", "dropped", "truncated"])
def test_transient_failure_then_success(llm_server, failure):
    llm_server.script(failure, {"content": GOOD})
    events: list[dict] = []
    result = make_client(llm_server, events=events).complete_json("s", "u", Decision)
    assert result.parsed.action == "wait" and result.attempts == 2
    assert [e["kind"] for e in events] == ["llm_retry"]
    # Every request is counted: the failed attempt is a call too, marked failed
    assert (result.usage.calls, result.usage.failed_calls) == (2, 1)


def test_timeout_then_success(llm_server):
    llm_server.script({"delay": 1.5, "content": GOOD}, {"content": GOOD})
    events: list[dict] = []
    result = make_client(llm_server, events=events, timeout_seconds=0.5).complete_json("s", "u", Decision)
    # the client gave up on the slow reply: had it waited for it, attempt 1 would have succeeded
    assert result.attempts == 2 and len(llm_server.requests) == 2
    assert "Timeout" in events[0]["error"]


def test_every_attempt_failing_raises_after_max_attempts(llm_server):
    # Empty script: the server answers 500 "script exhausted" to everything.
    events: list[dict] = []
    with pytest.raises(LLMUnavailable) as info:
        make_client(llm_server, events=events).complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 3
    assert [e["attempt"] for e in events] == [1, 2]    # no retry after the last attempt
    assert "3 attempt(s)" in str(info.value) and "script exhausted" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 404])
def test_non_transient_errors_are_not_retried(llm_server, status):
    llm_server.script({"status": status, "error": "model does not exist"})
    with pytest.raises(LLMUnavailable, match="model does not exist"):
        make_client(llm_server).complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 1


# ----------------------------------------------------------------- repair ----

def test_malformed_json_gets_exactly_one_repair(llm_server):
    llm_server.script({"content": "Sure! here is my plan: train harder", "usage":
                       {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}},
                      {"content": GOOD, "usage":
                       {"prompt_tokens": 150, "completion_tokens": 20, "total_tokens": 170}})
    events: list[dict] = []
    result = make_client(llm_server, events=events).complete_json("sys", "ask", Decision)

    assert result.repaired and result.parsed.action == "wait" and result.attempts == 2
    assert result.usage == Usage(prompt_tokens=250, completion_tokens=27, total_tokens=277, calls=2)
    assert not result.usage.estimated              # the server sent usage for both
    first, repair = bodies(llm_server)
    assert repair["messages"][:2] == first["messages"]
    assert repair["messages"][2] == {"role": "assistant", "content": "Sure! here is my plan: train harder"}
    assert repair["messages"][3]["role"] == "user"
    assert "not JSON" in repair["messages"][3]["content"]
    assert "Decision" in repair["messages"][3]["content"]
    assert [e["kind"] for e in events] == ["llm_repair"]


def test_schema_violation_gets_repaired(llm_server):
    llm_server.script({"content": '{"action": "dance"}'}, {"content": '{"action": "train"}'})
    result = make_client(llm_server).complete_json("s", "u", Decision)
    assert result.repaired and result.parsed.action == "train"
    quoted = bodies(llm_server)[1]["messages"][3]["content"]
    assert "Decision schema" in quoted and "action" in quoted


def test_malformed_twice_is_unavailable(llm_server):
    llm_server.script({"content": "no json"}, {"content": "still { not json"}, {"content": GOOD})
    with pytest.raises(LLMUnavailable, match="invalid reply after one repair"):
        make_client(llm_server).complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 2         # never a second repair


def test_retry_inside_repair_counts_attempts(llm_server):
    llm_server.script({"content": "oops"}, {"status": 500}, {"content": GOOD})
    result = make_client(llm_server).complete_json("s", "u", Decision)
    assert result.repaired and result.attempts == 3
    assert (result.usage.calls, result.usage.failed_calls, result.usage.estimated_calls) == (3, 1, 1)


# ------------------------------------------------- structured output modes ----

def test_json_schema_refusal_falls_back_and_is_remembered(llm_server):
    llm_server.script({"status": 400, "error": "response_format json_schema is not supported"},
                      {"content": GOOD}, {"content": GOOD})
    events: list[dict] = []
    client = make_client(llm_server, events=events)
    first = client.complete_json("sys", "u", Decision)
    second = client.complete_json("sys", "u", Decision)

    mode = "json_object_schema"
    assert (first.mode, second.mode, client.mode) == (mode, mode, mode)
    assert first.attempts == 2 and second.attempts == 1
    formats = [b["response_format"]["type"] for b in bodies(llm_server)]
    assert formats == ["json_schema", "json_object", "json_object"]     # not re-probed
    # json_object with the schema beside it: what llama.cpp's server turns into a grammar
    assert all(b["response_format"]["schema"]["properties"]["action"] for b in bodies(llm_server)[1:])
    # The prompt carries the schema too (and the word JSON): a grammar fixes syntax, not meaning.
    system = bodies(llm_server)[1]["messages"][0]["content"]
    assert system.startswith("sys") and "JSON" in system and '"action"' in system
    assert [e["kind"] for e in events] == ["llm_format_fallback", "llm_format_negotiated"]


def test_fallback_down_to_plain_prompt(llm_server):
    llm_server.script({"status": 400, "error": "response_format json_schema is not supported"},
                      {"status": 400, "error": "response_format.schema is not supported"},
                      {"status": 400, "error": "response_format json_object is not supported"},
                      {"content": "```json\n" + GOOD + "\n```"})
    client = make_client(llm_server)
    result = client.complete_json("s", "u", Decision)
    assert result.mode == "off" and client.mode == "off" and result.parsed.action == "wait"
    assert result.attempts == 4                    # one request per refused format, none retried
    assert "response_format" not in bodies(llm_server)[3]


@pytest.mark.parametrize("mode", ["json_object", "off"])
def test_forced_mode_is_used_from_the_start(llm_server, mode):
    llm_server.script({"content": GOOD})
    result = make_client(llm_server, structured_output=mode).complete_json("s", "u", Decision)
    body = bodies(llm_server)[0]
    assert result.mode == mode
    assert body.get("response_format", {}).get("type") == ("json_object" if mode == "json_object" else None)


def test_forced_mode_does_not_fall_back(llm_server):
    llm_server.script({"status": 400, "error": "response_format json_schema is not supported"},
                      {"content": GOOD})
    with pytest.raises(LLMUnavailable, match="not supported"):
        make_client(llm_server, structured_output="json_schema").complete_json("s", "u", Decision)
    assert len(llm_server.requests) == 1


# ---------------------------------------------------------- key never leaks ----

@pytest.mark.parametrize("key", [KEY, "plain-canary-value-no-prefix"])
def test_api_key_never_leaks(llm_server, caplog, key):
    echo = f"Incorrect API key provided: {key}. Authorization: Bearer {key}"
    llm_server.script({"status": 500, "error": echo}, {"status": 429, "error": echo},
                      {"status": 503, "error": echo})
    events: list[dict] = []
    caplog.set_level(logging.DEBUG)       # the SDK's and httpx's debug logs too
    with pytest.raises(LLMUnavailable) as info:
        make_client(llm_server, key=key, events=events).complete_json("s", "u", Decision)
    llm_server.script({"status": 401, "error": echo})
    with pytest.raises(LLMUnavailable) as info401:
        make_client(llm_server, key=key, events=events).complete_json("s", "u", Decision)

    assert llm_server.requests[0]["headers"]["authorization"] == f"Bearer {key}"  # it was sent
    assert len(events) == 2 and all("Incorrect API key" in e["error"] for e in events)
    texts = [caplog.text, json.dumps(events), str(info.value), str(info401.value),
             "".join(traceback.format_exception(info.value)), repr(info.value.args)]
    assert "Incorrect API key" in caplog.text
    for text in texts:
        assert key not in text and "canary" not in text


def test_broken_event_sink_does_not_fail_the_call(llm_server):
    def sink(event: dict) -> None:
        raise RuntimeError("disk full")

    llm_server.script({"status": 500}, {"content": GOOD})
    role = LLMRole(base_url=llm_server.base_url, max_attempts=2)
    result = LLMClient(role, "builder", KEY, sink, backoff_base=0.01).complete_json("s", "u", Decision)
    assert result.attempts == 2


# ------------------------------------------------------------ credentials ----

def test_resolve_api_key_env_then_file(tmp_path, monkeypatch):
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"MY_LLM_KEY": "from-file-key", "OTHER": "x"}))
    role = LLMRole(api_key_env="MY_LLM_KEY")
    monkeypatch.setenv("MY_LLM_KEY", "from-env-key")
    assert resolve_api_key(role, creds) == "from-env-key"
    monkeypatch.setenv("MY_LLM_KEY", "")
    assert resolve_api_key(role, creds) == "from-file-key"
    monkeypatch.delenv("MY_LLM_KEY")
    assert resolve_api_key(role, creds) == "from-file-key"
    assert resolve_api_key(LLMRole(api_key_env="UNSET_NAME_XYZ"), creds) is None
    assert resolve_api_key(role, tmp_path / "missing.json") is None
    creds.write_text("{not json")
    assert resolve_api_key(role, creds) is None
    creds.write_text('["a list"]')
    assert resolve_api_key(role, creds) is None


def test_write_credentials_is_private_and_merges(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "cfg" / "llmloop" / "credentials.json"
    write_credentials(path, "OPENAI_API_KEY", "sk-first-0123456789")
    write_credentials(path, "OTHER_KEY", "other-value")
    write_credentials(path, "OPENAI_API_KEY", "sk-second-0123456789")

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert json.loads(path.read_text()) == {"OPENAI_API_KEY": "sk-second-0123456789",
                                            "OTHER_KEY": "other-value"}
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]   # no temp files left
    assert resolve_api_key(LLMRole(), path) == "sk-second-0123456789"


def test_write_credentials_refuses_to_clobber_a_corrupt_file(tmp_path):
    path = tmp_path / "credentials.json"
    path.write_text("{half")
    with pytest.raises(ConfigError, match="credentials"):
        write_credentials(path, "OPENAI_API_KEY", "sk-x-0123456789abc")
    assert path.read_text() == "{half"


def test_for_role(tmp_path, monkeypatch, llm_server):
    monkeypatch.delenv("ROLE_KEY_T", raising=False)
    creds = tmp_path / "c.json"
    write_credentials(creds, "ROLE_KEY_T", "file-key-abcdef")
    assert for_role(LLMRole(), "builder", creds) is None      # offline policy plays the role
    client = for_role(LLMRole(base_url=llm_server.base_url, api_key_env="ROLE_KEY_T"), "mentor", creds)
    assert isinstance(client, LLMClient) and client.role_name == "mentor"
    llm_server.script({"content": '{"verdict": "on_track"}'})
    assert client.complete_json("s", "u", Review).parsed.verdict == "on_track"
    assert llm_server.requests[0]["headers"]["authorization"] == "Bearer file-key-abcdef"


def test_usage_add():
    total = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3, calls=1, cost=0.5)
    assert total.add(Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30, calls=1, failed_calls=1)) is total
    assert total == Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33, calls=2, failed_calls=1, cost=0.5)


# -------------------------------------------------------------- redaction ----

@pytest.mark.parametrize("text, expected", [
    ("key is hunter2-secret!", f"key is {MASK}!"),
    ("token sk-abcdefghijklmnop1234 used", f"token {MASK} used"),
    ("Bearer abc.def-ghi", f"Bearer {MASK}"),
    ("api_key=abcdef123; next", f"api_key={MASK}; next"),
    ('{"api-key": "zzz999"}', f'{{"api-key": "{MASK}"}}'),
    ("Authorization: Basic dXNlcjpwYXNz\nnext line", f"Authorization: {MASK}\nnext line"),
    ("{'Authorization': 'Bearer tok123', 'x': 1}", f"{{'Authorization': '{MASK}', 'x': 1}}"),
    ("sk-short and api_key_env=OPENAI_API_KEY", "sk-short and api_key_env=OPENAI_API_KEY"),
    ("nothing secret here", "nothing secret here"),
])
def test_redact(text, expected):
    assert redact(text, ["hunter2-secret", "abc", None, ""]) == expected


def test_redact_longest_secret_first():
    assert redact("value: abcdef-123456", ["abcdef", "abcdef-123456"]) == f"value: {MASK}"


def test_known_secrets(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-value-123")
    monkeypatch.setenv("DB_PASSWORD", "pw")                 # too short to mask safely
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")
    monkeypatch.setenv("some_api_key", "lower-case-name-value")
    found = known_secrets()
    assert "tok-value-123" in found and "lower-case-name-value" in found
    assert "pw" not in found and "not-a-secret-value" not in found
