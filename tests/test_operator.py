"""The operator surface: finish-up schedule arithmetic, status, and the bash scripts as a person
runs them (real processes, real files)."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from loop.cycle import finishup
from loop.errors import ConfigError
from tests._daemon_fixtures import waiting_daemon, waiting_llm_fixture  # noqa: F401 - the `waiting_llm` fixture
from tests.conftest import REPO, cli_here, exited, run_cli, tiny_config_dict

NOW = dt.datetime(2026, 2, 18, 20, 0, tzinfo=dt.timezone.utc)


# ------------------------------------------------------ schedule arithmetic ----

def test_minutes_left_activates_now():
    r = finishup.schedule(NOW, minutes_left=60)
    assert r.status == "active" and r.activate_at_utc == "2026-02-18T20:00:00Z"
    assert r.deadline_utc == "2026-02-18T21:00:00Z" and r.minutes_to_deadline(NOW) == 60


def test_run_hours_schedules_the_last_minutes():
    r = finishup.schedule(NOW, minutes_left=60, run_hours=8, final_training_rounds=2, top_k=5, note="overnight")
    assert r.status == "scheduled" and r.deadline_utc == "2026-02-19T04:00:00Z"
    assert r.activate_at_utc == "2026-02-19T03:00:00Z" and r.final_training_rounds == 2 and r.top_k == 5
    assert not r.is_active(NOW) and r.is_active(NOW + dt.timedelta(hours=7))


def test_activate_in_and_at():
    r = finishup.schedule(NOW, minutes_left=30, activate_in_minutes=90)
    assert r.activate_at_utc == "2026-02-18T21:30:00Z" and r.deadline_utc == "2026-02-18T22:00:00Z"
    r = finishup.schedule(NOW, minutes_left=45, activate_at_utc="2026-02-18T22:00:00Z")
    assert r.activate_at_utc == "2026-02-18T22:00:00Z" and r.deadline_utc == "2026-02-18T22:45:00Z"
    with pytest.raises(ConfigError, match="only one of"):
        finishup.schedule(NOW, run_hours=2, activate_in_minutes=3)
    with pytest.raises(ConfigError, match="not an ISO time"):
        finishup.schedule(NOW, activate_at_utc="tomorrow")


def test_force_report_now_and_next_steps():
    forced = finishup.schedule(NOW, force_report_now=True)
    assert forced.is_active(NOW) and finishup.next_step(forced, NOW, False, 1.0) == "report"
    r = finishup.schedule(NOW, minutes_left=60, final_training_rounds=1)
    assert finishup.next_step(None, NOW, False, 1.0) == "none"
    assert finishup.next_step(r, NOW, False, 10.0) == "final_round"           # 15 min fits in 57
    assert finishup.next_step(r, NOW, False, 50.0) == "report"                # 75 min does not
    assert finishup.next_step(r, NOW, True, 10.0) == "wait_run"
    assert finishup.next_step(r, NOW + dt.timedelta(minutes=58), True, 10.0) == "report"
    r.rounds_started = 1
    assert finishup.next_step(r, NOW, False, 1.0) == "report"
    assert "FINISH-UP ACTIVE" in finishup.prompt_text(r, NOW)
    later = finishup.schedule(NOW, activate_in_minutes=10)
    assert finishup.prompt_text(later, NOW) == ""                            # prompts only once active


def test_final_round_is_the_best_config_trained_longer():
    overlay = finishup.final_round_overlay({"model": {"name": "resnet14t"}, "run": {"epochs": 10, "seed": 3},
                                            "budget": {"max_steps": 5}})
    assert overlay == {"model": {"name": "resnet14t"}, "run": {"epochs": 15, "seed": 3}}


# ------------------------------------------------------------- scripts ----

def script(name: str, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def daemon_cfg(tmp_path, waiting_llm) -> Path:
    """The scripts' subject is the scripts, not training: the daemon's Builder is an endpoint that
    answers `wait` (tests/_daemon_fixtures.py), stored as `llmloop login --base-url` stores one (the
    config names none, so the test's own login later replaces it); its cycles start no trainer."""
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict()))
    creds = tmp_path / "creds" / "credentials.json"
    creds.parent.mkdir()
    creds.write_text(json.dumps({"base_url": waiting_llm.base_url, "model": "wait-double"}))
    creds.chmod(0o644)                      # the test's login must make it 0600 itself
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump({
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "daemon_poll_seconds": 0.2,
        "default_monitor_seconds": 2, "credentials_file": str(creds), **waiting_daemon(None),
        "phase": {"schedule": "off"}, "adaptive_timer": {"min_seconds": 0, "max_seconds": 1},
        "evolution": {"rules": {"per_class_accuracy_floor": None}}}))
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)  # 118 s quiet when its daemon trained: every operator script, each a fresh process
def test_scripts_happy_paths_and_errors(daemon_cfg, tmp_path):
    cfg = ["--daemon-config", str(daemon_cfg)]
    ws = tmp_path / "ws"
    assert "ready" in script("install_tools.sh").stdout
    assert "not running" in script("stop_llm_daemon.sh", *cfg, "--wait", "1").stdout       # stop when stopped
    started = script("startup.sh", *cfg, "--run-hours", "8", "--finishup-minutes", "30", "--finishup-note", "night")
    assert started.returncode == 0, started.stderr
    assert "finish-up scheduled" in started.stdout and "llmloop started" in started.stdout
    twice = script("startup.sh", *cfg)
    assert twice.returncode == 11 and "already running" in twice.stderr                    # start twice
    status = script("status.sh", *cfg)
    assert status.returncode == 0 and "RUNNING" in status.stdout and "finish-up scheduled" in status.stdout
    info = json.loads(script("status.sh", *cfg, "--json").stdout)
    assert info["running"] and info["finish_up"]["status"] == "scheduled"
    assert "cycle" in script("watch_status.sh", *cfg, "--once").stdout
    show = script("request_finishup.sh", *cfg, "--show")
    assert "deadline" in show.stdout and "note: night" in show.stdout
    assert script("request_finishup.sh", *cfg, "--cancel").returncode == 0
    none = script("request_finishup.sh", *cfg, "--cancel")
    assert none.returncode == 12 and "no finish-up request to cancel" in none.stderr       # cancel when none
    stopped = script("stop_llm_daemon.sh", *cfg, "--wait", "120")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert "stopped" in script("status.sh", *cfg).stdout

    # status after a crash: a pid file nobody's lock backs
    (ws / "daemon.pid").write_text("999999\n")
    assert "crashed: stale pid file" in script("status.sh", *cfg).stdout

    # rollback with nothing promoted: a clear error
    rb = script("rollback.sh", *cfg)
    assert rb.returncode != 0 and "no earlier promoted generation" in rb.stderr

    # login stores endpoint and key 0600; status then names the endpoint
    login = script("login.sh", *cfg, "--base-url", "http://127.0.0.1:9/v1", "--model", "m1", "--key-stdin",
                   stdin="sk-test-canary-123456\n")
    assert login.returncode == 0 and "sk-test" not in login.stdout
    creds = tmp_path / "creds" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert "LLM m1 at http://127.0.0.1:9/v1" in script("status.sh", *cfg).stdout

    # clean_fresh keeps the login and the data link when asked
    (ws / "data").symlink_to(tmp_path)
    fresh = script("clean_fresh.sh", *cfg, "--keep-login", "--keep-data-link")
    assert fresh.returncode == 0 and creds.exists() and (ws / "data").is_symlink()
    assert not (ws / "events.jsonl").exists() and not (ws / "state.json").exists()
    assert script("clean_fresh.sh", *cfg).returncode == 0 and not creds.exists() and not (ws / "data").exists()


