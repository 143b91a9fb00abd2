"""Where the daemon keeps what it knows, under the config's `workspace` folder (artifacts/)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    def daemon_log(self) -> Path: return self.root / "logs" / "daemon.log"
    @property
    def events(self) -> Path: return self.root / "events.jsonl"
    @property
    def llm_modes(self) -> Path: return self.root / "logs" / "llm_modes.json"
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
        return self


def workspace_of(cfg, override: str | Path | None = None) -> Workspace:
    """The one workspace resolver (daemon, pipeline, PHASE, policy check): `--workspace` as typed
    (relative to the current directory), else the config's `workspace` under the project root
    (`cfg` is a loop.config.DaemonConfig)."""
    if override:
        return Workspace(Path(override).expanduser().resolve())
    return Workspace(cfg.resolve(cfg.workspace))
