"""Where the daemon keeps what it knows, under the config's `workspace` folder (artifacts/): the one
source of the workspace layout (`Workspace`) and of the promotion pipeline's part of it (`ModelPaths`,
under models/). The run sandbox's read-only set and the start-up sweep's folders derive from here."""
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
    def logs(self) -> Path: return self.root / "logs"
    @property
    def heartbeat(self) -> Path: return self.logs / "daemon_heartbeat.json"
    @property
    def lock(self) -> Path: return self.root / "daemon.lock"
    @property
    def pid(self) -> Path: return self.root / "daemon.pid"
    @property
    def stop_request(self) -> Path: return self.root / "STOP_REQUESTED"
    @property
    def unblock_request(self) -> Path: return self.root / "UNBLOCK_REQUESTED"
    @property
    def daemon_log(self) -> Path: return self.logs / "daemon.log"
    @property
    def events(self) -> Path: return self.root / "events.jsonl"
    @property
    def llm_modes(self) -> Path: return self.logs / "llm_modes.json"
    @property
    def data_report(self) -> Path: return self.logs / "data_report.json"
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
    def autofix_configs(self) -> Path: return self.root / "autofix_configs"   # auto-repair's config copies
    @property
    def autofix_repos(self) -> Path: return self.root / "autofix_repos"       # auto-repair's pinned clones
    @property
    def finish_up(self) -> Path: return self.root / "FINISH_UP.json"
    @property
    def reports(self) -> Path: return self.root / "reports"
    @property
    def phase(self) -> Path: return self.root / "phase"       # PHASE's results, start records, completion signals
    @property
    def slots(self) -> Path: return self.root / "slots"       # the device slot pool's leases and lock
    @property
    def pixel_cache(self) -> Path: return self.root / "cache" / "pixels"   # unless LLMLOOP_PIXEL_CACHE names one
    @property
    def models(self) -> "ModelPaths": return ModelPaths(self.root)

    def daemon_records(self) -> tuple[Path, ...]:
        """Everything the daemon (or the person) writes and a run must never: state, requests, history,
        notes, logs, reports, auto-repair's inputs and the models. The run sandbox binds them read-only
        (loop/run/sandbox_setup.py). Not phase/: PHASE is a sandboxed run whose own folder it is."""
        models = self.models
        return (self.state, self.events, self.lock, self.pid, self.stop_request, self.unblock_request,
                self.finish_up, self.logs, self.notes, self.slots, self.reports, self.runs_index,
                self.autofix_configs, self.autofix_repos, models.archive, models.head, models.next_head,
                models.lineage, models.log, models.progress_log, models.proposal, models.lifecycle,
                models.quarantine)

    def pinned_records(self) -> tuple[Path, ...]:
        """Records that are only appended to or cut in place, never replaced or removed: one may sit
        inside a folder runs can write (`sandbox_writable_paths: [runs]`), since a read-only bind of the
        file itself holds while it exists. The sandbox creates them (empty) before the first run."""
        return (self.runs_index, self.models.log)

    def state_folders(self) -> tuple[Path, ...]:
        """Folders the daemon writes with atomic writes: the start-up sweep removes the temp files a
        crash leaves in them (loop/daemon/recovery.py)."""
        return (self.root, self.logs, self.notes, self.reports, self.autofix_configs,
                self.models.root, self.models.lifecycle, self.runs)

    def ensure(self) -> "Workspace":
        for folder in (self.root, self.logs, self.notes, self.runs):
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


@dataclass(frozen=True)
class ModelPaths:
    """Where the promotion pipeline keeps its state, under `<workspace>/models/`."""

    workspace: Path

    @property
    def root(self) -> Path:
        return self.workspace / "models"

    @property
    def archive(self) -> Path:          # GEN_ARCHIVE: one read-only folder per candidate
        return self.root / "archive"

    @property
    def head(self) -> Path:             # GEN_HEAD: a symlink into the archive
        return self.root / "GEN_HEAD"

    @property
    def next_head(self) -> Path:        # the new link a cutover renames over GEN_HEAD
        return self.root / ".GEN_HEAD.next"

    @property
    def candidates(self) -> Path:       # GEN_CANDIDATES: work folders while training
        return self.root / "candidates"

    @property
    def lineage(self) -> Path:
        return self.root / "lineage.csv"

    @property
    def log(self) -> Path:
        return self.root / "evolution_log.jsonl"

    @property
    def progress_log(self) -> Path:     # an evolution window's progress lines
        return self.root / "evolution.log"

    @property
    def proposal(self) -> Path:
        return self.root / "PROMOTION_PROPOSAL.json"

    @property
    def lifecycle(self) -> Path:
        return self.root / "lifecycle"

    @property
    def quarantine(self) -> Path:       # archive entries lineage.csv does not know (loop/daemon/recovery.py)
        return self.root / "quarantine"

    def head_name(self) -> str | None:
        """The archive entry GEN_HEAD points at, or None when there is no HEAD yet."""
        try:
            return Path(self.head.readlink()).name
        except (FileNotFoundError, OSError):
            return None

    def entry(self, name: str) -> Path:
        return self.archive / name


def workspace_of(cfg, override: str | Path | None = None) -> Workspace:
    """The one workspace resolver (daemon, pipeline, PHASE, policy check): `--workspace` as typed
    (relative to the current directory), else the config's `workspace` under the project root
    (`cfg` is a loop.config.DaemonConfig)."""
    if override:
        return Workspace(Path(override).expanduser().resolve())
    return Workspace(cfg.resolve(cfg.workspace))
