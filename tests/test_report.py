"""The final reports (loop/report/) on a hand-made workspace that looks like a real night:
a baseline, an augmentation win, a failed run repaired by a model fallback and retried, a Mentor
challenge, a command, a wait, a run followed across cycles, tokens growing, a promoted GEN_HEAD.
Real files only; the script runs as a real subprocess."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loop.archive.lineage import LineageRow, write_lineage
from loop.report import generate_reports
from loop.trainer.metrics import EvalMetrics, RunMetrics
from tests.conftest import REPO

SECTIONS = ["## Abstract", "## Setup", "## Method", "## Experiments", "## Results", "## What the Mentor changed",
            "## Failures and repairs", "## Limitations", "## Reproduce"]
CLASSES = [str(i) for i in range(10)]
HEAD = "llmloop-G001-c2-20260101-000200"
PLOT_FILES = ["plot_best_over_cycles.png", "plot_runs_over_cycles.png", "plot_per_class_best.png",
              "plot_tokens_over_cycles.png"]


# ================================================================ fixture ====

def trainer_config(label: str, model: str = "resnet10t", lr: float = 0.05, epochs: int = 10,
                   augment: bool = False, smoothing: float = 0.0) -> dict:
    return {"data": {"domain": "digits", "image_size": 32, "batch_size": 64,
                     "sampling": {"strategy": "uniform"},
                     "augment": [{"name": "Affine", "args": {"rotate": [-8, 8]}}] if augment else []},
            "model": {"name": model}, "optim": {"name": "sgd", "lr": lr},
            "loss": {"label_smoothing": smoothing},
            "budget": {"max_walltime_minutes": 30.0},
            "run": {"label": label, "seed": 7, "epochs": epochs}}


class Night:
    """Writes the workspace one cycle at a time, the way the daemon does."""

    def __init__(self, ws: Path):
        self.ws = ws
        self.events: list[dict] = []
        self.index: list[dict] = []
        self.story: list[str] = []
        self.tokens = {"builder": 0, "mentor": 0}
        for sub in ("runs", "notes", "logs", "models/archive"):
            (ws / sub).mkdir(parents=True, exist_ok=True)

    def trace(self, cycle: int) -> str:
        return f"c{cycle:05d}-{cycle:06x}"

    def run_folder(self, label: str, cycle: int, suffix: str = "") -> Path:
        return self.ws / "runs" / f"{label}-{self.trace(cycle)}{suffix}"

    def train_run(self, label: str, cycle: int, cfg: dict, score: float | None, suffix: str = "") -> dict:
        """A run folder as the daemon and trainer leave it; no metrics.json for a crash."""
        folder = self.run_folder(label, cycle, suffix)
        out = folder / "out"
        out.mkdir(parents=True)
        (folder / "run.yaml").write_text(json.dumps(cfg, indent=2))
        (folder / "run.log").write_text("training...\n")
        if score is not None:
            (out / "train_args.json").write_text(json.dumps(cfg, indent=2))
            per_class = {c: round(min(1.0, score + (0.02 if i % 2 else -0.02)), 6) for i, c in enumerate(CLASSES)}
            RunMetrics(status="ok", run_label=label, model_name=cfg["model"]["name"], domain="digits", seed=7,
                       device="cpu", steps=120, epochs_completed=cfg["run"]["epochs"],
                       epochs_planned=cfg["run"]["epochs"], walltime_minutes=1.5,
                       eval=EvalMetrics(accuracy=score, loss=0.2, count=180, per_class_accuracy=per_class),
                       ).write(out)
        return {"label": label, "kind": "train", "exit_code": 0 if score is not None else 3,
                "log_path": str(folder / "run.log"), "run_dir": str(folder), "seconds": 90.0,
                "status": "ok" if score is not None else "failed", "val_accuracy": score,
                "error": None if score is not None else "Unsupported model.name: resnet99"}

    def index_row(self, outcome: dict, cycle: int, cfg: dict, dimension: str | None) -> None:
        self.index.append({"label": outcome["label"], "cycle": cycle, "trace": self.trace(cycle), "config": cfg,
                           "ok": outcome["status"] == "ok", "score": outcome.get("val_accuracy") or 0.0,
                           "dimension": dimension, "run_dir": str(Path(outcome["run_dir"]) / "out")})

    def promotion(self, cycle: int, score: float) -> dict:
        name = f"llmloop-G001-c{cycle}-20260101-000{cycle}00"
        (self.ws / "models" / "archive" / name).mkdir()
        return {"name": name, "status": "PASS", "score": score, "gates": {"recall": True}, "failed_gates": [],
                "archive_path": str(self.ws / "models" / "archive" / name), "proposed": True, "improvement": 0.01}

    def cycle(self, cycle: int, line: str, source: str = "llm", mentor_tokens: int = 0, **fields) -> None:
        self.tokens["builder"] += 1000
        self.tokens["mentor"] += mentor_tokens
        tokens = {role: {"prompt_tokens": n - n // 4, "completion_tokens": n // 4, "total_tokens": n,
                         "calls": cycle if role == "builder" else int(n > 0)} for role, n in self.tokens.items()}
        fields.setdefault("quality_gate", {"ok": True, "reasons": []})
        if "decision" in fields:
            fields["decision"] = {"source": source, **fields["decision"]}
        self.events.append({"ts": f"2026-01-01T0{cycle}:00:00Z", "kind": "cycle",
                            "cycle_trace_id": self.trace(cycle), "cycle": cycle, "trace": self.trace(cycle),
                            **fields, "tokens_total": tokens, "seconds": 12.5})
        self.story.append(f"- c{cycle:05d} [{self.trace(cycle)}] AI-Builder: {line}")

    def write(self) -> None:
        lines = [json.dumps(e) for e in self.events]
        # A crash mid-append tears the last line: the report must read past it.
        (self.ws / "events.jsonl").write_text("\n".join(lines) + '\n{"ts": "2026-01-01T09:00:00Z", "kind": "cy')
        (self.ws / "runs" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.index))
        (self.ws / "notes" / "storyline.md").write_text("# Storyline\n\n" + "\n".join(self.story) + "\n")
        (self.ws / "notes" / "shared_todo.md").write_text(
            "# Shared TODO\n\n- [ ] T0001 (AI-Mentor c4) Check seed variance of the best config\n")
        (self.ws / "state.json").write_text(json.dumps({"cycle": 8, "active_run": None}))


def decision(action: str, label: str, dimension: str | None = None, **extra) -> dict:
    return {"action": action, "rationale": f"Because {label} is the next useful step.", "run_label": label,
            "strategy_dimension": dimension, "train_overlay": {}, **extra}


def build_night(ws: Path) -> Path:
    n = Night(ws)
    n.events.append({"ts": "2026-01-01T00:00:00Z", "kind": "daemon_start", "cycle_trace_id": "start-00001",
                     "builder": "LLM", "mentor": "LLM"})
    # c1: the baseline
    cfg = trainer_config("baseline-c1")
    out = n.train_run("baseline-c1", 1, cfg, 0.95)
    n.index_row(out, 1, cfg, "evaluation")
    n.cycle(1, "train `baseline-c1` (evaluation) -> ok val_acc 0.9500",
            decision=decision("train", "baseline-c1", "evaluation"),
            run={"label": "baseline-c1", "kind": "train"}, run_outcome=out, promotion=n.promotion(1, 0.95))
    # c2: augmentation wins; its candidate becomes GEN_HEAD
    cfg = trainer_config("aug-c2", augment=True)
    out = n.train_run("aug-c2", 2, cfg, 0.97)
    n.index_row(out, 2, cfg, "augmentation")
    promo = n.promotion(2, 0.97)
    assert promo["name"] == HEAD
    n.cycle(2, "train `aug-c2` (augmentation) -> ok val_acc 0.9700",
            decision=decision("train", "aug-c2", "augmentation"),
            run={"label": "aug-c2", "kind": "train"}, run_outcome=out, promotion=promo)
    # c3: an unsupported model fails with exit 3; the fallback repairs it and the retry succeeds
    bad_cfg = trainer_config("bigmodel-c3", model="resnet99")
    failed = n.train_run("bigmodel-c3", 3, bad_cfg, None)
    retry_cfg = trainer_config("bigmodel-c3", model="resnet10t")
    retry = n.train_run("bigmodel-c3", 3, retry_cfg, 0.96, suffix="-retry") | {"label": "bigmodel-c3-retry"}
    n.index_row(retry, 3, retry_cfg, "model_arch")
    n.cycle(3, "train `bigmodel-c3` (model_arch) -> ok val_acc 0.9600",
            decision=decision("train", "bigmodel-c3", "model_arch"), run={"label": "bigmodel-c3", "kind": "train"},
            run_outcome=failed,
            auto_repair={"applied": True, "reason": None, "actions": [
                {"kind": "fallback", "target": "resnet99", "ok": True, "detail": "patched model.name",
                 "source": "auto_repair_model_fallback_map", "fallback": "resnet10t"}]},
            run_outcome_retry=retry, promotion=n.promotion(3, 0.96))
    # c4: the Mentor calls it off track and its challenge runs instead
    challenge = decision("train", "mentor-lr-c4", "optimization", train_overlay={"optim": {"lr": 0.02}})
    cfg = trainer_config("mentor-lr-c4", lr=0.02)
    out = n.train_run("mentor-lr-c4", 4, cfg, 0.955)
    n.index_row(out, 4, cfg, "optimization")
    n.cycle(4, "train `mentor-lr-c4` (optimization) -> ok val_acc 0.9550", source="mentor", mentor_tokens=500,
            decision=challenge, run={"label": "mentor-lr-c4", "kind": "train"}, run_outcome=out,
            mentor={"why": "stuck: 2 failed runs in a row", "verdict": "off_track", "source": "llm",
                    "critical_question": "Is lr 0.05 too high for the new head?", "challenge": challenge,
                    "challenge_applied": True},
            promotion=n.promotion(4, 0.955))
    # c5: a command; c6: a wait
    n.cycle(5, "run_command `inspect-data` -> ok", decision=decision("run_command", "inspect-data", "evaluation",
                                                                     command="cd /repo && ls"),
            policy={"allowed": True, "reasons": []},
            run_outcome={"label": "inspect-data", "kind": "command", "exit_code": 0, "status": "ok", "error": None})
    n.cycle(6, "wait `wait`", decision=decision("wait", "wait"))
    # c7 starts a long run that c8 follows to its end (the index row carries no dimension then)
    cfg = trainer_config("smoothing-c7", model="resnet14t", smoothing=0.1)
    out = n.train_run("smoothing-c7", 7, cfg, 0.94)
    n.cycle(7, "train `smoothing-c7` (loss)", decision=decision("train", "smoothing-c7", "loss"),
            run={"label": "smoothing-c7", "kind": "train", "monitor": "running"})
    n.index_row(out, 8, cfg, None)
    n.cycle(8, "monitor `smoothing-c7` -> ok val_acc 0.9400", decision={}, run_outcome=out, followed_run=out,
            run={"label": "smoothing-c7", "kind": "train", "monitor": "finished"}, promotion=n.promotion(8, 0.94))
    n.write()
    names = {c: f"llmloop-G001-c{c}-20260101-000{c}00" for c in (1, 2)}
    rows = [LineageRow(name=names[c], gen_id=1, branch_id=f"c{c}", seed=7, strategy="uniform", status="PASS",
                       score=s, promoted=(c == 2), archive_path=str(ws / "models" / "archive" / names[c]),
                       hashes_sha256="0" * 64, cycle_trace_id=n.trace(c)) for c, s in ((1, 0.95), (2, 0.97))]
    write_lineage(ws / "models" / "lineage.csv", rows)
    (ws / "models" / "GEN_HEAD").symlink_to(Path("archive") / HEAD)
    return ws


@pytest.fixture
def night(tmp_path) -> Path:
    return build_night(tmp_path / "artifacts")


def sections(text: str) -> dict[str, str]:
    """`## Heading` -> its body."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def table_rows(body: str) -> list[list[str]]:
    """The data rows of the first markdown table in `body`."""
    rows, started = [], False
    for line in body.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                rows.append(cells)
        elif started:
            break
    return rows[1:]


