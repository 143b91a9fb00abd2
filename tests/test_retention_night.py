"""Retention end to end: many candidates through the real hand-off (loop/candidates/intake.py:
probes, gates, archive, lineage, proposal) with `retention: {max_workspace_gb: <small>, keep_top_k: 5}`
and the daemon's own sweep after each one. The workspace stays under the cap, GEN_HEAD and its lineage
promote and roll back through the CLI, `archive verify` passes, and every pruned run is still in the
report with its score. Two real tiny models (timm's test_efficientnet, 0.4 MB of weights) are trained
once; each candidate is a copy of one of them in a run folder of its own, as the trainer leaves it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from loop.archive import freeze as archive
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.pruned import read_marker, run_pruned
from loop.config import load_daemon_config, validate
from loop.journal.events import EventLog
from loop.journal.history import RunRecord, append_history, read_history
from loop.journal.metrics import RunMetrics
from loop.retention.upkeep import Upkeep
from loop.util.fsutil import folder_size_bytes
from loop.util.workspace import Workspace
from loop.verdict.keeps import verdict_against_best
from tests.conftest import run_cli, tiny_config_dict

CANDIDATES = 30
CAP_MB = 9.0
MODELS = {"weak": dict(data={"train_fraction": 0.1}, run={"epochs": 1}),
          "strong": dict(data={"train_fraction": 0.3}, run={"epochs": 2})}
STRONG_AT = (12,)                 # the cycles that hand in the strong model (the rest: the weak one)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from loop.trainer.config import TrainerConfig
    from loop.trainer.train import train

    root = tmp_path_factory.mktemp("retention-models")
    out = {}
    for name, sections in MODELS.items():
        config = tiny_config_dict(model={"name": "test_efficientnet"}, **sections)
        train(validate(TrainerConfig, config, name), root / name)
        out[name] = root / name
    return out


def write_config(tmp_path: Path) -> Path:
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(model={"name": "test_efficientnet"})))
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump({
        "workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "phase": {"schedule": "off"},
        "evolution": {"rules": {"per_class_accuracy_floor": None}},
        "theta": 1.0,                       # the strong model disagrees with the weak HEAD: a wanted change here
        "retention": {"max_workspace_gb": CAP_MB / 1000, "keep_top_k": 5}}))
    return path


def hand_in(cfg, ws: Workspace, model: Path, cycle: int) -> tuple[str, dict]:
    """A finished run as the daemon leaves it: a run folder, its runs-index line, the hand-off."""
    from loop.candidates.intake import submit_run

    trace = f"c{cycle:05d}-r{cycle:05d}"
    folder = ws.runs / f"cand{cycle}-{trace}"
    shutil.copytree(model, folder / "out")
    (folder / "run.log").write_text(f"run {cycle}\n")
    metrics = RunMetrics.read(folder / "out")
    record = RunRecord(label=f"cand{cycle}", cycle=cycle, config=tiny_config_dict(), ok=True,
                       score=metrics.eval.accuracy, trace=trace, run_dir=str(folder / "out"),
                       val_count=metrics.eval.count)
    verdict = verdict_against_best(read_history(ws), record)
    record.verdict, record.margin, record.band = verdict.verdict, verdict.margin, verdict.band
    append_history(ws, record)
    return record.label, submit_run(cfg, ws.root, folder / "out", cycle, trace)


def approve(cfg_path: Path) -> str:
    done = run_cli("promote", "--approve", "--daemon-config", str(cfg_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_hundred_cycle_night_in_miniature_stays_under_the_cap(tmp_path, models):
    from loop.cycle.state import LoopState
    from loop.report import generate_reports

    cfg_path = write_config(tmp_path)
    cfg = load_daemon_config(cfg_path)
    ws = Workspace(tmp_path / "ws").ensure()
    paths = ModelPaths(ws.root)
    events = EventLog(ws.events)
    upkeep = Upkeep(cfg.retention, ws, events, say=lambda *_: None)
    promoted, sizes = [], []
    for cycle in range(1, CANDIDATES + 1):
        _label, handed = hand_in(cfg, ws, models["strong" if cycle in STRONG_AT else "weak"], cycle)
        if handed.proposed:                  # a person approves each proposal (first generation, the strong one)
            approve(cfg_path)
            promoted.append(handed.name)
        assert handed.status.startswith("PASS") or cycle not in STRONG_AT, handed
        upkeep.after_cycle(LoopState(cycle=cycle))          # the daemon's sweep after the cycle
        sizes.append(folder_size_bytes(ws.root))
    assert len(promoted) == 2 and paths.head_name() == promoted[1]

    # ---- under the cap after every cycle, though it holds far more than the cap ----
    assert max(sizes) <= CAP_MB * 1e6, [round(s / 1e6, 2) for s in sizes]
    sweeps = [e for e in events if e["kind"] == "retention_sweep"]
    freed = sum(e["bytes_freed"] for e in sweeps)
    assert freed + sizes[-1] > 2 * CAP_MB * 1e6          # without retention: over twice the cap
    pruned_runs = {p["name"] for e in sweeps for p in e["pruned"] if p["kind"] == "run"}
    pruned_entries = {p["name"] for e in sweeps for p in e["pruned"] if p["kind"] == "archive"}
    assert len(pruned_runs) >= CANDIDATES - 8 and len(pruned_entries) >= CANDIDATES // 3
    assert not (pruned_entries & set(promoted))
    rows = read_lineage(paths.lineage)
    top5 = sorted((r for r in rows if r.status.startswith("PASS")), key=lambda r: (-r.score, r.name))[:5]
    for row in rows:               # whole: GEN_HEAD's lineage, the top 5, or a failure younger than 7 days
        if row.name not in pruned_entries:
            assert row.name in promoted or row in top5 or row.status.startswith("FAIL"), row

    # ---- GEN_HEAD and its lineage roll back and promote again ----
    back = run_cli("rollback", "--daemon-config", str(cfg_path), timeout=300)
    assert back.returncode == 0 and paths.head_name() == promoted[0], back.stdout + back.stderr
    forward = run_cli("rollback", "--to", promoted[1], "--daemon-config", str(cfg_path), timeout=300)
    assert forward.returncode == 0 and paths.head_name() == promoted[1], forward.stdout + forward.stderr
    refused = run_cli("rollback", "--to", sorted(pruned_entries)[0], "--daemon-config", str(cfg_path))
    assert refused.returncode != 0 and "pruned by retention" in refused.stderr + refused.stdout

    # ---- the archive verifies; a pruned entry says so ----
    verified = run_cli("archive", "verify", "--daemon-config", str(cfg_path))
    assert verified.returncode == 0, verified.stdout
    assert f"{CANDIDATES} of {CANDIDATES} archive entries intact" in verified.stdout
    listed = run_cli("archive", "list", "--daemon-config", str(cfg_path)).stdout
    for name in pruned_entries:
        assert "[pruned: model.safetensors" in next(ln for ln in listed.splitlines() if name in ln)
        assert (paths.entry(name) / "metrics.json").exists() and read_marker(paths.entry(name)).weights_gone

    # ---- every pruned run is still in the report, with its score ----
    paper = generate_reports(ws.root, top_k=5, progress=False)["paper"].read_text()
    experiments = paper.split("## Experiments")[1].split("\n## ")[0]
    history = {r.label: r for r in read_history(ws)}
    for name in pruned_runs:
        label = name.split("-c")[0]
        assert run_pruned(ws.runs / name / "out")
        row = next(ln for ln in experiments.splitlines() if f"`{label}`" in ln)
        assert f"{history[label].score:.4f}" in row
    assert archive.verify_archive(paths) and all(not p for p in archive.verify_archive(paths).values())
