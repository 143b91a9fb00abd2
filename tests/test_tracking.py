"""Experiment tracking (loop/tracking/) against the real libraries: a short real daemon night logged
into MLflow (a sqlite store read back through MlflowClient) and TensorBoard (event files read back
through EventAccumulator), a tracker that is down (one event, the cycles go on, the runs logged
once a store answers), and the config error when an extra is missing."""
from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from loop.config import DaemonConfig, validate
from loop.daemon.process import run_daemon, workspace_of
from loop.errors import ConfigError
from loop.journal.events import EventLog
from loop.tracking.mlflow_sink import resolve_uri
from loop.tracking.records import flatten, public
from loop.tracking.tracker import Tracker
from tests.conftest import tiny_config_dict

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed (pip install -e '.[tracking]')")
pytest.importorskip("tensorboard", reason="the tracking extra is not installed (pip install -e '.[tracking]')")

from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.tracking

EPOCHS = 2


def night_config(root: Path, tracking: dict, **extra) -> DaemonConfig:
    """A daemon on the tiny trainer config: cycle 1 trains one Builder run, then an evolution window
    trains one candidate (evo_period_cycles 1), both for EPOCHS epochs on a slice of digits."""
    trainer = root / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.05}, run={"epochs": EPOCHS})))
    data = {"workspace": str(root / "artifacts"), "default_trainer_config": str(trainer), "sandbox": "optional",
            "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
            "phase": {"schedule": "off"}, "mentor_every_n_cycles": 100, "evo_period_cycles": 1,
            "max_concurrent_experiments": 1,
            "evolution": {"candidate_overrides": {"data": {"image_size": 16, "train_fraction": 0.05},
                                                  "run": {"epochs": EPOCHS}},
                          "rules": {"per_class_accuracy_floor": None}},
            "tracking": tracking}
    data.update(extra)
    return validate(DaemonConfig, data, "<test_tracking>")


def events_of(ws_root: Path, kind: str) -> list[dict]:
    return [e for e in EventLog(ws_root / "events.jsonl") if e["kind"] == kind]


def children_of(client: MlflowClient, experiment: str) -> tuple[object, dict[str, object]]:
    """(the parent run, {run name: nested run}) of the experiment's only daemon start."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("llmloop.kind") == "daemon"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(nested) == len(runs) - 1
    return parent, nested


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict:
    """One real daemon cycle with MLflow (a sqlite store) and TensorBoard both on."""
    root = tmp_path_factory.mktemp("tracked_night")
    uri = f"sqlite:///{root}/mlflow/mlflow.db"
    cfg = night_config(root, {"mlflow": {"tracking_uri": uri, "experiment": "night"}, "tensorboard": True})
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
    assert state.cycle == 1
    return {"root": root, "ws": ws.root, "uri": uri, "cycle": events_of(ws.root, "cycle")[0]}


def open_copy(night: dict, tmp_path: Path) -> Path:
    """A copy of the night's workspace, for a test that runs a daemon or a tracker on it."""
    return Path(shutil.copytree(night["ws"], tmp_path / "artifacts", symlinks=True))


# --------------------------------------------------------------------- MLflow ----

