"""The first run meets its cap informed, and a run the cap stops is not lost: the trainer times its
first steps and stops after the epochs that fit, its checkpoint kept; a walltime reached later stops
at the last checkpoint; either is continued from there (loop/trainer/budget.py CapFit)."""
from __future__ import annotations

import pytest

from loop.trainer import budget
from loop.trainer.budget import CapFit, epochs_that_fit
from loop.trainer.checkpoint import CHECKPOINT_FILE
from loop.trainer.train import train


def test_epochs_that_fit_leave_the_safety_share_of_the_cap():
    assert epochs_that_fit(600, 0, 60, 0, 10) == 9            # 0.9 x 600 s = 540 s: nine 60-s epochs
    assert epochs_that_fit(600, 100, 60, 2, 10) == 9          # 440 s left from epoch 3's start: 7 more
    assert epochs_that_fit(6000, 0, 60, 0, 10) == 10          # all of it fits
    assert epochs_that_fit(60, 0, 100, 0, 10) == 0            # not even one


def test_cap_fit_times_steps_after_the_first_and_refuses_an_epoch_that_cannot_fit(monkeypatch):
    clock = iter([100.0, 104.0])                               # the first step, then the fit two steps on
    fit = CapFit(cap_minutes=1, steps_per_epoch=100, train_images=1000, val_images=0, clock=lambda: next(clock))
    assert not fit.due_after_step() and not fit.due_at_epoch_end()     # the first step: a warm-up, untimed
    monkeypatch.setattr(budget, "FIT_CHECK_STEPS", 2)
    assert not fit.due_after_step() and fit.due_after_step()
    with pytest.raises(budget.BudgetExceeded):                 # 2 s a step x 100 steps > 0.9 x 60 s
        fit.fit(0.0, 0, 10, 1)
    assert fit.estimate == pytest.approx(200.0) and not fit.pending


@pytest.fixture
def virtual_clock(monkeypatch):
    """The budget's clock advances 0.1 s at each reading (about one a step), and the fit times 3 steps:
    the caps bind after a fixed number of steps however busy the machine is."""
    ticks = {"t": 0.0}

    def clock() -> float:
        ticks["t"] += 0.1
        return ticks["t"]

    monkeypatch.setattr(budget, "CLOCK", clock)
    monkeypatch.setattr(budget, "FIT_CHECK_STEPS", 3)
    return ticks


@pytest.mark.slow
def test_a_run_the_cap_fit_stops_keeps_its_checkpoint_and_a_continuation_trains_on(tmp_path, tiny_cfg,
                                                                                   virtual_clock):
    """500 planned epochs under a 3-second cap: the run stops itself after the epochs that fit, ok,
    scored, its checkpoint kept; a continuation resumes there, never from zero."""
    cfg = tiny_cfg(data={"train_fraction": 0.1}, run={"epochs": 500, "log_every_steps": 1000},
                   budget={"max_walltime_minutes": 0.05})
    first = train(cfg, tmp_path / "a")
    assert first.status == "ok" and first.stopped_at_cap
    assert 1 <= first.epochs_completed < 500 and first.eval is not None
    assert first.epoch_seconds_estimate and (tmp_path / "a" / CHECKPOINT_FILE).exists()
    assert "cap fit:" in (tmp_path / "a" / "train.log").read_text()
    more = tiny_cfg(data={"train_fraction": 0.1},
                    run={"epochs": 500, "log_every_steps": 1000, "resume_from": str(tmp_path / "a")},
                    budget={"max_walltime_minutes": 0.1})
    second = train(more, tmp_path / "b")
    assert second.epochs_at_start == first.epochs_completed
    assert second.epochs_completed > first.epochs_completed and second.status == "ok"


@pytest.mark.slow
def test_a_walltime_reached_after_a_checkpoint_stops_there_instead_of_failing(tmp_path, tiny_cfg, monkeypatch,
                                                                            virtual_clock):
    """The fit said it fits (patched to), the machine then got slower: the cap is reached mid-epoch,
    and the run ends at its last checkpoint, ok, with its weights and score."""
    def fits_all(self, start, done, stop, cap):
        self.pending, self.estimate = False, 0.1
        return stop, ""

    monkeypatch.setattr(CapFit, "fit", fits_all)
    cfg = tiny_cfg(data={"train_fraction": 0.1}, run={"epochs": 500, "log_every_steps": 1000},
                   budget={"max_walltime_minutes": 0.05})
    metrics = train(cfg, tmp_path / "run")
    assert metrics.status == "ok" and metrics.stopped_at_cap and metrics.budget_breach is not None
    assert metrics.budget_breach.cap == "max_walltime_minutes"
    assert 1 <= metrics.epochs_completed < 500 and metrics.eval is not None
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / CHECKPOINT_FILE).exists()
