"""metrics.json of a run: the models the trainer writes (RunMetrics and its parts) and the one
reader every other module uses (`read_metrics`). No torch here, so the run judge, the verdict, the
reports and the tracker read the file through the model without loading the trainer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from loop.config import BudgetCaps
from loop.errors import MetricsError
from loop.util.fsutil import atomic_write_text, read_regular_text

METRICS_FILE = "metrics.json"


class BudgetUsed(BaseModel):
    steps: int = 0
    walltime_minutes: float = 0.0
    gpu_memory_gb: float = 0.0        # peak CUDA memory allocated (0 on CPU)
    cpu_memory_gb: float = 0.0        # peak resident memory of the training process
    tokens_processed: int = 0         # images seen by the student
    disk_gb: float = 0.0              # size of the run folder


class BudgetBreach(BaseModel):
    cap: str
    limit: float
    used: float


class EvalMetrics(BaseModel):
    accuracy: float
    loss: float
    count: int
    per_class_accuracy: dict[str, float] = Field(default_factory=dict)
    # which images were right (np.packbits, hex; sample order), so two runs can be compared image by
    # image (a paired test, loop/verdict/noise.py); '' when not recorded
    correct: str = ""


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


class RunMetrics(BaseModel):
    status: Literal["running", "ok", "budget_exceeded", "failed"]
    error: str | None = None
    run_label: str | None = None
    model_name: str
    domain: str
    seed: int
    device: str
    # ---- training curve summary ----
    steps: int = 0
    epochs_completed: int = 0
    epochs_planned: int = 0
    resumed_from: str | None = None    # a screened run this one continued (run.resume_from)
    epochs_at_start: int = 0           # epochs already done when this process began (resume, continuation)
    loss_start: float | None = None
    loss_final: float | None = None
    walltime_seconds: float = 0.0
    walltime_minutes: float = 0.0
    images_per_second: float = 0.0     # images seen / run time, per-epoch validation and checkpoints included
    cpu_seconds: float = 0.0           # user + system CPU of this process and its loader workers, start-up included
    curve: list[EpochRecord] = Field(default_factory=list)
    # ---- evaluation ----
    eval: EvalMetrics | None = None
    # ---- budget ----
    budget: BudgetCaps = Field(default_factory=BudgetCaps)
    budget_used: BudgetUsed = Field(default_factory=BudgetUsed)
    budget_breach: BudgetBreach | None = None
    # stopped by its walltime cap (fitted at the start, or reached) with its last epoch's checkpoint
    # kept: a lower-fidelity result that a continuation (run.resume_from) trains on from there
    stopped_at_cap: bool = False
    epoch_seconds_estimate: float | None = None   # measured over the first steps (the cap fit)
    # ---- provenance ----
    kd_teacher: str | None = None
    kd_stabilizer: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)

    def write(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / METRICS_FILE, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunMetrics":
        """The run's metrics; MetricsError (naming the file) when it is missing or malformed."""
        found = read_metrics(run_dir)
        if found is None:
            raise MetricsError(f"{Path(run_dir) / METRICS_FILE}: no such file")
        return found


def read_metrics(run_dir: str | Path, within: str | Path | None = None) -> RunMetrics | None:
    """A run's metrics.json through the model: None when the run wrote none; MetricsError naming the
    file when it is there but unreadable or not a run's metrics. `within`: the folder below which
    no link is followed (the file is run-written, so it may be anything)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return RunMetrics.model_validate_json(read_regular_text(path, within=within))
    except ValidationError as exc:
        raise MetricsError(f"{path}: not a run's metrics: {first_error(exc)}") from None
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{path}: unreadable: {exc}") from None


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as `field: message` (the whole list can run to pages)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def metrics_or_none(run_dir: str | Path, within: str | Path | None = None) -> RunMetrics | None:
    """`read_metrics` for readers that treat an unreadable file as none (reports, the tracker)."""
    try:
        return read_metrics(run_dir, within)
    except MetricsError:
        return None


def entry_trainer_metrics(entry: str | Path) -> RunMetrics | None:
    """The run's metrics an archive entry keeps: its metrics.json (the candidate path's, in the seed's
    shape) holds them under `trainer`. None when it has none or they do not read."""
    try:
        trainer = json.loads(read_regular_text(Path(entry) / METRICS_FILE)).get("trainer")
        return RunMetrics.model_validate(trainer) if trainer else None
    except (OSError, ValueError, AttributeError):
        return None
