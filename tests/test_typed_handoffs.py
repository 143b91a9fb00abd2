"""Typed hand-offs (issue 24, item 3): metrics.json read once through its torch-free model and
handed on; the candidate path's results as models that still read the state and events the
previous version wrote; status strings that refuse a value no code writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from loop.candidates.records import Handoff, WindowEntry
from loop.cycle.record import CycleRecord, KeepEntry, RunStart
from loop.cycle.state import LoopState, WindowNote
from loop.cycle.watch import measured, metrics_of
from loop.errors import MetricsError
from loop.journal.history import RunRecord
from loop.journal.metrics import EpochRecord, EvalMetrics, RunMetrics, read_metrics
from loop.run.judge import RunOutcome, outcome_of
from loop.run.supervise import ActiveRun
from loop.verdict.keeps import score_of
from loop.verdict.noise import pack_correct
from tests.conftest import REPO

# ------------------------------------------------------------ metrics.json ----


def written_metrics(folder, **extra) -> RunMetrics:
    metrics = RunMetrics(status="ok", model_name="resnet10t", domain="digits", seed=3, device="cpu",
                         epochs_completed=2, epochs_planned=4, eval=EvalMetrics(
                             accuracy=0.75, loss=0.5, count=4, correct=pack_correct([True, True, True, False])),
                         curve=[EpochRecord(epoch=e, train_loss=1, train_accuracy=0.5, val_loss=1, val_accuracy=0.5,
                                            lr=0.1, seconds=2.0 + e) for e in (1, 2)], **extra)
    folder.mkdir(parents=True, exist_ok=True)
    metrics.write(folder)
    return metrics


def test_the_metrics_model_imports_no_torch():
    """Every reader of metrics.json (the judge, the verdict, the cycle's state and record, the
    reports) reads it without the trainer's torch."""
    code = ("import sys, loop.journal.metrics, loop.run.judge, loop.verdict.keeps, loop.cycle.state, "
            "loop.cycle.record, loop.report.data; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_read_metrics_is_none_without_a_file_and_names_a_bad_one(tmp_path):
    assert read_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(MetricsError, match=str(tmp_path / "metrics.json")):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"eval": {"accuracy": 0.9}}))
    with pytest.raises(MetricsError, match=r"metrics\.json: not a run's metrics: status: Field required"):
        read_metrics(tmp_path)


def test_a_metrics_json_as_the_trainer_wrote_it_before_still_reads(tmp_path):
    """The file on disk is unchanged: one the previous version wrote (keys as the trainer wrote
    them, fields it did not know yet left out) reads through the model."""
    (tmp_path / "metrics.json").write_text(json.dumps({
        "status": "budget_exceeded", "error": "budget exceeded: max_steps", "run_label": "r", "model_name": "m",
        "domain": "digits", "seed": 0, "device": "cpu", "steps": 7, "eval": None,
        "budget": {"max_steps": 7}, "budget_used": {"steps": 7}, "budget_breach": {"cap": "max_steps", "limit": 7,
                                                                                    "used": 8}}))
    metrics = read_metrics(tmp_path)
    assert metrics.status == "budget_exceeded" and metrics.budget_breach.cap == "max_steps"


def active_run(run_dir) -> ActiveRun:
    (run_dir / "exit_code").write_text("0\n")
    return ActiveRun(label="r", trace_id="t", kind="train", argv=["x"], run_dir=str(run_dir),
                     log_path=str(run_dir / "run.log"), exit_file=str(run_dir / "exit_code"), pid=1,
                     create_time=0.0, started_at=0.0, cycle_started=1)


def test_the_judge_reads_metrics_once_and_hands_them_on(tmp_path):
    """The outcome carries the metrics it was judged from (never into state.json or the event);
    the record and the verdict take them from there, not from the file again."""
    out = tmp_path / "run" / "out"
    written = written_metrics(out)
    outcome = outcome_of(active_run(tmp_path / "run"), "finished")
    assert outcome.status == "ok" and outcome.val_accuracy == 0.75 and outcome.metrics == written
    assert "metrics" not in outcome.model_dump() and "metrics" not in json.loads(outcome.model_dump_json())
    (out / "metrics.json").unlink()                     # what follows must not need the file
    metrics = metrics_of(outcome, out)
    record = measured(RunRecord(label="r", cycle=1, trace="t", config={}, ok=True, score=0.75, run_dir=str(out)),
                      metrics, {})
    assert (record.fidelity, record.val_count, record.epochs_trained) == (0.5, 4, 2)
    score = score_of(record, metrics)
    assert score.count == 4 and list(score.correct) == [True, True, True, False]


