"""What every cycle needs, built once by the daemon (`Loop`), and small helpers the steps share."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loop.agents.space import TaskProfile
from loop.config import DaemonConfig
from loop.domains.datareport import DataReport
from loop.errors import LoopError
from loop.journal.events import EventLog
from loop.journal.history import HistoryReader, RunRecord
from loop.util.secrets import redact
from loop.util.workspace import Workspace


@dataclass
class Loop:
    """What every cycle needs, built once by the daemon."""

    cfg: DaemonConfig
    repo_root: Path
    ws: Workspace
    events: EventLog
    builder: object | None = None            # LLMClient, or None for the offline policy
    mentor: object | None = None
    secrets: list[str] = field(default_factory=list)
    base_secrets: list[str] = field(default_factory=list)   # the start's; `secrets` adds the workspace's each cycle
    should_stop: Callable[[], bool] = lambda: False
    say: Callable[[str], None] = print
    phase_hint: dict = field(default_factory=dict)   # search-space recommendations (PHASE)
    current: dict = field(default_factory=dict)      # {"trace": id of the cycle running now}
    history: HistoryReader | None = None
    sandbox: object | None = None                    # loop.run.sandbox.Sandbox; None: no OS boundary (tests)
    executor: object | None = None                   # a loop.run.supervise.Executor; made on first use
    spend_cap: object | None = None                  # loop.agents.usage.SpendCap shared by both roles
    # ---- know the data (loop/cycle/dataprofile.py) ----
    data_report: DataReport | None = None            # the task's data report, once built or read back
    task_profile: TaskProfile | None = None          # what the offline policy knows of the task
    data_error: str = ""                             # the last reason the report failed ("" when fine)

    def __post_init__(self):
        self.base_secrets = self.base_secrets or list(self.secrets)

    def runner(self):
        """The executor runs go through (local, with the workspace's device slots, unless configured)."""
        if self.executor is None:
            from loop.run.executor import executor_for

            self.executor = executor_for(self.cfg, self.repo_root, self.ws.root, self.sandbox)
        return self.executor

    def close(self) -> None:
        """End what the executor holds open: a Ray driver would outlive a `run_daemon` called
        in-process, and spin once its cluster is gone. Runs in flight go on."""
        if self.executor is not None:
            self.executor.close()

    def base_config(self) -> dict:
        """The default trainer config every overlay goes on ({} when unreadable: the gate says why)."""
        from loop.config import read_yaml

        try:
            return read_yaml(self.cfg.resolve(self.cfg.default_trainer_config))
        except Exception:                    # noqa: BLE001 - train_plan reports the same file's error
            return {}

    def walltime_cap_seconds(self) -> float | None:
        """The walltime cap a run of the default config gets (the run plan's rule: the tighter of the
        trainer config's and the daemon's)."""
        from loop.run.plan import tighter_caps

        try:
            minutes = tighter_caps(self.base_config().get("budget"), self.cfg.budget).get("max_walltime_minutes")
        except LoopError:                    # a malformed budget: the gate refuses the run and says why
            return None
        return minutes * 60 if minutes else None

    def run_history(self) -> list[RunRecord]:
        if self.history is None:
            self.history = HistoryReader(self.ws.runs_index)
        return self.history.read()


def scrub(model, secrets: list[str]):
    """The same record with every secret value redacted from every string in it."""
    return type(model).model_validate_json(redact(model.model_dump_json(), secrets))


def new_trace_id(cycle: int) -> str:
    return f"c{cycle:05d}-{uuid.uuid4().hex[:6]}"