# =========================================================== paper report ====

def test_paper_report_has_every_section_in_order(night):
    paths = generate_reports(night, top_k=2, note="overnight test run", progress=False)
    text = paths["paper"].read_text()
    assert text.startswith("# ")
    positions = [text.index(f"\n{h}\n") for h in SECTIONS]
    assert positions == sorted(positions)
    assert text.index("overnight test run") < positions[0]       # the note sits near the top


def test_experiments_table_lists_every_run(night):
    body = sections(generate_reports(night, top_k=2, progress=False)["paper"].read_text())["## Experiments"]
    rows = {r[1].strip("`"): r for r in table_rows(body)}
    assert set(rows) == {"baseline-c1", "aug-c2", "bigmodel-c3", "bigmodel-c3-retry", "mentor-lr-c4", "smoothing-c7"}
    assert rows["aug-c2"][-1] == "0.9700" and rows["aug-c2"][2] == "augmentation"
    assert rows["bigmodel-c3"][-2] == "failed" and rows["bigmodel-c3"][3] == "resnet99"
    assert rows["bigmodel-c3-retry"][-1] == "0.9600" and rows["bigmodel-c3-retry"][3] == "resnet10t"
    assert rows["mentor-lr-c4"][5] == "sgd/0.02"
    assert rows["smoothing-c7"][2] == "loss"            # recovered from the cycle that launched it