def test_a_malformed_metrics_json_fails_the_run_naming_the_file(tmp_path):
    out = tmp_path / "run" / "out"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"status": "exploded"}))
    outcome = outcome_of(active_run(tmp_path / "run"), "finished")
    assert outcome.status == "failed" and str(out / "metrics.json") in outcome.error and outcome.metrics is None


# ---------------------------------------------- the candidate path's results ----

OLD_HANDOFF = {"name": "m-G001-c4-1", "status": "PASS", "score": 0.91, "gates": {"recall": True},
               "failed_gates": [], "archive_path": "/ws/models/archive/m-G001-c4-1", "head": None,
               "proposed": True, "improvement": None}
OLD_WINDOW = {"gen_id": 2, "head": "m-G001-c4-1", "ranking": [{"name": "m-G002-a", "status": "FAIL - recall",
                                                               "score": 0.4}], "proposal": None}


def without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize("old", [OLD_HANDOFF, {"error": "hand-off failed: disk full"},
                                 {"evolution_window": OLD_WINDOW}])
def test_a_state_json_of_the_previous_version_loads_and_prompts_the_same(tmp_path, old):
    """The three shapes `last_promotion` had as a dict load as models, and the Builder's prompt
    still shows what it showed (the same JSON, fields that were null left out)."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"cycle": 4, "last_promotion": old}))
    state = LoopState.load(path)
    expected = WindowNote if "evolution_window" in old else Handoff
    assert isinstance(state.last_promotion, expected)
    shown = json.loads(state.promotion_note())
    if "evolution_window" in old:
        assert shown == {"evolution_window": without_none(old["evolution_window"])}
    else:
        assert shown == without_none(old)
    state.save(path)                                   # and what this version writes reads back the same
    assert LoopState.load(path).last_promotion == state.last_promotion


def test_an_old_last_outcome_with_a_budget_breach_loads(tmp_path):
    path = tmp_path / "state.json"
    breach = {"cap": "max_steps", "limit": 7.0, "used": 8.0}
    path.write_text(json.dumps({"cycle": 2, "last_outcome": {"label": "r", "status": "budget_exceeded",
                                                             "budget_breach": breach}}))
    outcome = LoopState.load(path).last_outcome
    assert outcome.budget_breach.cap == "max_steps" and outcome.model_dump()["budget_breach"] == breach


def test_the_builder_prompt_names_the_hand_off():
    note = LoopState(last_promotion=Handoff(**OLD_HANDOFF)).promotion_note()
    for named in ('"name": "m-G001-c4-1"', '"status": "PASS"', '"score": 0.91', '"proposed": true',
                  '"archive_path": "/ws/models/archive/m-G001-c4-1"', '"gates": {"recall": true}'):
        assert named in note
    assert LoopState().promotion_note() == ""


def test_a_cycle_event_of_the_previous_version_reads_and_writes_the_same():
    event = {"ts": "x", "kind": "cycle", "cycle_trace_id": "c1", "cycle": 1, "trace": "c1",
             "promotion": OLD_HANDOFF, "evolution": OLD_WINDOW}
    rec = CycleRecord.from_event(event)
    assert isinstance(rec.promotion, Handoff) and isinstance(rec.evolution, WindowEntry)
    assert rec.evolution.ranking[0].name == "m-G002-a" and rec.promotion.proposed
    fields = rec.event_fields()
    assert fields["promotion"] == without_none(OLD_HANDOFF) and fields["evolution"] == without_none(OLD_WINDOW)
    failed = CycleRecord.from_event({"cycle": 2, "trace": "c2", "evolution": {"error": "no slot"}})
    assert failed.event_fields()["evolution"] == {"error": "no slot"}


# ----------------------------------------------------------- status strings ----

def test_status_fields_refuse_a_value_no_code_writes():
    with pytest.raises(ValidationError):
        RunOutcome(label="r", status="exploded")
    with pytest.raises(ValidationError):
        RunStart(label="r", pid=1, kind="train", log_path="l", monitor="exited", sandbox="none")
    with pytest.raises(ValidationError):
        KeepEntry(label="r", verdict="better", score=0.9, fidelity=1.0)
    assert RunOutcome(label="r", status="stale_orphan").status == "stale_orphan"
