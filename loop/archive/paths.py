"""Where the promotion pipeline keeps its state, under `<workspace>/models/`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelPaths:
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
    def candidates(self) -> Path:       # GEN_CANDIDATES: work folders while training
        return self.root / "candidates"

    @property
    def lineage(self) -> Path:
        return self.root / "lineage.csv"

    @property
    def log(self) -> Path:
        return self.root / "evolution_log.jsonl"

    @property
    def proposal(self) -> Path:
        return self.root / "PROMOTION_PROPOSAL.json"

    @property
    def lifecycle(self) -> Path:
        return self.root / "lifecycle"

    def head_name(self) -> str | None:
        """The archive entry GEN_HEAD points at, or None when there is no HEAD yet."""
        try:
            return Path(self.head.readlink()).name
        except (FileNotFoundError, OSError):
            return None

    def entry(self, name: str) -> Path:
        return self.archive / name
