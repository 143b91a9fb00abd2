"""<workspace>/tensorboard: one entry per run, so `tensorboard --logdir <workspace>/tensorboard`
shows every run side by side. The trainer writes its event files under its own folder
(<run>/out/tensorboard, loop/trainer/tensorboard.py); a daemon run gets a symlink named after its
run folder (<label>-<trace>, unique where a label repeats), or, where symlinks fail, a small text
file saying where the events are. A window's candidate trains in a work folder that is removed once
its archive entry is frozen, so its events are copied here instead, under the entry's name."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from loop.trainer.tensorboard import BOARD_DIR

LOGDIR = "tensorboard"


def board_root(ws_root: Path) -> Path:
    return Path(ws_root) / LOGDIR


def link_runs(ws_root: Path) -> list[str]:
    """Link every daemon run's event folder not linked yet; returns the names added."""
    root = board_root(ws_root)
    added = []
    for events in sorted(Path(ws_root).glob(f"runs/*/out/{BOARD_DIR}")):
        name = events.parent.parent.name
        link, note = root / name, root / f"{name}.txt"
        if link.is_symlink() or link.exists() or note.exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(events, root), target_is_directory=True)   # relative: moves with it
        except OSError as exc:
            note.write_text(f"the TensorBoard events of {name} are in {events}\n(no symlink here: {exc})\n"
                            f"tensorboard --logdir {events}\n")
        added.append(name)
    return added


def keep_candidate_boards(ws_root: Path, runs: list[tuple[str, Path]]) -> list[str]:
    """Copy each candidate's events (name, its trainer --out folder) before its work folder goes.
    Best-effort: a copy that fails leaves that candidate out of TensorBoard, never the window."""
    kept = []
    for name, run_dir in runs:
        events = Path(run_dir) / BOARD_DIR
        if not events.is_dir():
            continue
        try:
            shutil.copytree(events, board_root(ws_root) / name, dirs_exist_ok=True)
        except OSError:
            continue
        kept.append(name)
    return kept