@pytest.mark.slow
def test_the_night_in_mlflow(night):
    ws, cycle = night["ws"], night["cycle"]
    assert not events_of(ws, "tracking_degraded")
    client = MlflowClient(tracking_uri=night["uri"])
    parent, nested = children_of(client, "night")

    # one parent run per daemon start, ended with the daemon, the daemon config as its params
    assert parent.info.status == "FINISHED"
    assert parent.data.params["evo_period_cycles"] == "1" and parent.data.params["tracking.tensorboard"] == "true"
    assert parent.data.tags["llmloop.workspace"] == str(ws)

    # one nested run per training run and per candidate
    builder = cycle["run_outcome"]["label"]
    candidate = cycle["evolution"]["ranking"][0]["name"]
    assert set(nested) == {builder, candidate}
    history = [json.loads(line) for line in (ws / "runs" / "index.jsonl").read_text().splitlines()]
    curves = {builder: json.loads((Path(history[0]["run_dir"]) / "metrics.json").read_text())["curve"],
              candidate: json.loads((ws / "models" / "archive" / candidate / "metrics.json").read_text())
              ["trainer"]["curve"]}
    for name, kind in ((builder, "training"), (candidate, "candidate")):
        run = nested[name]
        tags, params = run.data.tags, run.data.params
        assert tags["llmloop.kind"] == kind and tags["llmloop.trace_id"] == cycle["cycle_trace_id"]
        if kind == "training":     # its verdict against the best and its fidelity, as the runs index has them
            assert tags["llmloop.keep"] == history[0]["verdict"] == "first" and tags["llmloop.fidelity"] == "1.00"
        # the resolved config as params, dotted
        assert params["run.epochs"] == str(EPOCHS) and params["data.image_size"] == "16"
        assert params["run.tensorboard"] == "true"
        # per-epoch metrics, step = epoch, the values of metrics.json
        steps = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in steps] == list(range(1, EPOCHS + 1))
        assert [m.value for m in steps] == pytest.approx([e["val_accuracy"] for e in curves[name]])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
        # the gates and the promotion state as tags
        lineage_row = next(row for row in (ws / "models" / "lineage.csv").read_text().splitlines()
                           if row.startswith(tags["llmloop.archive_entry"]))
        assert tags["llmloop.verdict"] in lineage_row
        for gate in ("recall", "generalize", "drift", "violations", "budget"):
            assert tags[f"llmloop.gate.{gate}"] in ("pass", "fail")
        assert tags["llmloop.promotion"] in ("head", "proposed", "retired", "passed", "rejected")
        # the archive entry's EVAL.md and card, and the curves plot
        archived = {a.path for a in client.list_artifacts(run.info.run_id, "archive")}
        assert archived == {"archive/EVAL.md", "archive/MODEL_CARD.md"}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]
        local = Path(client.download_artifacts(run.info.run_id, "archive/EVAL.md", str(night["root"] / name)))
        entry = ws / "models" / "archive" / tags["llmloop.archive_entry"]
        assert local.read_text() == (entry / "EVAL.md").read_text()
    # the Builder run is its archive entry (one run, not two), the proposal named in the tags
    assert nested[builder].data.tags["llmloop.archive_entry"] == cycle["promotion"]["name"]
    proposal = json.loads((ws / "models" / "PROMOTION_PROPOSAL.json").read_text())["proposed_head"]
    states = {r.data.tags["llmloop.archive_entry"]: r.data.tags["llmloop.promotion"] for r in nested.values()}
    assert states.get(proposal, "proposed") == "proposed"
    # the parent charts every training's score over cycles
    assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "val_accuracy")] == \
        [(1, pytest.approx(cycle["run_outcome"]["val_accuracy"]))]


# ---------------------------------------------------------------- TensorBoard ----

@pytest.mark.slow
def test_the_night_in_tensorboard(night):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    ws, cycle = night["ws"], night["cycle"]
    board = ws / "tensorboard"
    builder = next(p for p in board.iterdir() if p.is_symlink())
    candidate = cycle["evolution"]["ranking"][0]["name"]
    # the daemon run: a symlink named by its run folder into <run>/out/tensorboard
    assert builder.name == f"{cycle['run_outcome']['label']}-{cycle['cycle_trace_id']}"
    assert builder.resolve() == (ws / "runs" / builder.name / "out" / "tensorboard").resolve()
    # the candidate: its events kept (its work folder is gone), under its archive entry's name
    assert (board / candidate).is_dir() and not (ws / "models" / "candidates" / candidate).exists()
    curves = {builder.name: json.loads((ws / "runs" / builder.name / "out" / "metrics.json").read_text())["curve"],
              candidate: json.loads((ws / "models" / "archive" / candidate / "metrics.json").read_text())
              ["trainer"]["curve"]}
    for name, curve in curves.items():
        acc = EventAccumulator(str(board / name))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        assert {"train/loss", "val/loss", "val/accuracy", "lr", "images_per_second"} <= set(scalars)
        val = acc.Scalars("val/accuracy")
        assert [e.step for e in val] == list(range(1, EPOCHS + 1))
        assert [e.value for e in val] == pytest.approx([e["val_accuracy"] for e in curve], abs=1e-6)
        assert all(e.value > 0 for e in acc.Scalars("images_per_second"))
    # `tensorboard --logdir <workspace>/tensorboard` finds both runs (through the symlink too)
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(board))
    mux.Reload()
    assert set(mux.Runs()) == {builder.name, candidate}


