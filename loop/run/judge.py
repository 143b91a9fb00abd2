"""What became of a run (`outcome_of`): its exit code, its metrics.json (read without following
links: the run wrote it, so it may be anything), and what the supervisor saw (timed out, stalled,
stopped). Whether it beat the best is another judgement: loop/verdict/keeps.py `verdict_against_best`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loop.errors import MetricsError
from loop.journal.metrics import BudgetBreach, RunMetrics, read_metrics
from loop.run.failure import TAIL_BYTES, FailureSignature, signature_of
from loop.run.supervise import ActiveRun, exit_code, hit_walltime
from loop.util.fsutil import read_regular_text

# what became of a run: the trainer's own word (ok, failed, budget_exceeded; running when it died
# mid-run), what the supervisor saw, or a run still followed
RunStatus = Literal["ok", "failed", "budget_exceeded", "timed_out", "stalled", "interrupted", "killed",
                    "stale_orphan", "running"]


class RunOutcome(BaseModel):
    """One finished (or abandoned) run, as the cycle event's `run_outcome` and state.json keep it."""

    model_config = ConfigDict(extra="forbid")

    label: str
    status: RunStatus
    kind: str = "train"
    exit_code: int | None = None
    log_path: str = ""
    run_dir: str = ""
    seconds: float = 0.0
    error: str | None = None
    val_accuracy: float | None = None
    budget_breach: BudgetBreach | None = None
    monitor_cycles: int | None = None   # for a run still followed
    signature: FailureSignature | None = None   # what ended a failed run (loop/run/failure.py)
    # the run's metrics.json as judged, handed on to the record and the candidate path; never
    # written with the outcome (the file is the record of it)
    metrics: RunMetrics | None = Field(default=None, exclude=True, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def signed(self) -> "RunOutcome":
        """This outcome with its failure signature, read from the end of its log."""
        if self.ok or self.status in ("running", "interrupted"):
            return self
        try:
            log_text = read_regular_text(self.log_path, tail=TAIL_BYTES) if self.log_path else ""
        except OSError:
            log_text = ""
        return self.model_copy(update={"signature": signature_of(self.status, self.exit_code, log_text,
                                                                  self.error)})


def outcome_of(run: ActiveRun, monitor_status: str) -> RunOutcome:
    """The outcome of `run` once the supervisor has stopped watching it with `monitor_status`,
    a failure with its signature."""
    return plain_outcome(run, monitor_status).signed()


def plain_outcome(run: ActiveRun, monitor_status: str) -> RunOutcome:
    """The outcome from the supervisor's status, the run's metrics.json or its exit code (unsigned)."""
    out = dict(label=run.label, kind=run.kind, exit_code=exit_code(run), log_path=run.log_path,
               run_dir=run.run_dir, seconds=round(time.time() - run.started_at, 1))
    if monitor_status == "timed_out" or hit_walltime(run):     # the daemon's watch, or the run's own wrapper
        return RunOutcome(**out, status="timed_out", error="walltime limit reached; process group killed")
    if monitor_status == "stopping":
        return RunOutcome(**out, status="interrupted", error="the daemon was asked to stop")
    if monitor_status == "stalled":
        return RunOutcome(**out, status="stalled",
                          error=f"no output for {run.stall_seconds:.0f}s; the run's whole tree was killed")
    if run.kind == "train":
        metrics_path = Path(run.run_dir) / "out" / "metrics.json"
        if metrics_path.exists() or metrics_path.is_symlink():
            return outcome_from_metrics(metrics_path, out)
    code = out["exit_code"]
    if code is None:
        return RunOutcome(**out, status="killed", error="the run died without an exit code")
    return RunOutcome(**out, status="ok" if code == 0 else "failed", error=None if code == 0 else f"exit {code}")


def outcome_from_metrics(metrics_path: Path, out: dict) -> RunOutcome:
    """What the trainer said of its own run (metrics.json status, accuracy, a budget breach); the
    outcome carries the metrics on, so the cycle reads the file once."""
    try:
        metrics = read_metrics(metrics_path.parent, within=metrics_path.parent.parent)
    except MetricsError as exc:
        return RunOutcome(**out, status="failed", error=str(exc)[:300])
    if metrics is None:
        return RunOutcome(**out, status="failed", error=f"{metrics_path}: no such file")
    return RunOutcome(**out, status=metrics.status, error=metrics.error,
                      val_accuracy=metrics.eval.accuracy if metrics.eval else None,
                      budget_breach=metrics.budget_breach, metrics=metrics)
