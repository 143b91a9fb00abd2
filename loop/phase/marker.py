"""Who runs PHASE now: `python -m loop.phase run` records itself in
<workspace>/phase/phase_started_<run_id>.json before it evaluates anything (PhaseStarted). A daemon
that does not start PHASE itself (`phase.scheduler: systemd`: a timer does) reads the newest record
to pause for that run and ingest it; `llmloop reset` reads it to refuse while PHASE runs. The record
stays after the run: with the completion signal beside it, it says the run ended."""
from __future__ import annotations

import time
from pathlib import Path

import psutil
from pydantic import BaseModel, ValidationError

from loop.errors import ConfigError
from loop.phase.results import RUN_ID_PATTERN, completion_signal, phase_root
from loop.util.fsutil import atomic_write_text

STARTED_PREFIX = "phase_started_"


class PhaseStarted(BaseModel):
    """One PHASE process, as it recorded itself at its start."""

    run_id: str
    pid: int
    create_time: float          # with the pid: a reused pid is not taken for PHASE
    started_utc: str


def started_path(workspace: Path, run_id: str) -> Path:
    return phase_root(workspace) / f"{STARTED_PREFIX}{run_id}.json"


def record_start(workspace: Path, run_id: str) -> PhaseStarted:
    """Write this process's record (before the run, so a waiting daemon sees it from the start)."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    me = psutil.Process()
    record = PhaseStarted(run_id=run_id, pid=me.pid, create_time=me.create_time(),
                          started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = started_path(workspace, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    completion_signal(workspace, run_id).unlink(missing_ok=True)   # a rerun's old signal would read as this run's end
    atomic_write_text(path, record.model_dump_json() + "\n")
    return record


def latest(workspace: Path) -> PhaseStarted | None:
    """The most recently started PHASE run's record (unreadable records are skipped), or None."""
    found: list[tuple[int, PhaseStarted]] = []
    for path in phase_root(workspace).glob(f"{STARTED_PREFIX}*.json"):
        try:
            found.append((path.stat().st_mtime_ns, PhaseStarted.model_validate_json(path.read_text(encoding="utf-8"))))
        except (OSError, ValidationError):
            continue
    return max(found, key=lambda pair: (pair[1].started_utc, pair[0]))[1] if found else None


def is_alive(record: PhaseStarted) -> bool:
    """Whether the process that wrote `record` still runs (same pid and start time, not a zombie)."""
    try:
        proc = psutil.Process(record.pid)
        return abs(proc.create_time() - record.create_time) <= 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running(workspace: Path) -> PhaseStarted | None:
    """The PHASE run in progress on `workspace` (started, alive, no completion signal yet), or None."""
    record = latest(workspace)
    if record is None or completion_signal(workspace, record.run_id).exists() or not is_alive(record):
        return None
    return record


class Liveness:
    """`poll()` as subprocess.Popen has it, for a PHASE process this one did not start (a timer did):
    None while it runs, its exit as -1 once it is gone (its real exit code is systemd's to know)."""

    def __init__(self, record: PhaseStarted):
        self.record = record
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not is_alive(self.record):
            self.returncode = -1
        return self.returncode
