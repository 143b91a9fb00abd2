"""Checkpoints of the lifecycle store: versioned, checksummed, rotated, self-healing.

File layout: MAGIC (4 bytes) | version (u16) | payload length (u64) | sha256(payload) (32 bytes)
| payload. Version 2's payload is an .npz of the store's columns plus the candidate names;
version 1 (the earlier format: JSON rows of name/state/score) is migrated on load.
Each save writes `lifecycle.<seq>.ckpt` atomically and keeps the newest KEEP; restore takes the
newest that checks out and reports any it had to skip as corrupt.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loop.archive.lifecycle import GRAFT_STRATEGIES, Lifecycle, LifecycleStore
from loop.util.fsutil import atomic_write_bytes

MAGIC = b"LLCK"
VERSION = 2
KEEP = 3
_HEADER = struct.Struct(">4sHQ32s")


class CheckpointCorrupt(ValueError):
    pass


def encode(payload: bytes, version: int = VERSION) -> bytes:
    return _HEADER.pack(MAGIC, version, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(blob: bytes) -> tuple[int, bytes]:
    """(version, payload); raises CheckpointCorrupt on a bad magic, length or checksum."""
    if len(blob) < _HEADER.size:
        raise CheckpointCorrupt("truncated header")
    magic, version, length, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointCorrupt("not a lifecycle checkpoint")
    payload = blob[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointCorrupt(f"truncated payload ({len(payload)} of {length} bytes)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointCorrupt("checksum mismatch")
    return version, payload


def store_to_bytes(store: LifecycleStore) -> bytes:
    n = len(store)
    buf = io.BytesIO()
    names = np.frombuffer("\n".join(store.names).encode("utf-8"), dtype=np.uint8)   # UTF-8, not UTF-32
    np.savez(buf, names=names,
             **{c: getattr(store, c)[:n] for c in LifecycleStore.COLUMNS})
    return encode(buf.getvalue())


def store_from_bytes(blob: bytes) -> LifecycleStore:
    version, payload = decode(blob)
    if version == 1:
        return migrate_v1(payload)
    if version != VERSION:
        raise CheckpointCorrupt(f"unknown checkpoint version {version}")
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        blob = data["names"].tobytes().decode("utf-8")
        names = blob.split("\n") if blob else []
        store = LifecycleStore(capacity=max(64, len(names)))
        store.names = names
        store.index = {name: i for i, name in enumerate(names)}
        for c in LifecycleStore.COLUMNS:
            getattr(store, c)[:len(names)] = data[c]
    return store


def encode_v1(rows: list[dict]) -> bytes:
    """The version-1 format (JSON rows), kept to test and document the migration."""
    return encode(json.dumps({"rows": rows}).encode(), version=1)


def migrate_v1(payload: bytes) -> LifecycleStore:
    """v1 rows {name, state (name), score, strategy?} -> a v2 store with empty histories."""
    rows = json.loads(payload)["rows"]
    store = LifecycleStore(capacity=max(64, len(rows)))
    for row in rows:
        r = store.add(row["name"], row.get("strategy", "linear") if row.get("strategy") in GRAFT_STRATEGIES
                      else "linear")
        store.state[r] = Lifecycle[row["state"]]
        store.score[r] = row.get("score", 0.0)
    return store


@dataclass
class RestoreResult:
    store: LifecycleStore
    checkpoint_id: int | None
    skipped: list[dict] = field(default_factory=list)   # {file, reason} of corrupt checkpoints


class CheckpointManager:
    """Saves and restores the lifecycle store under one folder."""

    def __init__(self, folder: str | Path, keep: int = KEEP, fsync: bool = True):
        self.folder = Path(folder)
        self.keep = keep
        self.fsync = fsync

    def _files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.folder.glob("lifecycle.*.ckpt"):
            try:
                out.append((int(p.name.split(".")[1]), p))
            except ValueError:
                continue
        return sorted(out)

    def save(self, store: LifecycleStore) -> int:
        files = self._files()
        seq = files[-1][0] + 1 if files else 1
        blob = store_to_bytes(store)
        path = self.folder / f"lifecycle.{seq:08d}.ckpt"
        if self.fsync:
            atomic_write_bytes(path, blob)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        for _, old in files[: max(0, len(files) + 1 - self.keep)]:
            old.unlink(missing_ok=True)
        return seq

    def restore(self) -> RestoreResult:
        """The newest checkpoint that checks out; an empty store when there is none."""
        skipped = []
        for seq, path in reversed(self._files()):
            try:
                return RestoreResult(store_from_bytes(path.read_bytes()), seq, skipped)
            except (CheckpointCorrupt, OSError, ValueError, KeyError) as exc:
                skipped.append({"file": path.name, "reason": str(exc)})
        return RestoreResult(LifecycleStore(), None, skipped)
