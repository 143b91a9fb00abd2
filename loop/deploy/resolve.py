"""Which model folder(s) `--model` names: GEN_HEAD, an archive entry, or any run folder; and the
top-k archive entries by their recorded validation accuracy (`--ensemble K`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loop.archive.freeze import recorded_entries, require_intact
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.errors import ConfigError

HEAD = "GEN_HEAD"
# The model folder format (loop.trainer.models): named here too so resolving stays torch-free.
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelRef:
    """A resolved `--model`: the folder to load, how to name it in output, and, for an archive
    entry, its name and recorded validation accuracy."""

    folder: Path
    label: str                          # what the summary prints: the entry name or the folder
    archive_name: str | None = None     # set for GEN_HEAD and archive entries
    val_accuracy: float | None = None


def is_model_folder(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file() and (folder / MODEL_CONFIG_FILE).is_file()


def resolve_model(ref: str, workspace: Path | None) -> ModelRef:
    """`ref` as the user typed it. A folder on disk wins over an archive name (a path is never
    ambiguous); GEN_HEAD and names need the workspace. Archive entries are verified against their
    recorded hashes before use: a tampered entry raises ArchiveTampered, never predicts."""
    path = Path(ref).expanduser()
    if ref != HEAD and path.is_dir():
        if not is_model_folder(path):
            missing = [f for f in (WEIGHTS_FILE, MODEL_CONFIG_FILE) if not (path / f).is_file()]
            raise ConfigError(f"--model {ref}: {path} is a folder but not a model folder (no {' or '.join(missing)})")
        return ModelRef(folder=path.resolve(), label=str(path))
    if workspace is None:
        raise ConfigError(f"--model {ref}: not a folder; to name GEN_HEAD or an archive entry, pass --workspace "
                          "(or run from the project root, where config/daemon_config.yaml names it)")
    paths = ModelPaths(Path(workspace))
    name = ref
    if ref == HEAD:
        name = paths.head_name()
        if name is None:
            raise ConfigError(f"--model GEN_HEAD: {paths.head} does not exist (nothing promoted yet in "
                              f"{workspace}); name an archive entry (`llmloop archive list`) or a run folder")
    recorded = recorded_entries(paths)
    if ref == HEAD and name not in recorded:
        raise ConfigError(f"--model GEN_HEAD: it points at {name}, which {paths.lineage} does not record "
                          "(`llmloop archive verify` says more)")
    if name not in recorded:
        known = sorted(recorded)
        raise ConfigError(f"--model {ref}: neither a folder nor an archive entry of {paths.lineage} "
                          f"({len(known)} recorded{': ' + ', '.join(known[-5:]) if known else ''})")
    folder = require_intact(paths, name)
    if not is_model_folder(folder):
        raise ConfigError(f"--model {ref}: archive entry {name} has no weights (its run failed before saving "
                          f"a model: {recorded[name].status})")
    return ModelRef(folder=folder, label=name if ref != HEAD else f"GEN_HEAD ({name})", archive_name=name,
                    val_accuracy=recorded_val_accuracy(folder))


def recorded_val_accuracy(folder: Path) -> float | None:
    """The validation accuracy an archive entry's metrics.json records: the probes' val_accuracy
    (measured on the domain's fixed val split when the entry was judged), else the trainer's own
    end-of-run val accuracy. None when neither is there (a failed run, a hand-made entry)."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in ("probes", "training"):
        part = metrics.get(section) if isinstance(metrics, dict) else None
        value = part.get("val_accuracy") if isinstance(part, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def top_k(workspace: Path, k: int) -> list[ModelRef]:
    """The k archive entries with the highest recorded validation accuracy (ties: the newer
    generation, then the name), each verified intact. Entries without weights or without a
    recorded val accuracy cannot be ranked and are left out; fewer than k rankable is an error."""
    if k < 1:
        raise ConfigError(f"--ensemble {k}: must be at least 1")
    paths = ModelPaths(Path(workspace))
    rows = read_lineage(paths.lineage)
    if not rows:
        raise ConfigError(f"--ensemble {k}: {paths.lineage} records no archive entries")
    ranked, unranked = [], []
    for row in rows:
        folder = paths.entry(row.name)
        acc = recorded_val_accuracy(folder) if is_model_folder(folder) else None
        if acc is None:
            unranked.append(row.name)
        else:
            ranked.append((acc, row.gen_id, row.name))
    ranked.sort(key=lambda t: (-t[0], -t[1], t[2]))
    if len(ranked) < k:
        raise ConfigError(f"--ensemble {k}: only {len(ranked)} archive entr{'y' if len(ranked) == 1 else 'ies'} "
                          f"in {paths.archive} have weights and a recorded val accuracy"
                          + (f" (left out: {', '.join(unranked[:5])}{' ...' if len(unranked) > 5 else ''})"
                             if unranked else ""))
    return [ModelRef(folder=require_intact(paths, name), label=name, archive_name=name, val_accuracy=acc)
            for acc, _gen, name in ranked[:k]]
