"""GEN_ARCHIVE: every candidate, pass or fail, frozen into one read-only folder
`<prefix>-G<gen:03d>-<branch>-<YYYYmmdd-HHMMSS>/` holding the seed's files (weights, config.json,
train_args.json, evo_manifest.json, metrics.json, hashes.csv, EVAL.md, MODEL_CARD.md,
STATUS.txt; the training log, train.log, takes the place of the seed's tokenizer: the run's
console output when there is one, so a run that failed before it trained still carries its error).
`hashes.csv` lists every other file's sha256, and lineage.csv records the sha256 of hashes.csv
itself, so `verify` catches a changed, missing, added or renamed file, including a rewritten hashes.csv.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from loop.archive.lineage import LineageRow, read_lineage, upsert_lineage
from loop.archive.paths import ModelPaths
from loop.archive.pruned import MARKER, read_marker
from loop.errors import ArchiveTampered
from loop.util.faults import fault_point
from loop.util.fsutil import atomic_write_text, read_regular_bytes, sha256_file

LOG = "train.log"
COPIED_FROM_RUN = ("model.safetensors", "config.json", "train_args.json", LOG)
WRITTEN = ("evo_manifest.json", "metrics.json", "EVAL.md", "MODEL_CARD.md", "STATUS.txt")
HASHES = "hashes.csv"
ARCHIVE_FILES = COPIED_FROM_RUN + WRITTEN + (HASHES,)


class ArchiveEntry(BaseModel):
    """One frozen entry, archive/<name>: what freeze() made, or what a lineage row records."""
    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    status: str                  # its STATUS.txt: PASS / FAIL - <reason>
    hashes_sha256: str           # sha256 of its hashes.csv (lineage.csv keeps it)

    @classmethod
    def recorded(cls, paths: ModelPaths, row: LineageRow) -> ArchiveEntry:
        """The entry a lineage row records (where this workspace keeps it, whatever the row's path)."""
        return cls(name=row.name, path=paths.entry(row.name), status=row.status, hashes_sha256=row.hashes_sha256)

    def lineage_row(self, row: LineageRow) -> LineageRow:
        """`row` completed with where the entry is and what its hashes.csv hashes to."""
        return row.model_copy(update={"archive_path": str(self.path), "hashes_sha256": self.hashes_sha256})

    def problems(self) -> list[str]:
        """What verify finds wrong with it against its recorded hashes.csv (empty list: intact)."""
        return verify_entry(self.path, self.hashes_sha256)


def recorded_entries(paths: ModelPaths) -> dict[str, ArchiveEntry]:
    """{name: entry} for every entry lineage.csv records."""
    return {row.name: ArchiveEntry.recorded(paths, row) for row in read_lineage(paths.lineage)}


def entry_name(prefix: str, gen_id: int, branch_id: str, when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(when or time.time()))
    return f"{prefix}-G{gen_id:03d}-{branch_id}-{stamp}"


def hashes_csv(folder: Path) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "sha256", "bytes"])
    for path in sorted(p for p in folder.iterdir() if p.name != HASHES):
        writer.writerow([path.name, sha256_file(path), path.stat().st_size])
    return buf.getvalue()