def test_results_best_spread_per_class_and_plots(night):
    paths = generate_reports(night, top_k=2, progress=False)
    body = sections(paths["paper"].read_text())["## Results"]
    assert "**0.9700**" in body and "`aug-c2`" in body
    resnet10t = [0.95, 0.97, 0.96, 0.955]
    spread = f"{statistics.mean(resnet10t):.4f} ± {statistics.stdev(resnet10t):.4f}"
    row = next(line for line in body.splitlines() if line.startswith("| resnet10t |"))
    assert spread in row and "0.9500" in row and "0.9700" in row
    assert "| 9 |" in body                               # the per-class table of the best model
    for file in PLOT_FILES:
        assert f"]({file})" in body and (paths["paper"].parent / file).exists()


def test_mentor_section_names_the_applied_challenge(night):
    body = sections(generate_reports(night, progress=False)["paper"].read_text())["## What the Mentor changed"]
    rows = table_rows(body)
    assert len(rows) == 1
    row = rows[0]
    assert row[0] == "4" and row[2] == "off_track" and row[4] == "yes"
    assert "lr 0.05 too high" in row[3]
    assert "`mentor-lr-c4`" in row[5] and "optimization" in row[5] and '"lr": 0.02' in row[5]
    assert "ok 0.9550" in row[6]


