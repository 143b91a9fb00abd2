"""Workspace size after many candidates, with and without retention (issue 23, item 3).

What: N candidates, each a finished run folder (a copy of one real trained model, as the trainer
leaves it: weights, config, metrics, log) with its runs-index line, frozen into the archive by the
real archive functions (freeze_and_record: hashes.csv, lineage row) with a score drawn from a seeded
RNG; every 20th becomes GEN_HEAD (cutover, promoted in lineage.csv), the one before it its parent.
After each candidate the daemon's sweep runs (loop/retention/upkeep.py Upkeep.after_cycle). Two passes:
  without   `retention` with every rule off (keep_top_k, max_workspace_gb, keep_failed_runs_days: null)
  with      `retention: {max_workspace_gb: 1, keep_top_k: 5}` (the issue's setting)
Reported: the workspace size at the end and at its peak, what the sweeps freed, the sweep's own time
(median and max per cycle), and that `archive verify` finds every entry intact or pruned.

The model is the shipped digits config's resnet10t (about 20 MB of weights, the size the issue
quotes); the probes and gates are left out (the archive entry, not its judgement, fills the disk).
Run from the repo root: .venv/bin/python bench/retention.py
Smoke size (tests/test_bench_smoke.py): --smoke (timm's test_efficientnet, 0.4 MB, 12 candidates).
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_facts, smoke, write_section  # noqa: E402

from loop.archive import freeze as archive  # noqa: E402
from loop.archive.lineage import LineageRow, mark_promoted  # noqa: E402
from loop.archive.paths import ModelPaths  # noqa: E402
from loop.config.sections import RetentionConfig  # noqa: E402
from loop.cycle.state import LoopState  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from loop.journal.history import RunRecord, append_history  # noqa: E402
from loop.retention.upkeep import Upkeep  # noqa: E402
from loop.util.fsutil import folder_size_bytes  # noqa: E402
from loop.util.workspace import Workspace  # noqa: E402

CANDIDATES = 12 if smoke() else 100
MODEL = "test_efficientnet" if smoke() else "resnet10t"
PROMOTE_EVERY = 20
SETTINGS = {"without": RetentionConfig(max_workspace_gb=None, keep_top_k=None, keep_failed_runs_days=None),
            "with": RetentionConfig(max_workspace_gb=1, keep_top_k=5)}


def train_model(root: Path) -> Path:
    from loop.config import validate
    from loop.trainer.config import TrainerConfig
    from loop.trainer.train import train

    config = {"data": {"domain": "digits", "image_size": 16, "batch_size": 32, "train_fraction": 0.05},
              "model": {"name": MODEL}, "optim": {"name": "sgd", "lr": 0.05},
              "schedule": {"name": "cosine", "warmup_epochs": 0}, "run": {"seed": 7, "epochs": 1, "threads": 2}}
    train(validate(TrainerConfig, config, "<bench>"), root / "model")
    return root / "model"


def hand_in(ws: Workspace, model: Path, i: int, score: float, head: str | None, gen: int) -> str:
    """One candidate: its run folder and runs-index line, then its frozen archive entry."""
    trace = f"c{i:05d}-bench"
    folder = ws.runs / f"cand{i}-{trace}"
    shutil.copytree(model, folder / "out")
    (folder / "run.log").write_text(f"run {i}\n")
    append_history(ws, RunRecord(label=f"cand{i}", cycle=i, config={"run": {"seed": i}}, ok=True, score=score,
                                 trace=trace, run_dir=str(folder / "out"), verdict="below"))
    name = f"llmloop-G{gen:03d}-c{i}-20260101-000000"
    texts = {f: f"{f} of {name}\n" for f in archive.WRITTEN}
    texts["STATUS.txt"] = "PASS\n"
    texts["metrics.json"] = json.dumps({"score": score}) + "\n"
    archive.freeze_and_record(ModelPaths(ws.root), name, folder / "out", texts, LineageRow(
        name=name, gen_id=gen, branch_id=f"c{i}", parent=head or "", seed=i, strategy="uniform", status="PASS",
        score=score, archive_path="", hashes_sha256="", cycle_trace_id=trace))
    return name


def one_pass(model: Path, cfg: RetentionConfig, root: Path) -> dict:
    from loop.archive.promotion import cutover

    ws = Workspace(root / "ws").ensure()
    paths = ModelPaths(ws.root)
    upkeep = Upkeep(cfg, ws, EventLog(ws.events), say=lambda *_: None)
    rng = random.Random(23)
    head, gen, peak, sweep_ms = None, 1, 0, []
    for i in range(1, CANDIDATES + 1):
        name = hand_in(ws, model, i, round(rng.uniform(0.5, 0.95), 4), head, gen)
        if i % PROMOTE_EVERY == 1:              # the first, then every 20th: GEN_HEAD, as approvals would
            cutover(paths, name)
            mark_promoted(paths.lineage, name)
            head, gen = name, gen + 1
        peak = max(peak, folder_size_bytes(ws.root))
        t0 = time.perf_counter()
        upkeep.after_cycle(LoopState(cycle=i))
        sweep_ms.append((time.perf_counter() - t0) * 1000)
    sweeps = [e for e in EventLog(ws.events) if e["kind"] == "retention_sweep"]
    report = archive.verify_archive(paths)
    out = {"final_gb": folder_size_bytes(ws.root) / 1e9, "peak_gb": peak / 1e9,
           "freed_gb": sum(e["bytes_freed"] for e in sweeps) / 1e9,
           "pruned": sum(len(e["pruned"]) for e in sweeps),
           "sweep_ms_median": statistics.median(sweep_ms), "sweep_ms_max": max(sweep_ms),
           "verify_ok": sum(1 for p in report.values() if not p), "entries": len(report), "head": head}
    remove(ws.root)                   # before the next pass: the disk holds one pass at a time
    return out


def remove(folder: Path) -> None:
    for entry in (folder / "models" / "archive").glob("*"):   # frozen entries are read-only
        if entry.is_dir():
            archive.make_writable(entry)
    shutil.rmtree(folder)


def main() -> None:
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        model = train_model(Path(tmp))
        weights_mb = (model / "model.safetensors").stat().st_size / 1e6
        results = {name: one_pass(model, cfg, Path(tmp) / name) for name, cfg in SETTINGS.items()}
    for name, r in results.items():
        print(f"{name:8s} final {r['final_gb']:.3f} GB, peak {r['peak_gb']:.3f} GB, freed {r['freed_gb']:.3f} GB "
              f"({r['pruned']} folders), sweep median {r['sweep_ms_median']:.1f} ms max {r['sweep_ms_max']:.1f} ms, "
              f"verify {r['verify_ok']}/{r['entries']}")
        assert r["verify_ok"] == r["entries"], r
    assert results["with"]["peak_gb"] <= 1.0 or smoke(), results["with"]
    rows = "\n".join(f"| {name} | {r['final_gb']:.3f} | {r['peak_gb']:.3f} | {r['freed_gb']:.3f} | {r['pruned']} | "
                     f"{r['sweep_ms_median']:.1f} / {r['sweep_ms_max']:.1f} | {r['verify_ok']}/{r['entries']} |"
                     for name, r in results.items())
    body = (f"- {CANDIDATES} candidates of {MODEL} ({weights_mb:.1f} MB of weights each: a run folder and an "
            f"archive entry per candidate), GEN_HEAD moved every {PROMOTE_EVERY}\n"
            f"- with: `retention: {{max_workspace_gb: 1, keep_top_k: 5}}`; without: every rule off\n\n"
            "| retention | final GB | peak GB | freed GB | folders pruned | sweep ms (median / max) | verify |\n"
            "|---|---|---|---|---|---|---|\n" + rows + "\n\n"
            "Kept whole with retention: the top 5 runs and PASS entries by score, GEN_HEAD and its lineage (every "
            "promoted generation), the incumbent run. The peak is measured after each hand-off, before its sweep.")
    write_section("retention", body, facts)


if __name__ == "__main__":
    main()