@pytest.mark.slow
def test_start_with_the_dashboard(daemon_cfg, tmp_path, capsys):
    """`llmloop start --dashboard`: the daemon and, in its own process, the page of its workspace on
    127.0.0.1; the URL and the token file (not the token) are printed. `llmloop stop` leaves the page
    up, a second start finds it serving instead of starting another, `dashboard --stop` ends it.
    The starts are real processes (the daemon and the page outlive them); stop and dashboard --stop
    run in this process (they act on other processes through the workspace's files)."""
    pytest.importorskip("uvicorn", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")

    from loop.dashboard import background
    from loop.util.workspace import Workspace

    cfg, ws = ["--daemon-config", str(daemon_cfg)], Workspace(tmp_path / "ws")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = ["start", *cfg, "--dashboard", "--dashboard-port", str(port)]   # `stop` ends its run, leaves none
    try:
        started = run_cli(*start, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        url, token_file = f"http://127.0.0.1:{port}/", ws.root / "logs" / "dashboard.token"
        assert f"dashboard: {url}" in started.stdout and str(token_file) in started.stdout
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() not in started.stdout
        with urllib.request.urlopen(url, timeout=20) as page:
            assert page.status == 200 and "<title>llmloop: cycle" in page.read().decode()
        with urllib.request.urlopen(url + "api/status", timeout=20) as r:
            assert json.loads(r.read())["workspace"] == str(ws.root)
        serving = background.running(ws)
        assert serving is not None and serving.url == url

        assert cli_here(capsys, "stop", *cfg, "--wait", "120").returncode == 0
        assert background.running(ws) == serving                          # the page outlives the daemon
        again = run_cli(*start, timeout=180)
        assert again.returncode == 0 and "dashboard: already serving" in again.stdout, again.stdout + again.stderr
        assert background.running(ws) == serving
        assert cli_here(capsys, "stop", *cfg, "--wait", "120").returncode == 0

        stopped = cli_here(capsys, "dashboard", *cfg, "--stop")
        assert stopped.returncode == 0 and f"dashboard stopped (pid {serving.pid}" in stopped.stdout
        assert exited(serving.pid) and background.running(ws) is None
        assert not background.pid_path(ws).exists()
        assert "no dashboard is serving" in cli_here(capsys, "dashboard", *cfg, "--stop").stdout
    finally:
        cli_here(capsys, "stop", *cfg, "--wait", "60")
        background.stop(ws)


def test_powershell_scripts_mirror_the_bash_ones():
    """No pwsh on these machines: check each .ps1 exists beside its .sh and calls the same subcommand."""
    pairs = {"login": "login", "startup": "start", "stop_llm_daemon": "stop", "status": "status",
             "watch_status": "watch", "request_finishup": "finishup", "clean_fresh": "reset", "rollback": "rollback",
             "service": "service"}
    for name, sub in pairs.items():
        sh, ps1 = (REPO / "scripts" / f"{name}.sh").read_text(), (REPO / "scripts" / f"{name}.ps1").read_text()
        assert f" {sub}" in sh and f"& $llmloop {sub}" in ps1, name
