"""What one tracking store already holds from this workspace: <workspace>/tracking/mlflow-<id>.json,
one file per (store, experiment), so pointing the config at a new store logs the whole night there."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from loop.util.fsutil import atomic_write_text


class LoggedRun(BaseModel):
    run_id: str
    entry: str | None = None            # its archive entry: its promotion tag follows the entry's state
    promotion: str | None = None        # the promotion state last logged


class Ledger(BaseModel):
    """Run keys -> MLflow run ids, and the parent run of each daemon start."""

    target: str                                         # the store and experiment, credentials stripped
    runs: dict[str, LoggedRun] = Field(default_factory=dict)
    parents: dict[str, str] = Field(default_factory=dict)   # daemon start id -> its parent run id
    open_parents: list[str] = Field(default_factory=list)   # parents not ended yet (a crash leaves one)

    @staticmethod
    def path_for(ws_root: Path, target: str) -> Path:
        return Path(ws_root) / "tracking" / f"mlflow-{hashlib.sha256(target.encode()).hexdigest()[:12]}.json"

    @classmethod
    def load(cls, ws_root: Path, target: str) -> "Ledger":
        """The ledger of `target`; a new one when there is none (or it does not parse: the store is
        then logged again rather than never)."""
        try:
            return cls.model_validate_json(cls.path_for(ws_root, target).read_text())
        except (OSError, ValidationError):
            return cls(target=target)

    def save(self, ws_root: Path) -> None:
        path = self.path_for(ws_root, self.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.model_dump_json(indent=1) + "\n")
