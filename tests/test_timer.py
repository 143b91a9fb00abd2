"""The adaptive timer: each input moves the pause the way it says, within the bounds."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from loop.config import PhaseConfig
from loop.daemon.timer import TimerInputs, improvement_rate, next_pause
from loop.phase import window as phase_window
from loop.phase.window import daily_window_key, seconds_until_window, wait_for_signal, window_due


def pause(**kw) -> float:
    return next_pause(TimerInputs(base_seconds=10, **kw), 0.5, 300).seconds


def test_recent_durations_lengthen_the_pause():
    assert pause() == 10
    assert pause(cycle_seconds=[100, 100], run_seconds=[200]) == round(10 + 0.1 * (400 / 3), 3)


def test_converging_fitness_doubles_improving_halves():
    assert pause(best_scores=[0.95, 0.95, 0.95, 0.95]) == 20
    assert pause(best_scores=[0.80, 0.85, 0.90]) == 5
    assert improvement_rate([0.9, 0.9]) is None and pause(best_scores=[0.9, 0.9]) == 10


def test_idle_machine_shortens_busy_lengthens():
    assert pause(cpu_percent=5, memory_percent=20) == 5
    assert pause(cpu_percent=95, memory_percent=20) == 15
    assert pause(cpu_percent=10, memory_percent=95) == 15
    assert pause(cpu_percent=50, memory_percent=50) == 10
    assert pause(cpu_percent=10, gpu_percent=99, memory_percent=10) == 15    # the GPU counts too


def test_phase_nearing_caps_the_pause_and_bounds_apply():
    assert pause(seconds_to_phase=8) == 4
    assert pause(seconds_to_phase=0) == 0.5                                 # the lower bound
    d = next_pause(TimerInputs(base_seconds=1000), 0.5, 60)
    assert d.seconds == 60 and any("bounded" in r for r in d.reasons)
    assert d.inputs["base_seconds"] == 1000                                 # inputs logged with it


def test_daily_window_keys():
    cfg = PhaseConfig(daily_start="03:00", daily_end="07:00")
    at = lambda h, m=0: dt.datetime(2026, 3, 5, h, m)  # noqa: E731
    assert daily_window_key(cfg, at(2, 59)) is None and daily_window_key(cfg, at(3)) == "2026-03-05"
    assert daily_window_key(cfg, at(7)) is None
    night = PhaseConfig(daily_start="23:00", daily_end="02:00")
    assert daily_window_key(night, at(23, 30)) == "2026-03-05" and daily_window_key(night, at(1)) == "2026-03-04"
    assert window_due(cfg, 7, at(4), []) == "daily-2026-03-05"
    assert window_due(cfg, 7, at(4), ["daily-2026-03-05"]) is None            # once per window
    assert seconds_until_window(cfg, at(2, 0)) == 3600
    every = PhaseConfig(schedule="every_n_cycles", every_n_cycles=5)
    assert [c for c in range(1, 16) if window_due(every, c, at(12), [])] == [5, 10, 15]
    assert window_due(PhaseConfig(schedule="off"), 5, at(4), []) is None


class VirtualTime:
    """Stands in for `time` in loop.phase.window: the clock moves only when slept on, and `at(t, fn)`
    runs fn once it reaches t, so a busy machine cannot stretch what is measured."""

    def __init__(self) -> None:
        self.now, self.due = 0.0, []

    def at(self, when: float, fn) -> None:
        self.due.append((when, fn))

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for when, fn in [d for d in self.due if d[0] <= self.now]:
            self.due.remove((when, fn))
            fn()


@pytest.fixture
def clock(monkeypatch) -> VirtualTime:
    virtual = VirtualTime()
    monkeypatch.setattr(phase_window, "time", virtual)
    return virtual


def test_resume_on_signal_before_the_window_ends(tmp_path, clock):
    signal_path = tmp_path / "phase_complete_x.json"
    clock.at(0.3, lambda: signal_path.write_text("{}"))
    assert wait_for_signal(signal_path, None, lambda: False, chunk_seconds=60) == "complete"
    assert clock.now < 1.0                                                   # not the chunk, not the window


def test_stop_during_the_pause_is_honoured_within_a_chunk(tmp_path, clock):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stop = {"now": False}
    clock.at(0.3, lambda: stop.update(now=True))
    try:
        assert wait_for_signal(tmp_path / "never.json", proc, lambda: stop["now"], chunk_seconds=10) == "stopped"
        assert clock.now < 1.0                                               # not at the chunk's end
    finally:
        proc.kill()
        proc.wait()


def test_phase_that_dies_without_a_signal(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert wait_for_signal(tmp_path / "never.json", proc, lambda: False, chunk_seconds=0.2) == "phase_failed"
