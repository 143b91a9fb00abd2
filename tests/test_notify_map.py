"""The event -> notification mapping (loop/notify/mapping.py): records built by the models the
daemon writes them with, read back as events.jsonl holds them."""
from __future__ import annotations

import json
import time

from loop.config.sections import NOTIFY_EVENTS
from loop.cycle.failures import Blocked
from loop.cycle.record import CycleRecord, FinishUpEntry, KeepEntry
from loop.journal.events import EventLog
from loop.notify.mapping import notifications
from loop.run.failure import signature_of
from loop.run.judge import RunOutcome


def logged(tmp_path, kind: str, **fields) -> dict:
    """The record as a reader of events.jsonl gets it (JSON round trip, envelope included)."""
    log = EventLog(tmp_path / "events.jsonl")
    log.append(kind, "c00007-abc123", **json.loads(json.dumps(fields, default=str)))
    return list(log)[-1]


def cycle_event(tmp_path, **parts) -> dict:
    return logged(tmp_path, "cycle", **CycleRecord(cycle=7, trace="c00007-abc123", **parts).event_fields())


def test_first_and_gain_keeps_are_new_bests_with_their_band_and_others_are_not(tmp_path):
    keeps = [KeepEntry(label="base", verdict="first", score=0.91, fidelity=1.0),
             KeepEntry(label="wider", verdict="gain", score=0.95, fidelity=1.0, margin=0.04, band=0.012,
                       test="vs base: McNemar p=0.01"),
             KeepEntry(label="same", verdict="tie", score=0.951, fidelity=1.0, margin=0.001, band=0.012),
             KeepEntry(label="low", verdict="below", score=0.5, fidelity=1.0, margin=-0.4, band=0.01),
             KeepEntry(label="scr", verdict="screen", score=0.99, fidelity=0.25)]
    found = notifications(cycle_event(tmp_path, keeps=keeps))
    assert [n.event for n in found] == ["new_best", "new_best"]
    first, gain = found
    assert "base" in first.title and "0.9100" in first.title and "first" in first.body
    assert "+0.0400" in gain.body and "0.0120" in gain.body and "0.9380 .. 0.9620" in gain.body
    assert "McNemar" in gain.body and gain.level == "success" and gain.trace == "c00007-abc123"


def test_stalled_and_timed_out_runs_each_once_wherever_the_cycle_recorded_them(tmp_path):
    stalled = RunOutcome(label="slow-one", status="stalled", seconds=3600, log_path="/w/runs/slow-one/run.log",
                         error="no output for 60 min", signature=signature_of("stalled", None, "", None))
    timed = RunOutcome(label="long-one", status="timed_out", seconds=1800, error="walltime limit reached")
    fine = RunOutcome(label="ok-one", status="ok", seconds=10, val_accuracy=0.9)
    event = cycle_event(tmp_path, followed_run=stalled, followed_runs=[stalled], run_outcome=fine,
                        run_outcome_retry=timed)
    found = notifications(event)
    assert [n.event for n in found] == ["run_stalled", "run_timed_out"]
    assert "slow-one" in found[0].title and "60.0 min" in found[0].body and "run.log" in found[0].body
    assert "Signature:" in found[0].body and found[0].level == "warning"
    assert "walltime" in found[1].body


def test_the_report_step_names_the_paper_report_first(tmp_path):
    reports = {"story": "/w/reports/final_condensed_story.md", "paper": "/w/reports/final_paper_report.md"}
    log = EventLog(tmp_path / "reports.jsonl")
    event = log.append("final_reports", "report-00007", cycle=7, reports=reports)     # what the daemon writes
    [note] = notifications(event)
    assert note.event == "report_written" and note.title == "report written: /w/reports/final_paper_report.md"
    assert note.body.index("final_paper_report") < note.body.index("final_condensed_story")
    # the cycle steps of finish-up notify nothing (the daemon's final_reports event does, once written)
    for step in ("final_round", "report"):
        assert notifications(cycle_event(tmp_path, finish_up=FinishUpEntry(step=step, deadline="x",
                                                                           minutes_left=0.0))) == []


def test_blocked_carries_its_failure_signature(tmp_path):
    sig = signature_of("failed", 1, "Traceback (most recent call last):\n  File \"/x/kd.py\", line 3, in load\n"
                                    "FileNotFoundError: /tmp/no-teacher is not a model folder\n")
    blocked = Blocked(signature=sig, count=3, since_cycle=3, labels=["a", "b", "c"], next_try_at=time.time() + 600)
    [note] = notifications(logged(tmp_path, "blocked", **blocked.model_dump(mode="json")))
    assert note.event == "blocked" and note.level == "failure"
    assert sig.key in note.title and sig.key in note.body and "FileNotFoundError" in note.body
    assert "kd.py:load" in note.body and "llmloop unblock" in note.body


def test_disk_budget_and_crash_restart(tmp_path):
    [low] = notifications(logged(tmp_path, "disk_low", free_gb=0.4, min_free_gb=2, path="/srv/artifacts"))
    assert low.event == "disk_low" and "0.4 GB free on /srv/artifacts" in low.title and "min_free_gb 2" in low.body
    [ok] = notifications(logged(tmp_path, "disk_ok", free_gb=5.0, min_free_gb=2, path="/srv/artifacts"))
    assert ok.event == "disk_ok"
    [spent] = notifications(logged(tmp_path, "llm_budget_spent", reason="LLM cost budget spent: 2.0100 of 2.0000",
                                   max_cost=2.0, max_tokens=None))
    assert spent.event == "budget_spent" and "2.0100 of 2.0000" in spent.body and "max_cost 2.0" in spent.body
    start = {"pid": 42, "resume_cycle": 8, "active_runs": ["r7"],
             "reaped": {"killed": [11, 12], "adopted_runs": ["r7"]},
             "recovery": {"temp_files_removed": ["logs/.x.tmp"], "archive_staging_removed": [],
                          "cycle_reconciled": 7, "runs_index_torn_tail_cut": False}}
    [crash] = notifications(logged(tmp_path, "daemon_start", after_crash=True, **start))
    assert crash.event == "crash_restart" and "cycle 8" in crash.body
    assert "re-adopted: r7" in crash.body and "killed: 2" in crash.body and "temp files removed: 1" in crash.body
    assert "cycle reconciled: 7" in crash.body and "staging" not in crash.body
    assert notifications(logged(tmp_path, "daemon_start", after_crash=False, **start)) == []


def test_other_records_and_unreadable_ones_notify_nothing(tmp_path):
    for kind in ("timer", "daemon_stop", "unblocked", "notify_degraded", "degraded", "phase_start"):
        assert notifications(logged(tmp_path, kind, reason="x")) == []
    assert notifications(logged(tmp_path, "blocked", signature="not a signature")) == []
    assert notifications(logged(tmp_path, "cycle", cycle="seven", unknown_field=1)) == []
    assert notifications({"kind": "disk_low"}) == []


def test_every_configurable_event_has_a_mapping():
    """NOTIFY_EVENTS (what `notify.events` accepts) is exactly what the mapping can produce."""
    import inspect

    import loop.notify.mapping as mapping

    source = inspect.getsource(mapping)
    assert all(f'"{name}"' in source for name in NOTIFY_EVENTS)
