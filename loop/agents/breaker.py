"""A circuit breaker for one LLM endpoint, so a dead endpoint costs the loop no requests and no spin.

    closed     calls go through; `failures_to_open` failed calls in a row open it
    open       calls are refused without a request until `cooldown_seconds` have passed
    half-open  the next call is the trial: success closes the circuit, failure opens it again

The breaker only counts and answers; it never sleeps. The clock is injectable for tests.
"""
from __future__ import annotations

import time
from typing import Callable, Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures_to_open < 1 or cooldown_seconds < 0:
            raise ValueError("failures_to_open must be >= 1 and cooldown_seconds >= 0")
        self.failures_to_open, self.cooldown_seconds = failures_to_open, cooldown_seconds
        self._clock = clock
        self.consecutive_failures = 0
        self.times_opened = 0                  # over the breaker's lifetime, for reports
        self._opened_at: float | None = None   # None while closed

    # ---- reading ----

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self.seconds_until_retry() > 0 else "half_open"

    def seconds_until_retry(self) -> float:
        """How long calls are still refused; 0 when closed or half-open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_seconds - self._clock())

    def allow(self) -> bool:
        """Whether a call may send a request now (closed, or half-open for its trial)."""
        return self.state != "open"

    # ---- recording a call's outcome: each returns the new state when it changed, else None ----

    def record_success(self) -> State | None:
        was_open = self._opened_at is not None
        self.consecutive_failures, self._opened_at = 0, None
        return "closed" if was_open else None

    def record_failure(self) -> State | None:
        self.consecutive_failures += 1
        trial_failed = self._opened_at is not None       # a half-open trial: open again at once
        if trial_failed or self.consecutive_failures >= self.failures_to_open:
            self._opened_at = self._clock()
            self.times_opened += 1
            return "open"
        return None
