"""PHASE's files: the typed records of phase_results.json and of its completion signal, where they
live, and reading and writing them.

A run writes `<workspace>/phase/<run_id>/phase_results.json` (PhaseResults) and then, last and
atomically, the completion signal `<workspace>/phase/phase_complete_<run_id>.json` (PhaseSignal),
which tells the paused loop to resume and ingest; only runs with a signal count as complete.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from loop.errors import ConfigError
from loop.util.fsutil import atomic_write_text
from loop.util.workspace import Workspace

RESULTS_FILE = "phase_results.json"
SIGNAL_PREFIX = "phase_complete_"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------ file formats ----

class ModelResult(BaseModel):
    accuracy_mean: float
    accuracy_std: float
    ci_low: float
    ci_high: float
    n: int                       # QTIME evaluations behind the mean
    recall: float                # plain accuracy on the recall set (older data)
    generalize: float            # plain accuracy on the delta set (newest data)
    val: float
    is_head: bool = False


class DomainMetrics(BaseModel):
    fitness: float               # the best model's mean accuracy in this domain
    insights: list[str] = Field(default_factory=list)
    models: dict[str, ModelResult] = Field(default_factory=dict)


class DroppedValue(BaseModel):
    """Why PHASE takes a value out of the search: every model evaluated with it was flagged, and a
    promoted model of the same domain was trained with another value of the same parameter."""

    value: Any
    model: str                   # the flagged model trained with it (the nearest to the best, if several)
    ci: tuple[float, float]      # its accuracy interval
    against: str                 # the domain's best model, trained with another value
    against_value: Any
    against_ci: tuple[float, float]
    domain: str
    confounded_with: list[str] = Field(default_factory=list)   # other parameters the two models differ in
    # stamped by the daemon when it ingests the results; None in phase_results.json itself
    ingested_cycle: int | None = None
    expires_after_cycle: int | None = None     # the last cycle it narrows the search

    @property
    def margin(self) -> float:
        """How far the flagged interval lies below the best's (accuracy, > 0)."""
        return self.against_ci[0] - self.ci[1]


class QTime(BaseModel):
    epochs: int
    slices: int
    replicas: int
    evaluations_per_model: int


class PhaseResults(BaseModel):
    """phase_results.json, in dream_phase.md's shape plus run_id, qtime, seconds and the insights
    that belong to no domain (skipped entries, nothing to evaluate)."""

    timestamp: int
    run_id: str
    domains_tested: list[str] = Field(default_factory=list)
    metrics: dict[str, DomainMetrics] = Field(default_factory=dict)
    promoted_variants: list[str] = Field(default_factory=list)
    flagged_variants: list[str] = Field(default_factory=list)
    # per parameter, the values to leave out of the search, each with its evidence
    search_space_recommendations: dict[str, list[DroppedValue]] = Field(default_factory=dict)
    qtime: QTime
    seconds: float
    insights: list[str] = Field(default_factory=list)

    @field_validator("search_space_recommendations", mode="before")
    @classmethod
    def _evidence_only(cls, value: Any) -> Any:
        """Older files listed the promoted models' values to keep, with no evidence: they narrow nothing."""
        if not isinstance(value, dict):
            return {}
        kept = {p: [e for e in entries if isinstance(e, (dict, DroppedValue))] for p, entries in value.items()
                if isinstance(entries, list)}
        return {p: entries for p, entries in kept.items() if entries}


class PhaseSignal(BaseModel):
    """phase_complete_<run_id>.json: written last, so its presence means the results are whole."""

    run_id: str
    results: str
    timestamp: int


# ------------------------------------------------------------------- paths ----

def phase_root(workspace: Path) -> Path:
    return Workspace(workspace).phase


def results_path(workspace: Path, run_id: str) -> Path:
    return phase_root(workspace) / run_id / RESULTS_FILE


def completion_signal(workspace: Path, run_id: str) -> Path:
    return phase_root(workspace) / f"{SIGNAL_PREFIX}{run_id}.json"


def default_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


# ----------------------------------------------------------------- writing ----

def write_results(workspace: Path, results: PhaseResults) -> Path:
    """phase_results.json, then, last and atomically, the completion signal. Returns the results path."""
    out_path = results_path(workspace, results.run_id)
    atomic_write_text(out_path, results.model_dump_json(indent=2) + "\n")
    signal = PhaseSignal(run_id=results.run_id, results=str(out_path.resolve()), timestamp=int(time.time()))
    atomic_write_text(completion_signal(workspace, results.run_id), signal.model_dump_json(indent=2) + "\n")
    return out_path


# ---------------------------------------------------------------- reading ----

def read_results(path: str | Path) -> PhaseResults:
    path = Path(path)
    try:
        return PhaseResults.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable PHASE results: {exc}") from None


def latest_results(workspace: Path) -> PhaseResults | None:
    """The results of the newest completed PHASE run (only runs with a completion signal count)."""
    signals = []
    for path in phase_root(workspace).glob(f"{SIGNAL_PREFIX}*.json"):
        try:
            signals.append(PhaseSignal.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    for signal in sorted(signals, key=lambda s: (s.timestamp, s.run_id), reverse=True):
        for candidate in (Path(signal.results), results_path(workspace, signal.run_id)):  # the workspace may move
            if candidate.is_file():
                return read_results(candidate)
    return None
