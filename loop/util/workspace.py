"""Where the daemon keeps what it knows, under the config's `workspace` folder (artifacts/)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loop.util.fsutil import TEMP_SUFFIX

# The shared TODO queue's heading; loop/journal/notes.py writes the items under it. `ensure` writes
# it with an empty queue, so the file the README points to is there before the first TODO.
TODO_HEADING = ("# Shared TODO", "", "One queue for Builder and Mentor. Resolve items by id.", "")


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # ---- daemon ----
    @property
    def state(self) -> Path: return self.root / "state.json"
    @property
    def heartbeat(self) -> Path: return self.root / "logs" / "daemon_heartbeat.json"
    @property
    def lock(self) -> Path: return self.root / "daemon.lock"
    @property
    def pid(self) -> Path: return self.root / "daemon.pid"
    @property
    def stop_request(self) -> Path: return self.root / "STOP_REQUESTED"
    @property
    def unblock_request(self) -> Path: return self.root / "UNBLOCK_REQUESTED"
    @property
    def daemon_log(self) -> Path: return self.root / "logs" / "daemon.log"
    @property
    def events(self) -> Path: return self.root / "events.jsonl"
    @property
    def llm_modes(self) -> Path: return self.root / "logs" / "llm_modes.json"
    @property
    def data_report(self) -> Path: return self.root / "logs" / "data_report.json"
    # ---- notes ----
    @property
    def notes(self) -> Path: return self.root / "notes"
    @property
    def workpad(self) -> Path: return self.notes / "workpad.md"
    @property
    def todo(self) -> Path: return self.notes / "shared_todo.md"
    @property
    def mentor_notes(self) -> Path: return self.notes / "mentor_notes.md"
    @property
    def storyline(self) -> Path: return self.notes / "storyline.md"
    # ---- runs ----
    @property
    def runs(self) -> Path: return self.root / "runs"
    @property
    def runs_index(self) -> Path: return self.runs / "index.jsonl"
    @property
    def autofix_configs(self) -> Path: return self.root / "autofix_configs"
    @property
    def finish_up(self) -> Path: return self.root / "FINISH_UP.json"
    @property
    def reports(self) -> Path: return self.root / "reports"

    def ensure(self) -> "Workspace":
        for folder in (self.root, self.root / "logs", self.notes, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        self._ensure_todo()
        return self

    def _ensure_todo(self) -> None:
        """notes/shared_todo.md with its heading and an empty queue, unless a file is there already
        (never replaced): the text goes to a temp file that is hard-linked into place, which fails
        when the name exists, so a concurrent writer's queue is never overwritten and a crash leaves
        no half-written file. Best effort: on a full disk the first TODO write creates it instead."""
        if os.path.lexists(self.todo):
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.todo.name}.", suffix=TEMP_SUFFIX, dir=self.notes)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write("\n".join(TODO_HEADING) + "\n")
                os.link(tmp, self.todo)
            finally:
                os.unlink(tmp)
        except OSError:             # FileExistsError: someone was first; ENOSPC and the like: see above
            pass


def workspace_of(cfg, override: str | Path | None = None) -> Workspace:
    """The one workspace resolver (daemon, pipeline, PHASE, policy check): `--workspace` as typed
    (relative to the current directory), else the config's `workspace` under the project root
    (`cfg` is a loop.config.DaemonConfig)."""
    if override:
        return Workspace(Path(override).expanduser().resolve())
    return Workspace(cfg.resolve(cfg.workspace))
