"""Multi-fidelity runs in the trainer: a screen stops early and keeps its checkpoint; a continuation
resumes it and lands exactly where one uninterrupted run lands (never retrained from zero)."""
from __future__ import annotations

import json

import pytest

from loop.errors import ConfigError
from loop.trainer.metrics import RunMetrics, unpack_correct
from loop.trainer.train import train


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


def test_a_continuation_of_another_recipe_or_of_a_finished_run_is_refused(tmp_path, tiny_cfg):
    train(tiny_cfg(run={"epochs": 2, "stop_after_epochs": 1}), tmp_path / "screen")
    with pytest.raises(ConfigError, match=r"differs from the screen's in optim.lr"):
        train(tiny_cfg(optim={"lr": 0.1}, run={"epochs": 2, "resume_from": str(tmp_path / "screen")}), tmp_path / "a")
    train(tiny_cfg(run={"epochs": 2}), tmp_path / "done")
    with pytest.raises(ConfigError, match="holds no checkpoint.pt"):
        train(tiny_cfg(run={"epochs": 2, "resume_from": str(tmp_path / "done")}), tmp_path / "b")


def test_the_evaluation_records_which_images_were_right(tmp_path, tiny_cfg):
    metrics = train(tiny_cfg(), tmp_path / "r")
    right = unpack_correct(metrics.eval.correct, metrics.eval.count)
    assert right is not None and len(right) == metrics.eval.count
    assert right.mean() == pytest.approx(metrics.eval.accuracy)
    saved = RunMetrics.read(tmp_path / "r")
    assert saved.eval.correct == metrics.eval.correct
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["eval"]["correct"]
