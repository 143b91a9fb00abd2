"""Finish-up mode (the seed's "Finish-Up Mode"): a deadline for the loop. FINISH_UP.json holds the
request; once active, Builder and Mentor prompts carry the deadline; if time allows the configured
final training rounds run (the best config, trained longer); then the final reports; then the
daemon stops by itself.

Schedules (all times UTC):
  --minutes-left M                     active now, deadline in M minutes
  --run-hours H [--minutes-left M]     deadline H hours from now, active M minutes before it
  --activate-in-minutes N              active in N minutes, deadline M minutes after that
  --activate-at-utc T                  active at T, deadline M minutes after that
  --force-report-now                   reports at once, no final training
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from loop.errors import ConfigError, ExitCode, LoopError
from loop.util.fsutil import atomic_write_text

UTC = dt.timezone.utc
REPORT_MARGIN_MINUTES = 3.0        # time kept for writing the reports before the deadline


class FinishUpError(LoopError):
    exit_code = ExitCode.FINISH_UP


class FinishUpRequest(BaseModel):
    requested_at: str
    activate_at_utc: str
    deadline_utc: str
    minutes_left: float
    final_training_rounds: int = Field(1, ge=0)
    top_k: int = Field(10, ge=1)
    note: str = ""
    force_report_now: bool = False
    status: Literal["scheduled", "active", "reporting", "done", "cancelled"] = "scheduled"
    rounds_started: int = 0
    reports: dict[str, str] = Field(default_factory=dict)

    # ---- clock ----
    def activate_at(self) -> dt.datetime:
        return parse_utc(self.activate_at_utc)

    def deadline(self) -> dt.datetime:
        return parse_utc(self.deadline_utc)

    def is_active(self, now: dt.datetime) -> bool:
        return (self.status in ("scheduled", "active", "reporting")
                and (self.force_report_now or now >= self.activate_at()))

    def minutes_to_deadline(self, now: dt.datetime) -> float:
        return (self.deadline() - now).total_seconds() / 60.0


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--activate-at-utc: {text!r} is not an ISO time like 2026-02-18T22:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def schedule(now: dt.datetime, minutes_left: float | None = None, run_hours: float | None = None,
             activate_in_minutes: float | None = None, activate_at_utc: str | None = None,
             final_training_rounds: int = 1, top_k: int = 10, note: str = "",
             force_report_now: bool = False) -> FinishUpRequest:
    """The request for these flags (the arithmetic lives here so it is tested on its own)."""
    given = [x is not None for x in (run_hours, activate_in_minutes, activate_at_utc)]
    if sum(given) > 1:
        raise ConfigError("use only one of --run-hours, --activate-in-minutes, --activate-at-utc")
    minutes = 60.0 if minutes_left is None else float(minutes_left)
    if minutes < 0 or (run_hours is not None and run_hours <= 0):
        raise ConfigError("--minutes-left and --run-hours must be positive")
    if force_report_now:
        activate, deadline = now, now
    elif run_hours is not None:
        deadline = now + dt.timedelta(hours=run_hours)
        activate = max(now, deadline - dt.timedelta(minutes=minutes))
    elif activate_in_minutes is not None:
        activate = now + dt.timedelta(minutes=activate_in_minutes)
        deadline = activate + dt.timedelta(minutes=minutes)
    elif activate_at_utc is not None:
        activate = parse_utc(activate_at_utc)
        deadline = activate + dt.timedelta(minutes=minutes)
    else:
        activate, deadline = now, now + dt.timedelta(minutes=minutes)
    return FinishUpRequest(requested_at=iso(now), activate_at_utc=iso(activate), deadline_utc=iso(deadline),
                           minutes_left=minutes, final_training_rounds=final_training_rounds, top_k=top_k,
                           note=note, force_report_now=force_report_now,
                           status="active" if activate <= now else "scheduled")


# ------------------------------------------------------------ the file ----

def load(path: Path) -> FinishUpRequest | None:
    try:
        return FinishUpRequest.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise FinishUpError(f"{path}: not a valid finish-up request: {exc}") from None


def save(path: Path, request: FinishUpRequest) -> None:
    atomic_write_text(path, request.model_dump_json(indent=2) + "\n")


def cancel(path: Path) -> FinishUpRequest:
    request = load(path)
    if request is None or request.status in ("cancelled", "done"):
        raise FinishUpError("no finish-up request to cancel")
    request.status = "cancelled"
    save(path, request)
    return request


def describe(request: FinishUpRequest | None, now: dt.datetime) -> str:
    if request is None:
        return "no finish-up request"
    left = request.minutes_to_deadline(now)
    when = "now" if request.activate_at() <= now else f"in {(request.activate_at() - now).total_seconds() / 60:.0f} min"
    return (f"finish-up {request.status}: active {when} ({request.activate_at_utc}), deadline {request.deadline_utc} "
            f"({left:.0f} min left), final rounds {request.rounds_started}/{request.final_training_rounds}, "
            f"top-k {request.top_k}{', report only' if request.force_report_now else ''}"
            f"{'; note: ' + request.note if request.note else ''}")


def prompt_text(request: FinishUpRequest | None, now: dt.datetime) -> str:
    """What the Builder and Mentor see once finish-up is active (nothing before)."""
    if request is None or not request.is_active(now):
        return ""
    return (f"FINISH-UP ACTIVE: deadline {request.deadline_utc} ({request.minutes_to_deadline(now):.0f} min left). "
            f"Prefer one high-value run that fits the time; the loop will run {request.final_training_rounds} "
            f"final training round(s) of the best configuration, then write the final reports. "
            f"{'Note: ' + request.note if request.note else ''}").strip()


# ---------------------------------------------------- what to do next ----

# what a cycle does for finish-up: nothing yet, a final training round, wait for the runs, the reports
FinishUpStep = Literal["none", "final_round", "wait_run", "report"]


def next_step(request: FinishUpRequest | None, now: dt.datetime, run_active: bool,
              best_run_minutes: float | None) -> FinishUpStep:
    """'none' (not active), 'final_round', 'wait_run' (let the running run end), or 'report'."""
    if request is None or not request.is_active(now):
        return "none"
    if request.force_report_now:
        return "report"
    time_left = request.minutes_to_deadline(now) - REPORT_MARGIN_MINUTES
    if run_active:
        return "wait_run" if time_left > 0 else "report"
    needed = (best_run_minutes or 1.0) * 1.5        # the final round trains 1.5x longer
    if request.rounds_started < request.final_training_rounds and best_run_minutes is not None and needed <= time_left:
        return "final_round"
    return "report"


def final_round_overlay(best_config: dict) -> dict:
    """The best configuration (what a decision may set of it: loop/agents/overlay.py), trained half
    again as long."""
    from loop.agents.overlay import allowed_part

    epochs = int(best_config.get("run", {}).get("epochs", 10))
    overlay = {k: v for k, v in allowed_part(best_config).items() if k not in ("run", "budget")}
    overlay["run"] = {"epochs": max(epochs + 1, int(round(epochs * 1.5))),
                      "seed": best_config.get("run", {}).get("seed", 42)}
    return overlay


def context_text(path: Path) -> str:
    """What the prompts carry about finish-up now ("" before it is active, or when the request
    file cannot be read)."""
    try:
        return prompt_text(load(path), now_utc())
    except FinishUpError:
        return ""
