"""What a daemon start does after a kill -9, and how a cycle that hit a full disk is survived.

Start-up sweep (`recover`), once, before the first cycle:
  - stray temp files of atomic writes (".<name>.*.tmp") in the workspace's state folders are removed
    (never inside frozen archive entries, never in a run's own output, which a re-adopted run may
    still be writing);
  - `.staging-*` folders left by a crash in the middle of an archive freeze are removed, and so is
    the `.GEN_HEAD.next` link a crash between the two steps of a cutover leaves;
  - a freeze journaled by `archive.freeze_and_record` whose entry is in place and verifies gets its
    lineage row (a kill between the rename and the lineage write); any other archive entry that
    lineage.csv does not know is moved to models/quarantine/ (it would otherwise fail verify);
  - a torn last line of the runs index is cut (events.jsonl gets the same from `repair_tail`);
  - the cycle counter is reconciled with the event log: a kill after a cycle's `cycle` event but before
    its state.json save would otherwise run (and record) that cycle number twice.

Degraded mode (`Degraded`): an OSError out of a cycle (ENOSPC, EFBIG, EDQUOT, EROFS ...) becomes a
`degraded` event naming the write site, the daemon keeps its last good state and backs off instead
of exiting; when even the event cannot be written it goes to stderr and is written once space returns.
"""
from __future__ import annotations

import errno
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from loop.archive.freeze import complete_interrupted_freezes, make_writable
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.cycle.state import LoopState
from loop.journal.events import EventLog, repair_torn_tail
from loop.util.fsutil import TEMP_SUFFIX
from loop.util.workspace import Workspace

DAEMON_FILES_IN_RUN_FOLDERS = ("run.yaml",)     # a run folder's other files belong to the run itself
BACKOFF_SECONDS = (0.5, 30.0)                     # first pause after a failed cycle, and the cap


# ============================================================ start-up sweep ====

def recover(ws: Workspace, events: EventLog) -> dict:
    """Clean what a crash can leave behind; returns what was done (for the daemon_start event)."""
    temp_files = sweep_temp_files(ws.root)
    staging = sweep_archive_staging(ws.models)
    return {"temp_files_removed": temp_files, "archive_staging_removed": staging,
            "archive_freezes_completed": complete_interrupted_freezes(ws.models),
            "archive_entries_quarantined": quarantine_unregistered(ws.models),
            "runs_index_torn_tail_cut": repair_torn_tail(ws.runs_index),
            "cycle_reconciled": reconcile_cycle(ws, events)}


def crashed_before(events: EventLog) -> bool:
    """Whether the last daemon start recorded in the log has no clean stop after it (a kill -9, a
    power cut, an OOM kill): read before this start's own daemon_start is written."""
    window = 4096                       # the end of the log; the whole log only when no start or stop is there
    recent = events.tail(window)
    marks = [r["kind"] for r in recent if r.get("kind") in ("daemon_start", "daemon_stop")]
    if not marks and len(recent) >= window:
        marks = [r["kind"] for r in events if r.get("kind") in ("daemon_start", "daemon_stop")]
    return bool(marks) and marks[-1] == "daemon_start"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sweep_temp_files(root: Path) -> list[str]:
    removed = []
    ws = Workspace(root)
    for folder in ws.state_folders():
        removed += _remove_temps(folder, lambda name: True)
    runs = ws.runs
    if runs.is_dir():
        for run_dir in (p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()):
            removed += _remove_temps(run_dir, lambda name: any(name.startswith(f".{f}.")
                                                               for f in DAEMON_FILES_IN_RUN_FOLDERS))
    return [str(Path(p).relative_to(root)) for p in removed]


def _remove_temps(folder: Path, owned) -> list[str]:
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if is_temp_name(path.name) and owned(path.name) and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


def sweep_archive_staging(paths: ModelPaths) -> list[str]:
    """Half-written archive entries (`archive/.staging-*`, made read-only part way through a freeze)
    and a cutover's leftover `.GEN_HEAD.next` link. Frozen entries are never touched."""
    removed = []
    if paths.archive.is_dir():
        for staging in paths.archive.glob(".staging-*"):
            if staging.is_dir() and not staging.is_symlink():
                make_writable(staging)
                shutil.rmtree(staging)
                removed.append(staging.name)
    next_link = paths.next_head
    if next_link.is_symlink() or next_link.exists():
        next_link.unlink()
        removed.append(next_link.name)
    return removed


