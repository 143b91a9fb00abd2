"""What became of a run (`outcome_of`): its exit code, its metrics.json (read without following
links: the run wrote it, so it may be anything), and what the supervisor saw (timed out, stalled,
stopped). Whether it beat the best is another judgement: loop/verdict/keeps.py `verdict_against_best`."""
from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from loop.run.failure import TAIL_BYTES, FailureSignature, signature_of
from loop.run.supervise import ActiveRun, exit_code, hit_walltime
from loop.util.fsutil import read_regular_text


class RunOutcome(BaseModel):
    """One finished (or abandoned) run, as the cycle event's `run_outcome` and state.json keep it."""

    model_config = ConfigDict(extra="forbid")

    label: str
    status: str                     # ok | failed | timed_out | stalled | interrupted | killed | stale_orphan | running
    kind: str = "train"
    exit_code: int | None = None
    log_path: str = ""
    run_dir: str = ""
    seconds: float = 0.0
    error: str | None = None
    val_accuracy: float | None = None
    budget_breach: dict | None = None
    monitor_cycles: int | None = None   # for a run still followed
    signature: FailureSignature | None = None   # what ended a failed run (loop/run/failure.py)

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
    """What the trainer said of its own run (metrics.json status, accuracy, a budget breach)."""
    try:
        metrics = json.loads(read_regular_text(metrics_path, within=metrics_path.parent.parent))
    except (OSError, ValueError) as exc:
        return RunOutcome(**out, status="failed", error=f"unreadable metrics.json: {exc}"[:300])
    if not isinstance(metrics, dict) or "status" not in metrics:
        return RunOutcome(**out, status="failed", error="metrics.json has no status")
    accuracy = (metrics.get("eval") or {}).get("accuracy")
    breach = metrics.get("budget_breach")
    error = metrics.get("error")
    return RunOutcome(**out, status=str(metrics["status"]), error=None if error is None else str(error),
                      val_accuracy=accuracy if isinstance(accuracy, (int, float)) else None,
                      budget_breach=breach if isinstance(breach, dict) else None)
