"""Notifications from a real daemon (offline policy, tiny trainings) to a real HTTP receiver on
127.0.0.1 through apprise's json://: a new best, the finish-up report, blocked, a start after a
kill -9; a receiver that is down costs no cycle; a URL's token never reaches the event log or the
daemon's log."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.cycle import finishup
from loop.daemon.process import run_daemon, running_pid, workspace_of
from loop.journal.events import EventLog
from tests._daemon_fixtures import waiting_daemon, waiting_llm_fixture  # noqa: F401 - the `waiting_llm` fixture
from tests.conftest import REPO, tiny_config_dict, wait_for
from tests.test_daemon import decision, kill_daemon_of

RETRY = {"retry_seconds": 0.2, "max_retry_seconds": 1.0}



def daemon_data(tmp_path: Path, trainer: dict | None = None, **extra) -> dict:
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer or tiny_config_dict(data={"train_fraction": 0.05})))
    data = {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(path), "sandbox": "optional",
            "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
            "phase": {"schedule": "off"}, "evo_period_cycles": 99, "mentor_every_n_cycles": 100,
            "evolution": {"rules": {"per_class_accuracy_floor": None}}}
    data.update(extra)
    return data


def daemon_cfg(tmp_path: Path, trainer: dict | None = None, **extra) -> DaemonConfig:
    return validate(DaemonConfig, daemon_data(tmp_path, trainer, **extra), "<test>")


def events(ws_root: Path, kind: str) -> list[dict]:
    return [e for e in EventLog(ws_root / "events.jsonl") if e["kind"] == kind]


@pytest.mark.slow
def test_a_new_best_and_the_finish_up_report_reach_the_receiver(tmp_path, receiver, monkeypatch):
    monkeypatch.delenv("LLMLOOP_NOTIFY_URLS", raising=False)
    rx = receiver()
    cfg = daemon_cfg(tmp_path, notify={"urls": [rx.url()], **RETRY})
    ws = workspace_of(cfg)
    run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)            # the offline baseline: the first best
    assert rx.events() == ["new_best"]                                 # delivered by the time the daemon stopped
    [keep] = [k for e in events(ws.root, "cycle") for k in e.get("keeps", [])]
    [best] = rx.messages("new_best")
    assert keep["label"] in best["title"] and f"{keep['score']:.4f}" in best["title"]
    assert best["type"] == "success" and f"trace {events(ws.root, 'cycle')[0]['cycle_trace_id']}" in best["message"]

    finishup.save(ws.finish_up, finishup.schedule(finishup.now_utc(), force_report_now=True, top_k=3))
    state = run_daemon(cfg, ws, max_cycles=3, say=lambda *_: None)
    assert state.stop_reason == "finish-up complete: final reports written"
    assert rx.events() == ["new_best", "report_written"]              # nothing twice, no crash_restart
    [report] = rx.messages("report_written")
    paper = ws.root / "reports" / "final_paper_report.md"
    assert report["title"].endswith(f"report written: {paper}") and paper.exists()
    assert str(ws.root / "reports" / "final_condensed_story.md") in report["message"]
    assert not events(ws.root, "notify_degraded")


@pytest.mark.slow
def test_a_blocked_daemon_says_so_with_its_failure_signature(tmp_path, receiver, monkeypatch):
    monkeypatch.delenv("LLMLOOP_NOTIFY_URLS", raising=False)
    rx = receiver()
    trainer = tiny_config_dict(data={"train_fraction": 0.05}, kd={"teacher": str(tmp_path / "no-teacher")})
    cfg = daemon_cfg(tmp_path, trainer, max_identical_failures=2, blocked_retry_minutes=60,
                     notify={"urls": [rx.url()], **RETRY})
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=2, say=lambda *_: None)
    assert state.blocked is not None
    assert rx.events() == ["blocked"]
    [msg] = rx.messages("blocked")
    key = state.blocked.signature.key
    assert key in msg["title"] and key in msg["message"] and "not a model folder" in msg["message"]
    assert msg["type"] == "failure" and "BLOCKED since cycle 2" in msg["message"]


@pytest.mark.slow
def test_a_receiver_that_is_down_costs_no_cycle(tmp_path, receiver, monkeypatch, waiting_llm):
    """The receiver is off when the first best is kept: the daemon keeps cycling (one notify_degraded,
    whatever the failed retries), and once the receiver is up the notification arrives
    (notify_restored). The Builder trains once (the first best), then waits: the cycles that follow
    need not train to be cycles."""
    monkeypatch.delenv("LLMLOOP_NOTIFY_URLS", raising=False)
    rx = receiver(up=False)
    waiting_llm.script(decision("train"))
    cfg = daemon_cfg(tmp_path, notify={"urls": [rx.url()], **RETRY}, **waiting_daemon(waiting_llm.base_url))
    ws = workspace_of(cfg)
    seen: dict = {}

    def operator():                      # the daemon runs on the main thread (it installs signal handlers)
        try:
            wait_for(lambda: events(ws.root, "notify_degraded"), 300, "notify_degraded")
            seen["cycles_at_degraded"] = len(events(ws.root, "cycle"))
            wait_for(lambda: len(events(ws.root, "cycle")) >= seen["cycles_at_degraded"] + 2, 300,
                     "two more cycles while the receiver is down")
            seen["received_while_down"] = len(rx.received)
            rx.up()
            wait_for(lambda: events(ws.root, "notify_restored"), 300, "notify_restored")
        except BaseException as exc:     # noqa: BLE001 - handed to the test's own thread
            seen["error"] = exc
        finally:
            ws.stop_request.parent.mkdir(parents=True, exist_ok=True)
            ws.stop_request.write_text("stop\n")

    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    run_daemon(cfg, ws, max_cycles=None, say=lambda *_: None)
    helper.join(30)
    if "error" in seen:
        raise seen["error"]
    cycles = [e["cycle"] for e in events(ws.root, "cycle")]
    assert cycles == list(range(1, len(cycles) + 1)) and not events(ws.root, "degraded")
    [degraded] = events(ws.root, "notify_degraded")                  # one, however many tries failed
    [restored] = events(ws.root, "notify_restored")
    assert restored["failed_attempts"] >= 2 and seen["received_while_down"] == 0
    assert degraded["notification"] == "new_best" and rx.events()[0] == "new_best"


@pytest.mark.slow
def test_a_start_after_kill_9_is_notified_and_no_token_reaches_events_or_the_log(tmp_path, receiver, request):
    """One URL from the environment with a token in its path (receiver up), one from the YAML with a
    password (receiver down: its failure is written as an event and a log line). The daemon is
    killed with SIGKILL mid-run and started again: crash_restart arrives; neither secret is in
    events.jsonl or the daemon's log."""
    up, down = receiver(), receiver(up=False)
    token, password = "hOOkT0ken5ecret77", "pa55w0rdNotify"
    data = daemon_data(tmp_path, daemon_poll_seconds=0.2, default_monitor_seconds=3, stale_orphan_idle_cycles=50,
                       notify={"urls": [down.url("yaml", userinfo=f"bot:{password}")], **RETRY})
    cfg_path = tmp_path / "daemon.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    ws_root = tmp_path / "ws"
    request.addfinalizer(lambda: kill_daemon_of(ws_root))
    env = dict(os.environ, PYTHONPATH=str(REPO), LLMLOOP_NOTIFY_URLS=up.url(f"hook/{token}"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "loop.cli.main", *args, "--daemon-config", str(cfg_path)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert cli("start").returncode == 0
    state = ws_root / "state.json"
    wait_for(lambda: state.exists() and json.loads(state.read_text()).get("active_runs"), 120, "an active run")
    os.kill(int((ws_root / "daemon.pid").read_text()), signal.SIGKILL)
    ws = workspace_of(validate(DaemonConfig, {"workspace": str(ws_root)}, "t"))
    wait_for(lambda: running_pid(ws) is None, 10, "the lock to be released")

    restarted = cli("start", "--max-cycles", "1")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: events(ws_root, "daemon_stop"), 180, "the restarted daemon to finish its cycle")
    wait_for(lambda: running_pid(ws) is None, 60, "the restarted daemon to exit")
    starts = events(ws_root, "daemon_start")
    assert [s["after_crash"] for s in starts] == [False, True]
    crash = [m for m in up.received if "event: crash_restart" in m["body"]["message"]]
    assert len(crash) == 1 and crash[0]["path"] == f"/hook/{token}"
    assert f"Resuming at cycle {starts[1]['resume_cycle']}" in crash[0]["body"]["message"]
    assert events(ws_root, "notify_degraded")                        # the YAML URL's receiver is down
    log = (ws_root / "logs" / "daemon.log").read_text()
    assert "notifications degraded" in log
    written = (ws_root / "events.jsonl").read_text() + log
    assert token not in written and password not in written
