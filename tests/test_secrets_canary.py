"""Secrets: a canary key in the environment and another in the credentials file never reach a
child's environment, a prompt, a log, an event, a note or a report (everything is grepped)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.daemon.process import build_loop, run_daemon, workspace_of
from loop.report import generate_reports
from loop.run.supervise import kill_run, launch
from tests.conftest import REPO, tiny_config_dict

ENV_CANARY = "sk-envcanary-0123456789abcdefXYZ"
FILE_CANARY = "filecanary-9876543210-QWERTY-zz"


def decision(action: str, **fields) -> dict:
    base = {"action": action, "rationale": f"Testing the {action} path with a rationale long enough to pass.",
            "run_label": f"canary-{action}", "strategy_dimension": "optimization"}
    return {"content": json.dumps(base | fields)}


@pytest.mark.slow
def test_canaries_never_leak(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_CANARY)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"LOOP_TEST_KEY": FILE_CANARY}))
    creds.chmod(0o600)
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict()))
    role = {"base_url": llm_server.base_url, "model": "t", "api_key_env": "LOOP_TEST_KEY", "max_attempts": 2,
            "timeout_seconds": 5}
    cfg = validate(DaemonConfig, {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
                                  "daemon_poll_seconds": 0, "credentials_file": str(creds), "builder": role,
                                  "mentor": role, "mentor_every_n_cycles": 2, "phase": {"schedule": "off"},
                                  "adaptive_timer": {"min_seconds": 0},
                                  "evolution": {"rules": {"per_class_accuracy_floor": None}}}, "<test>")
    # An LLM that echoes secrets into everything it writes, and an endpoint that echoes the key back.
    llm_server.script(
        decision("train", notes_update=f"key {ENV_CANARY} and {FILE_CANARY}", todo_new=[f"rotate {FILE_CANARY}"],
                 data_exploration_update=f"env {ENV_CANARY}"),
        decision("run_command", command=f"cd {REPO} && echo {ENV_CANARY}", run_label=f"echo-{FILE_CANARY}"),
        {"content": json.dumps({"verdict": "off_track", "critical_question": f"why {FILE_CANARY}?",
                                "notes": f"saw {ENV_CANARY}"})},
        {"status": 500, "error": f"upstream rejected key {FILE_CANARY}"}, {"status": 500, "error": ENV_CANARY},
    )
    ws = workspace_of(cfg)
    run_daemon(cfg, ws, max_cycles=3, say=lambda *_: None)
    generate_reports(ws.root, 5, progress=False)

    # ---- a child's environment: read it from /proc while the child runs ----
    loop = build_loop(cfg, ws.ensure(), lambda: False, lambda *_: None)
    from loop.run.plan import RunPlan, child_env
    plan = RunPlan("envcheck", "t", "command", ["python3", "-c", "import time; time.sleep(3)"], tmp_path / "envrun",
                   None, None)
    run = launch(plan, 0, REPO, child_env(loop.repo_root))
    try:
        time.sleep(0.5)
        environ = Path(f"/proc/{run.pid}/environ").read_bytes()
        assert ENV_CANARY.encode() not in environ and FILE_CANARY.encode() not in environ
        assert b"PYTHONPATH" in environ
    finally:
        kill_run(run)

    # ---- prompts: every request body the endpoint received ----
    bodies = json.dumps([r["body"] for r in llm_server.requests])
    assert ENV_CANARY not in bodies and FILE_CANARY not in bodies
    assert any(r["headers"].get("authorization") == f"Bearer {FILE_CANARY}" for r in llm_server.requests)

    # ---- every file the loop wrote: events, notes, storyline, state, run logs, reports ----
    leaks = []
    for path in ws.root.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".pt", ".png", ".ckpt"):
            text = path.read_bytes()
            if ENV_CANARY.encode() in text or FILE_CANARY.encode() in text:
                leaks.append(str(path.relative_to(ws.root)))
    assert leaks == []
    assert "[REDACTED]" in (ws.root / "notes" / "workpad.md").read_text()
    assert any((ws.root / "reports").glob("*.md"))
    os.environ.pop("OPENAI_API_KEY", None)