def test_links_fall_back_to_a_note_where_symlinks_fail(tmp_path, monkeypatch):
    from loop.tracking.tensorboard_links import link_runs

    events = tmp_path / "runs" / "r1-c00001-abc" / "out" / "tensorboard"
    events.mkdir(parents=True)

    def refuse(self, *args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    assert link_runs(tmp_path) == ["r1-c00001-abc"]
    note = (tmp_path / "tensorboard" / "r1-c00001-abc.txt").read_text()
    assert str(events) in note and f"--logdir {events}" in note
    assert link_runs(tmp_path) == []            # once per run


# ----------------------------------------------------------- a tracker that is down ----

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                # closed once the with ends: nothing listens


def wait_decision() -> dict:
    return {"content": json.dumps({"action": "wait", "run_label": "wait", "strategy_dimension": "evaluation",
                                   "rationale": "Waiting on purpose while the tracker is down, nothing to run."})}


@pytest.mark.slow
def test_a_tracker_that_is_down_never_stops_a_cycle_and_catches_up(night, tmp_path, llm_server):
    ws = open_copy(night, tmp_path)
    roles = {"base_url": llm_server.base_url, "model": "test", "max_attempts": 1, "timeout_seconds": 5,
             "when_unavailable": "wait"}
    down = {"mlflow": {"tracking_uri": f"http://night:hunter22secret@127.0.0.1:{closed_port()}",
                       "experiment": "night"}, "retry_seconds": 0}
    llm_server.script(wait_decision(), wait_decision())
    cfg = night_config(tmp_path, down, workspace=str(ws), builder=roles, mentor=roles, evo_period_cycles=100)
    state = run_daemon(cfg, workspace_of(cfg), max_cycles=2, say=lambda *_: None)

    # the cycles went on; exactly one event for the outage (retries at every sync said nothing more)
    assert state.cycle == 3 and [e["cycle"] for e in events_of(ws, "cycle")] == [1, 2, 3]
    degraded = events_of(ws, "tracking_degraded")
    assert len(degraded) == 1 and degraded[0]["tracker"] == "mlflow"
    assert "Connection refused" in degraded[0]["reason"] or "connect" in degraded[0]["reason"].lower()
    text = (ws / "events.jsonl").read_text()
    assert "hunter22secret" not in text and "http://***@127.0.0.1" in degraded[0]["target"]

    # pointed at a store that answers, the next start logs the runs the outage left unlogged
    llm_server.script(wait_decision())
    up = {"mlflow": {"tracking_uri": night["uri"], "experiment": "after-outage"}}
    cfg = night_config(tmp_path, up, workspace=str(ws), builder=roles, mentor=roles, evo_period_cycles=100)
    run_daemon(cfg, workspace_of(cfg), max_cycles=1, say=lambda *_: None)
    assert len(events_of(ws, "tracking_degraded")) == 1
    _, nested = children_of(MlflowClient(tracking_uri=night["uri"]), "after-outage")
    assert set(nested) == {night["cycle"]["run_outcome"]["label"], night["cycle"]["evolution"]["ranking"][0]["name"]}


@pytest.mark.slow
def test_a_store_that_comes_back_is_caught_up_in_the_same_process(night, tmp_path):
    ws = open_copy(night, tmp_path)
    store = tmp_path / "store"
    store.write_text("a file where the store's folder should be: sqlite cannot open the database\n")
    cfg = night_config(tmp_path, {"mlflow": {"tracking_uri": f"sqlite:///{store}/mlflow.db", "experiment": "back"},
                                  "retry_seconds": 0}, workspace=str(ws))
    tracker = Tracker(cfg, ws, EventLog(ws / "events.jsonl"), say=lambda *_: None)
    tracker.start(2)
    tracker.sync("c00002-test")
    assert len(events_of(ws, "tracking_degraded")) == 1 and not events_of(ws, "tracking_restored")

    store.unlink()                                  # the store is back: a migrated database (no 8 s of setup)
    store.mkdir()
    shutil.copy(Path(night["uri"][len("sqlite:///"):]), store / "mlflow.db")
    tracker.sync("c00003-test")
    restored = events_of(ws, "tracking_restored")
    assert len(restored) == 1 and restored[0]["logged"] == 2
    tracker.stop("stop-00003")
    parent, nested = children_of(MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db"), "back")
    assert len(nested) == 2 and parent.info.status == "FINISHED"
    tracker.sync("c00004-test")                     # nothing new: nothing logged twice
    assert len(children_of(MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db"), "back")[1]) == 2


# ------------------------------------------------------------------ the config ----

@pytest.mark.parametrize("tracking, module", [({"mlflow": {"tracking_uri": "sqlite:///m.db"}}, "mlflow"),
                                              ({"tensorboard": True}, "tensorboard")])
def test_an_extra_that_is_not_installed_is_a_config_error_saying_how(tmp_path, monkeypatch, tracking, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigError) as err:
        validate(DaemonConfig, {"tracking": tracking}, "daemon_config.yaml")
    assert f"tracking.{module} needs {module}" in str(err.value) and "pip install -e '.[tracking]'" in str(err.value)


def test_uris_and_values_leave_without_credentials(tmp_path):
    assert public("http://me:pa55word@mlflow.lan:5000/api failed") == "http://***@mlflow.lan:5000/api failed"
    assert public("token sk-abcdefghijklmnop1234") == "token [REDACTED]"
    assert resolve_uri("sqlite:///artifacts/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/artifacts/mlflow.db"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert flatten({"data": {"image_size": 16, "augment": [], "domain_args": {}}, "kd": {"teacher": None}}) == \
        {"data.image_size": "16", "data.augment": "[]", "data.domain_args": "{}", "kd.teacher": "null"}
