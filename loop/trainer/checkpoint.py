"""The resume checkpoint: everything a killed run needs to continue to the same result.
Written atomically at each epoch end; read back with weights_only=True (no pickled code)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from loop.util.fsutil import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
