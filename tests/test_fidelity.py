"""Multi-fidelity runs in the trainer: a screen stops early and keeps its checkpoint; a continuation
resumes it and lands exactly where one uninterrupted run lands (never retrained from zero)."""
from __future__ import annotations

import json

import pytest

from loop.errors import ConfigError
from loop.journal.metrics import RunMetrics
from loop.trainer.metrics import unpack_correct
from loop.trainer.train import train


@pytest.mark.slow
def test_a_screen_then_its_continuation_equals_one_full_run(tmp_path, tiny_cfg):
    full = train(tiny_cfg(run={"epochs": 3}), tmp_path / "full")
    screen = train(tiny_cfg(run={"epochs": 3, "stop_after_epochs": 1}), tmp_path / "screen")
    assert screen.epochs_completed == 1 and screen.epochs_planned == 3 and screen.status == "ok"
    assert (tmp_path / "screen" / "checkpoint.pt").exists()          # kept to be continued
    assert not (tmp_path / "full" / "checkpoint.pt").exists()
    cont = train(tiny_cfg(run={"epochs": 3, "resume_from": str(tmp_path / "screen"), "label": "c"}),
                 tmp_path / "cont")
    assert cont.epochs_completed == 3 and cont.resumed_from == str(tmp_path / "screen")
    assert [e.epoch for e in cont.curve] == [1, 2, 3]                 # the screen's epoch, then its own
    assert cont.eval.accuracy == pytest.approx(full.eval.accuracy)
    assert cont.curve[-1].train_loss == pytest.approx(full.curve[-1].train_loss, rel=1e-4)
    assert "resumed from" in (tmp_path / "cont" / "train.log").read_text()


@pytest.mark.slow
def test_a_continuation_of_another_recipe_or_of_a_finished_run_is_refused(tmp_path, tiny_cfg, zoo):
    train(tiny_cfg(run={"epochs": 2, "stop_after_epochs": 1}), tmp_path / "screen")
    with pytest.raises(ConfigError, match=r"differs from the screen's in optim.lr"):
        train(tiny_cfg(optim={"lr": 0.1}, run={"epochs": 2, "resume_from": str(tmp_path / "screen")}), tmp_path / "a")
    done = zoo["tiny"]                      # a finished run, as train() leaves it (trained once for the test run)
    assert (done / "metrics.json").exists() and not (done / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="holds no checkpoint.pt"):
        train(tiny_cfg(run={"resume_from": str(done)}), tmp_path / "b")      # its own recipe: only the checkpoint lacks


@pytest.mark.slow
def test_the_evaluation_records_which_images_were_right(zoo):
    run = zoo["tiny"]                                   # a run as train() writes it, trained once
    metrics = RunMetrics.read(run)
    right = unpack_correct(metrics.eval.correct, metrics.eval.count)
    assert right is not None and len(right) == metrics.eval.count
    assert right.mean() == pytest.approx(metrics.eval.accuracy)
    assert json.loads((run / "metrics.json").read_text())["eval"]["correct"] == metrics.eval.correct


@pytest.mark.slow
@pytest.mark.timeout(600)  # 82 s quiet: a screen and its continuation train
def test_the_daemon_screens_then_continues_a_screen_from_its_checkpoint(tmp_path):
    """A real daemon on the offline policy: a full baseline and its seed replica, three screens,
    then the top screen continued (in the sandbox, reading the screen's checkpoint) and judged
    against the best."""
    import yaml

    from loop.config import DaemonConfig, validate
    from loop.daemon.process import run_daemon, workspace_of
    from loop.journal.history import read_history
    from tests.conftest import tiny_config_dict

    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.1}, run={"epochs": 3})))
    cfg = validate(DaemonConfig, {
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "sandbox": "optional",
        "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
        "phase": {"schedule": "off"}, "evo_period_cycles": 99, "mentor_enabled": False}, "<test>")
    ws = workspace_of(cfg)
    for _ in range(14):
        run_daemon(cfg, ws, max_cycles=1, say=lambda *_: None)
        history = read_history(ws)
        if any(r.label.startswith("continue") for r in history):
            break
    kinds = [r.label.split("-")[0] for r in history]
    assert kinds[:6] == ["baseline", "replica", "mutate", "mutate", "mutate", "continue"], kinds
    assert [r.verdict for r in history[1:5]] == ["replica"] + ["screen"] * 3
    screens = history[2:5]
    assert all(r.fidelity == pytest.approx(1 / 3, abs=0.01) for r in screens)
    cont = history[5]
    screen = next(r for r in screens if r.run_dir == cont.config["run"]["resume_from"])
    assert cont.full and cont.verdict in ("gain", "tie", "below") and cont.epochs_trained == 2
    metrics = RunMetrics.read(cont.run_dir)
    assert metrics.resumed_from == screen.run_dir and [e.epoch for e in metrics.curve] == [1, 2, 3]
    assert screen.score == max(r.score for r in screens)                 # the top screen went on
    cycles = [json.loads(ln) for ln in ws.events.open() if '"kind": "cycle"' in ln]
    keeps = [k for c in cycles for k in c.get("keeps", [])]
    assert [k["verdict"] for k in keeps][:5] == ["first", "replica", "screen", "screen", "screen"]
    for c in cycles:            # screens stay out of the gates and the archive; full runs go in
        verdicts = {k["verdict"] for k in c.get("keeps", [])}
        if verdicts == {"screen"}:
            assert "promotion" not in c
        elif verdicts & {"first", "gain", "tie", "below", "replica"}:
            assert "promotion" in c
    story = ws.storyline.read_text()
    assert "screen at fidelity 0.33" in story and "first best" in story
