"""The pruned marker: what the retention sweep (loop/retention/sweep.py) removed from an archive entry
or a run folder, so nobody mistakes a pruned entry for a corrupt one.

An archive entry keeps `PRUNED.json` inside its read-only folder, beside the hashes.csv it never
touches: every removed file is listed with the sha256 and size hashes.csv records for it, so
`verify` checks that exactly those files (and only they) are absent. A run folder keeps it at
`runs/<run>/PRUNED.json`, beside the trainer's `out/`. Metrics, configs and logs are never pruned.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

MARKER = "PRUNED.json"


class PrunedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str                    # the file's name in the folder (weights, a checkpoint)
    sha256: str = ""             # as hashes.csv records it (archive entries); "" in a run folder
    bytes: int = 0


class PrunedRecord(BaseModel):
    """One folder's pruning: when, why, and which files went (all sweeps so far, merged)."""
    model_config = ConfigDict(extra="forbid")

    pruned_at: str               # UTC, ISO 8601
    reason: str                  # the rule that let it go (e.g. "outside the top 5 by score")
    files: list[PrunedFile]

    def names(self) -> set[str]:
        return {f.name for f in self.files}

    @property
    def weights_gone(self) -> bool:
        return "model.safetensors" in self.names()


def read_marker(folder: Path) -> PrunedRecord | None:
    """The folder's marker, or None (no marker, a link where it should be, or one that does not
    parse: an unreadable marker excuses nothing, so verify then reports the missing files)."""
    path = Path(folder) / MARKER
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        return PrunedRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def run_folder_of(run_dir: str | Path) -> Path:
    """The daemon's run folder (`runs/<run>/`) of a runs-index `run_dir` (the trainer's `out/`)."""
    out = Path(run_dir)
    return out.parent if out.name == "out" else out


def run_pruned(run_dir: str | Path) -> bool:
    """Whether the retention sweep took a run's weights or checkpoint (it cannot be continued)."""
    return read_marker(run_folder_of(run_dir)) is not None


def weights_pruned(folder: Path) -> bool:
    """Whether retention took an archive entry's weights (it is kept for its record, not for loading)."""
    marker = read_marker(folder)
    return marker is not None and marker.weights_gone