def test_failures_section_names_the_exit_code_and_the_fallback(night):
    body = sections(generate_reports(night, progress=False)["paper"].read_text())["## Failures and repairs"]
    row = next(r for r in table_rows(body) if r[2] == "`bigmodel-c3`")
    assert row[4] == "failed" and row[5] == "3" and "Unsupported model.name: resnet99" in row[6]
    assert "model fallback resnet99 -> resnet10t: ok" in body
    assert "Retry: `bigmodel-c3-retry` ok val_acc 0.9600" in body


def test_limitations_and_reproduce_come_from_the_data(night):
    found = sections(generate_reports(night, progress=False)["paper"].read_text())
    limits = found["## Limitations"]
    assert "One seed per configuration (seeds used: 7)" in limits
    assert "180 validation images" in limits and "CPU only" in limits
    assert "1 item still open" in limits
    best_args = night / "runs" / "aug-c2-c00002-000002" / "out" / "train_args.json"
    assert f"llmloop train --config {best_args}" in found["## Reproduce"]
    assert f"GEN_HEAD: `{HEAD}`" in found["## Reproduce"]
    setup = found["## Setup"]
    assert "digits, 10 classes" in setup and "resnet10t (4 runs)" in setup and "llm" in setup


# ========================================================== the other files ====

def test_condensed_story_tells_the_arc_the_repair_and_the_end(night):
    text = generate_reports(night, progress=False)["story"].read_text()
    assert "8 cycles, 6 training runs (5 ok, 1 failed)" in text      # the torn last event line is skipped
    assert "Baseline: `baseline-c1`" in text
    assert "`aug-c2` (augmentation) raised the best to 0.9700 (+0.0200)" in text and "c00002-000002" in text
    assert "model fallback resnet99 -> resnet10t" in text and "`bigmodel-c3-retry` ok" in text
    assert "Is lr 0.05 too high" in text and "`mentor-lr-c4`" in text
    assert "Best model: `aug-c2`" in text and f"GEN_HEAD: `{HEAD}`" in text
    assert len(text.splitlines()) < 80                                # about a page


