"""Several daemon runs in flight (`max_concurrent_runs`): each cycle follows every active run and asks
for a decision only while a slot is free; state, status and a restart handle the list."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.cycle.state import LoopState
from loop.daemon.process import run_daemon, workspace_of
from loop.daemon.status import render, status_info
from loop.journal.history import read_history
from tests.conftest import tiny_config_dict


@pytest.mark.slow
def test_two_runs_in_flight_are_followed_together_and_survive_a_restart(tmp_path):
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.3}, run={"epochs": 4})))
    cfg = validate(DaemonConfig, {
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "sandbox": "optional",
        "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
        "phase": {"schedule": "off"}, "evo_period_cycles": 99, "default_monitor_seconds": 1,
        "max_concurrent_runs": 2, "cpu_slots": 2}, "<test>")
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=2, say=lambda *_: None)
    assert [r.label for r in state.active_runs] == ["baseline-evaluation-c1", state.active_runs[1].label]
    assert len({r.slot for r in state.active_runs}) == 2                   # one slot each
    info = status_info(cfg, ws)
    assert len(info["active_runs"]) == 2 and info["max_concurrent_runs"] == 2
    text = render(info)
    assert "active run 1/2: baseline-evaluation-c1" in text and "active run 2/2:" in text
    saved = json.loads(Path(ws.state).read_text())
    assert len(saved["active_runs"]) == 2 and "active_run" not in saved

    # a new daemon (a restart) re-adopts both and follows them to their end (new runs start as
    # slots free up; the test stops once the first two are judged). Both runs are paused across
    # the restart: on a slow machine a short run could otherwise end before the new daemon looks,
    # and it would then (rightly) be judged from its files rather than adopted.
    first_two = {r["label"] for r in saved["active_runs"]}
    groups = _pause(state.active_runs)
    try:
        state = run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
    finally:
        _resume(groups)
    for _ in range(150):
        if first_two <= {r.label for r in read_history(ws)}:
            break
        state = run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
        if first_two <= {r.label for r in read_history(ws)}:
            break
    starts = [json.loads(ln) for ln in ws.events.open() if '"kind": "daemon_start"' in ln]
    for run in state.active_runs:        # leave nothing running behind the test
        from loop.run.supervise import kill_run

        kill_run(run)
    assert starts[1]["reaped"]["adopted_runs"] == [r["label"] for r in saved["active_runs"]]
    history = [r for r in read_history(ws) if r.label in first_two]
    assert len(history) == 2 and all(r.ok for r in history)
    cycles = [json.loads(ln) for ln in ws.events.open() if '"kind": "cycle"' in ln]
    followed = {f["label"] for c in cycles for f in c.get("followed_runs", [])}
    assert followed >= {r["label"] for r in saved["active_runs"]}
    two_at_once = [c for c in cycles if len(c.get("followed_runs", [])) == 2]
    assert two_at_once, "no cycle followed both runs together"


def _pause(runs) -> list[int]:
    """SIGSTOP each run's process group; a run that has already ended fails the test with its log."""
    groups = []
    for run in runs:
        try:
            groups.append(os.getpgid(run.pid))
        except ProcessLookupError:
            pytest.fail(f"{run.label} ended before the restart:\n{Path(run.log_path).read_text()[-2000:]}")
        os.killpg(groups[-1], signal.SIGSTOP)
    return groups


def _resume(groups: list[int]) -> None:
    for group in groups:
        try:
            os.killpg(group, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_an_old_state_json_with_one_active_run_still_loads(tmp_path):
    run = {"label": "r", "trace_id": "t", "kind": "train", "argv": ["x"], "run_dir": "/tmp/r", "log_path": "/tmp/r/l",
           "exit_file": "/tmp/r/e", "pid": 1, "create_time": 0.0, "started_at": 0.0, "cycle_started": 1}
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"cycle": 3, "active_run": run}))
    state = LoopState.load(path)
    assert [r.label for r in state.active_runs] == ["r"] and state.active_run.label == "r"
    path.write_text(json.dumps({"cycle": 3, "active_run": None}))
    assert LoopState.load(path).active_runs == []