def freeze(paths: ModelPaths, name: str, run_dir: Path, texts: dict[str, str],
           before_rename=None, log: Path | None = None) -> ArchiveEntry:
    """Write the entry into a hidden staging folder, hash it, make it read-only, then rename it into
    place (a crash leaves only a `.staging-*` folder, never a half entry). `before_rename(entry)`
    runs once it is staged, read-only and hashed.
    `log`, when it exists, is archived as train.log instead of the run's own (the captured output
    of the training: the trainer's stdout.log or the supervisor's run.log, errors included)."""
    missing = set(WRITTEN) - set(texts)
    if missing:
        raise ValueError(f"freeze {name}: missing {sorted(missing)}")
    final = paths.archive / name
    if final.exists():
        raise FileExistsError(f"archive entry {name} already exists")
    staging = paths.archive / f".staging-{name}"
    if staging.exists():
        make_writable(staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    linked = Path(run_dir).is_symlink()     # a run that made its output folder a link gets nothing copied from it
    for fname in COPIED_FROM_RUN:
        source = run_dir / fname
        if linked and not (fname == LOG and log is not None):
            continue
        if fname == LOG and log is not None and (log.exists() or log.is_symlink()):
            source = log
        if source.exists() or source.is_symlink():   # a failed run may lack weights
            # The run wrote these (sandboxed, maybe as another user): copy only regular files, never
            # what a symlink points at, so a run cannot launder a file it could not read into the archive.
            (staging / fname).write_bytes(read_regular_bytes(source))
            fault_point("archive:mid_copy")
    for fname, text in texts.items():
        (staging / fname).write_text(text, encoding="utf-8")
    (staging / HASHES).write_bytes(hashes_csv(staging).encode("utf-8"))
    entry = ArchiveEntry(name=name, path=final, status=texts["STATUS.txt"].strip(),
                         hashes_sha256=sha256_file(staging / HASHES))
    for path in staging.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    make_read_only(staging)
    fault_point("archive:staged_read_only")
    if before_rename is not None:
        before_rename(entry)
    os.replace(staging, final)
    return entry


def freeze_and_record(paths: ModelPaths, name: str, run_dir: Path, texts: dict[str, str],
                      row: LineageRow, log: Path | None = None) -> ArchiveEntry:
    """freeze() and the lineage row as one step: the row is journaled (`models/.freeze-<name>.json`)
    before the entry is renamed into place, so a kill between the rename and the lineage write is
    completed by the next start (loop/daemon/recovery.py) instead of leaving an entry verify calls planted."""
    journal = paths.root / f"{FREEZE_JOURNAL_PREFIX}{name}.json"

    def write_intent(entry: ArchiveEntry) -> None:
        atomic_write_text(journal, entry.lineage_row(row).model_dump_json() + "\n")

    entry = freeze(paths, name, run_dir, texts, before_rename=write_intent, log=log)
    fault_point("lineage:before_upsert")
    upsert_lineage(paths.lineage, entry.lineage_row(row))
    journal.unlink(missing_ok=True)
    return entry


def complete_interrupted_freezes(paths: ModelPaths) -> list[str]:
    """Finish what freeze_and_record journaled: an entry in place that verifies against the
    journaled hashes gets its lineage row; a journal whose entry never got renamed is dropped."""
    completed = []
    for journal in sorted(paths.root.glob(f"{FREEZE_JOURNAL_PREFIX}*.json")) if paths.root.is_dir() else []:
        try:
            row = LineageRow.model_validate_json(journal.read_text())
        except (OSError, ValueError):
            journal.unlink(missing_ok=True)
            continue
        entry = ArchiveEntry.recorded(paths, row)
        known = {r.name for r in read_lineage(paths.lineage)}
        if entry.path.is_dir() and row.name not in known and not entry.problems():
            upsert_lineage(paths.lineage, row)
            completed.append(row.name)
        journal.unlink(missing_ok=True)
    return completed


FREEZE_JOURNAL_PREFIX = ".freeze-"


def make_read_only(folder: Path) -> None:
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def make_writable(folder: Path) -> None:
    folder.chmod(stat.S_IRWXU)
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def verify_entry(folder: Path, expected_hashes_sha: str | None = None) -> list[str]:
    """Problems found in one entry (empty list: intact)."""
    if not folder.is_dir():
        return [f"{folder.name}: entry is missing"]
    hashes = folder / HASHES
    if not hashes.exists():
        return [f"{folder.name}: {HASHES} is missing"]
    if not _regular(hashes):
        return [f"{folder.name}: {HASHES} is not a regular file"]
    text = hashes.read_bytes().decode("utf-8", errors="replace")
    problems = []
    if expected_hashes_sha and sha256_file(hashes) != expected_hashes_sha:
        problems.append(f"{folder.name}: {HASHES} differs from the one recorded in lineage.csv")
    recorded, malformed = _recorded_hashes(text)
    if malformed:
        problems.append(f"{folder.name}: {HASHES} has {malformed} malformed row(s)")
    marker = read_marker(folder)          # retention took some files: absent as recorded, not missing
    pruned = {f.name: f.sha256 for f in marker.files} if marker else {}
    present = {p.name for p in folder.iterdir() if p.name != HASHES and not (marker and p.name == MARKER)}
    for fname, sha in sorted(pruned.items()):
        if recorded.get(fname) != sha:
            problems.append(f"{folder.name}: {MARKER} names {fname}, which {HASHES} does not record with that sha256")
    for fname in sorted(set(recorded) - present):
        if recorded[fname] != pruned.get(fname):
            problems.append(f"{folder.name}: {fname} is missing")
    for fname in sorted(present - set(recorded)):
        problems.append(f"{folder.name}: {fname} was added")
    for fname in sorted(set(recorded) & present):
        if not _regular(folder / fname):     # a link out, or a folder: its bytes are not the archive's
            problems.append(f"{folder.name}: {fname} is not a regular file")
        elif sha256_file(folder / fname) != recorded[fname]:
            problems.append(f"{folder.name}: {fname} was changed")
    if folder.stat().st_mode & stat.S_IWUSR:
        problems.append(f"{folder.name}: folder is writable (should be read-only)")
    return problems


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _recorded_hashes(text: str) -> tuple[dict[str, str], int]:
    """{file: sha256} from hashes.csv text, and how many rows could not be read (a garbled
    hashes.csv is a problem to report, not a crash)."""
    recorded, malformed = {}, 0
    try:
        for row in csv.DictReader(io.StringIO(text)):
            name, sha = row.get("file"), row.get("sha256")
            if isinstance(name, str) and isinstance(sha, str):
                recorded[name] = sha
            else:
                malformed += 1
    except csv.Error:
        malformed += 1
    return recorded, malformed


def verify_archive(paths: ModelPaths) -> dict[str, list[str]]:
    """Re-hash every entry; {entry name: problems} for every entry (empty list: intact)."""
    recorded = recorded_entries(paths)
    report: dict[str, list[str]] = {}
    if paths.archive.exists():
        for folder in sorted(p for p in paths.archive.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entry = recorded.get(folder.name)
            if entry is not None:
                report[folder.name] = entry.problems()
            else:
                report[folder.name] = verify_entry(folder) + [
                    f"{folder.name}: not in lineage.csv (renamed or planted?)"]
    for name in sorted(set(recorded) - set(report)):
        report[name] = [f"{name}: entry is missing"]
    return report


def require_intact(paths: ModelPaths, name: str) -> Path:
    """The entry's path, or ArchiveTampered naming what changed."""
    entry = recorded_entries(paths).get(name)
    if entry is None:
        raise ArchiveTampered(f"{name}: not a recorded archive entry")
    problems = entry.problems()
    if problems:
        raise ArchiveTampered("; ".join(problems))
    marker = read_marker(entry.path)
    if marker is not None and marker.weights_gone:
        raise ArchiveTampered(f"{name}: its weights were pruned by retention at {marker.pruned_at} "
                              f"({marker.reason}); the entry keeps its metrics, config and log only")
    return entry.path