def quarantine_unregistered(paths: ModelPaths) -> list[str]:
    """An entry frozen into the archive whose lineage row was never written (a kill between the
    two) is not trusted: `archive verify` would flag it as planted. Move it to models/quarantine/
    for a person to look at; the archive itself then verifies again."""
    if not paths.archive.is_dir():
        return []
    registered = {row.name for row in read_lineage(paths.lineage)}
    moved = []
    for entry in sorted(p for p in paths.archive.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if entry.name in registered or entry.is_symlink():
            continue
        target = paths.quarantine / f"{entry.name}-{int(time.time())}"
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = entry.stat().st_mode
        entry.chmod(mode | 0o200)          # moving a folder to a new parent rewrites its `..`
        entry.rename(target)
        target.chmod(mode)
        moved.append(entry.name)
    return moved


def reconcile_cycle(ws: Workspace, events: EventLog) -> int | None:
    """If the event log recorded a cycle newer than state.json (a kill between the `cycle` event and
    the state save), move the counter up to it so that cycle number is not run again. Returns the
    cycle moved to, or None."""
    last = events.tail(1, kind="cycle")
    if not last or not isinstance(last[0].get("cycle"), int):
        return None
    state = LoopState.load(ws.state)
    if last[0]["cycle"] <= state.cycle:
        return None
    state.cycle = last[0]["cycle"]
    state.save(ws.state)
    return state.cycle


# ============================================================ degraded mode ====

@dataclass
class Degraded:
    """Failed cycles in a row and the `degraded` records not yet written (the disk may be full)."""

    events: EventLog
    failures: int = 0
    pending: list[dict] = field(default_factory=list)
    last_error: str = ""

    def record(self, exc: OSError, state: LoopState, say=print) -> float:
        """Note a cycle that failed with `exc`; returns the seconds to back off before the next one."""
        self.failures += 1
        info = describe(exc) | {"cycle": state.cycle + 1, "failures_in_a_row": self.failures,
                                "last_good_cycle": state.cycle}
        self.pending = (self.pending + [info])[-20:]
        skip_recorded_cycle(state, self.events)
        if not self.flush():
            _tell(lambda line: print(line, file=sys.stderr, flush=True),
                  f"llmloop degraded (event not written yet: {self.last_error}): {json.dumps(info)}")
        seconds = min(BACKOFF_SECONDS[1], BACKOFF_SECONDS[0] * 2 ** (self.failures - 1))
        _tell(say, f"degraded: {info['site']} failed with {info['errno']} ({info['error']}); "
                   f"keeping the last good state (cycle {state.cycle}), next try in {seconds:.1f}s")
        return seconds

    def flush(self) -> bool:
        """Write the pending `degraded` events, oldest first. True when none is left."""
        while self.pending:
            info = self.pending[0]
            try:
                self.events.append("degraded", f"degraded-{info['cycle']:05d}", **info)
            except OSError as exc:
                self.last_error = str(exc)
                return False
            self.pending.pop(0)
        return True

    def recovered(self) -> None:
        self.failures = 0


def skip_recorded_cycle(state: LoopState, events: EventLog) -> None:
    """A cycle that failed after its `cycle` event was written (storyline, state.json or heartbeat on a
    full disk) is done as far as the log goes: move the counter past it so its number is not reused."""
    try:
        last = events.tail(1, kind="cycle")
    except OSError:
        return
    if last and isinstance(last[0].get("cycle"), int) and last[0]["cycle"] > state.cycle:
        state.cycle = last[0]["cycle"]


def _tell(say, line: str) -> None:
    """Print, unless the output itself is a file on the full disk (a background daemon's log)."""
    try:
        say(line)
    except OSError:
        pass


def describe(exc: OSError) -> dict:
    """The failed write site: the file (when known), the loop function that wrote it, the errno."""
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    return {"site": write_site(exc), "path": exc.filename, "errno": code, "error": str(exc)[:300],
            "ts_unix": round(time.time(), 3)}


def write_site(exc: OSError) -> str:
    """Where in the loop the write failed: the innermost frame in the `loop` package that is not a
    shared write helper or a private function (so state.save, notes.append_line, archive.freeze,
    events.append_line ... and not fsutil)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/loop/" in f.filename.replace("\\", "/")]
    helpers = ("/loop/util/fsutil.py", "/loop/util/faults.py")
    named = [f for f in frames if not f.filename.replace("\\", "/").endswith(helpers) and not f.name.startswith("_")]
    picked = (named or frames)[-1:]
    if not picked:
        return "unknown"
    frame = picked[0]
    module = Path(frame.filename.replace("\\", "/")).stem     # the module, without its folder: state.save
    return f"{module}.{frame.name}"
