"""Where the promotion pipeline keeps its state, under `<workspace>/models/`: `ModelPaths`, defined
with the rest of the workspace layout in loop/util/workspace.py and named here for the archive's callers."""
from __future__ import annotations

from loop.util.workspace import ModelPaths

__all__ = ["ModelPaths"]