def test_leaderboard_order_and_k(night):
    paths = generate_reports(night, top_k=2, progress=False)
    assert paths["leaderboard_json"].name == "final_leaderboard_top2.json"
    board = json.loads(paths["leaderboard_json"].read_text())
    entries = board["entries"]
    assert [e["label"] for e in entries] == ["aug-c2", "bigmodel-c3-retry"] and board["count"] == 2
    top = entries[0]
    assert top["score"] == 0.97 and top["cycle"] == 2 and top["cycle_trace_id"] == "c00002-000002"
    assert top["dimension"] == "augmentation" and top["key_config"]["augment"] == ["Affine"]
    assert top["config"]["model"]["name"] == "resnet10t"
    assert top["metrics"]["per_class_accuracy"]["9"] == pytest.approx(0.99)
    assert top["archive_path"] == str(night / "models" / "archive" / "llmloop-G001-c2-20260101-000200")
    md_rows = table_rows(paths["leaderboard_md"].read_text())
    assert [r[1] for r in md_rows] == ["`aug-c2`", "`bigmodel-c3-retry`"]
    everything = json.loads(generate_reports(night, top_k=10, progress=False)["leaderboard_json"].read_text())
    assert [e["score"] for e in everything["entries"]] == [0.97, 0.96, 0.955, 0.95, 0.94]


def test_plots_are_800_by_450_pngs(night):
    paths = generate_reports(night, progress=False)
    for name in ("plot_best_over_cycles", "plot_runs_over_cycles", "plot_per_class_best", "plot_tokens_over_cycles"):
        with Image.open(paths[name]) as img:
            assert img.format == "PNG" and img.size == (800, 450)


def test_progress_goes_to_the_report_log(night):
    paths = generate_reports(night, progress=False)
    log = paths["log"].read_text()
    assert "progress 8/8" in log and "reports written" in log


def test_a_cleaned_run_folder_makes_a_thinner_report_not_a_crash(night):
    (night / "runs" / "aug-c2-c00002-000002" / "out" / "metrics.json").unlink()
    text = generate_reports(night, progress=False)["paper"].read_text()
    assert "Per-class accuracy of `aug-c2`: unavailable" in text
    assert "metrics.json missing for 2 runs" in text        # the crashed original never had one


def test_an_empty_workspace_still_gets_every_file(tmp_path):
    ws = tmp_path / "artifacts"
    ws.mkdir()
    paths = generate_reports(ws, top_k=10, progress=False)
    for key in ("story", "paper", "leaderboard_json", "leaderboard_md"):
        assert "No runs yet" in paths[key].read_text()
    assert "progress 8/8" in paths["log"].read_text()
    paper = paths["paper"].read_text()
    assert all(f"\n{h}\n" in paper for h in SECTIONS)
    assert json.loads(paths["leaderboard_json"].read_text())["entries"] == []
    for file in PLOT_FILES:
        with Image.open(ws / "reports" / file) as img:
            assert img.format == "PNG" and img.size == (800, 450)


# ================================================================ the script ====

def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}     # the script finds the repo itself
    return subprocess.run([sys.executable, "scripts/generate_finishup_report.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_script_writes_the_reports(tmp_path):
    ws = build_night(tmp_path / "elsewhere" / "ws")
    root = tmp_path / "repo"
    root.mkdir()
    done = run_script("--workspace-root", str(root), "--top-k", "3", "--workspace", str(ws))
    assert done.returncode == 0, done.stderr
    reports = ws / "reports"
    for name in ("final_condensed_story.md", "final_paper_report.md", "final_leaderboard_top3.json",
                 "final_leaderboard_top3.md", *PLOT_FILES):
        assert (reports / name).exists() and str(reports / name) in done.stdout
    assert len(json.loads((reports / "final_leaderboard_top3.json").read_text())["entries"]) == 3


def test_the_script_defaults_to_artifacts_under_the_root(tmp_path):
    build_night(tmp_path / "artifacts")
    done = run_script("--workspace-root", str(tmp_path), "--top-k", "1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "artifacts" / "reports" / "final_leaderboard_top1.md").exists()


def test_a_missing_workspace_exits_2(tmp_path):
    done = run_script("--workspace-root", str(tmp_path), "--top-k", "3", "--workspace", str(tmp_path / "nope"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "nope").exists()
