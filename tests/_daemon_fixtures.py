"""A daemon that does not train, for tests whose subject is not training (the operator scripts, a
pause for PHASE, the evolution clock): its Builder is a real OpenAI-compatible endpoint on 127.0.0.1
(tests/llm_server.py) that answers every request with a valid `wait` decision. Each cycle is then a
real cycle (events, state, pid file, lock, timer) that starts no trainer process.

A test module imports the fixture (`from tests._daemon_fixtures import waiting_llm_fixture  # noqa: F401`)
and asks for it by its name, `waiting_llm`.
"""
from __future__ import annotations

import json

import pytest

from tests.llm_server import FaultPlan, LLMServer

WAIT = json.dumps({"action": "wait", "run_label": "wait-for-the-test",
                   "rationale": "Nothing to train while the test drives the daemon: waiting is the point here."})


def waiting_daemon(base_url: str | None) -> dict:
    """Daemon config keys for a daemon that never trains: the Builder on the waiting endpoint (None:
    the endpoint `llmloop login --base-url` stored), waiting rather than falling back to the offline
    policy (which trains); no Mentor (a review of the idle cycles would not parse: the endpoint only
    says `wait`) and no evolution window (it trains candidates: wait cycles reach its period fast)."""
    role = {"max_attempts": 1, "timeout_seconds": 30}
    if base_url is not None:
        role |= {"base_url": base_url, "model": "wait-double"}
    return {"builder": {**role, "when_unavailable": "wait"}, "mentor": role, "mentor_enabled": False,
            "evo_period_cycles": 10**6}


@pytest.fixture(name="waiting_llm")
def waiting_llm_fixture():
    """The waiting endpoint: `wait` for every request, as many as come (a FaultPlan that injects none)."""
    with LLMServer(faults=FaultPlan(rate=0.0, content=WAIT)) as server:
        yield server
