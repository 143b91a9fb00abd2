"""The final reports (loop/report/), on the workspace of a real daemon run (conftest's
`real_daemon_workspace`), checked against its events.jsonl and runs/index.jsonl read raw here; the
reports read them through `CycleRecord` and `RunRecord`, so a renamed field fails these tests.
A hand-written night (its cycles built as CycleRecords) covers only what a short offline run cannot
produce: a crash repaired and retried, a Mentor challenge, a command, a followed run, LLM tokens,
GEN_HEAD, a torn line, foreign lines; and an empty workspace. The script runs as a real subprocess."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from PIL import Image

from loop.agents.usage import Usage
from loop.archive.lineage import LineageRow, write_lineage
from loop.cycle.record import CycleRecord, DecisionEntry, GateEntry, MentorEntry, PolicyEntry, RepairEntry, RunStart
from loop.journal.history import RunRecord
from loop.journal.metrics import EvalMetrics, RunMetrics
from loop.report import generate_reports
from loop.run.judge import RunOutcome
from loop.verdict.noise import wilson
from tests.conftest import REAL_DAEMON_CYCLES, REPO

SECTIONS = ["## Abstract", "## Setup", "## Data", "## Method", "## Experiments", "## Results",
            "## What the Mentor changed", "## Failures and repairs", "## Limitations", "## Reproduce",
            "## Use the model"]
PLOT_FILES = ["plot_best_over_cycles.png", "plot_runs_over_cycles.png", "plot_per_class_best.png",
              "plot_tokens_over_cycles.png"]
TEXT_KEYS = ("story", "paper", "leaderboard_json", "leaderboard_md", "log")


def sections(text: str) -> dict[str, str]:
    """`## Heading` -> its body."""
    parts = re.split(r"^(## .*)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_rows(body: str) -> list[list[str]]:
    """The data rows of the first markdown table in `body` (its header and |---| line left out)."""
    table = re.search(r"^\|.*(?:\n\|.*)*", body, flags=re.M)
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.group(0).splitlines()[2:]] if table else []


# ============================================================ the real run ====

@dataclass
class Real:
    ws: Path
    text: dict[str, str]          # the reports as the module fixture wrote them (top 3)
    cycles: list[dict]            # the cycle events, raw
    runs: list[dict]              # the runs index, raw

    @property
    def best(self) -> dict:
        """The kept best: the last run judged first or gain (a tie never replaces it)."""
        return [r for r in self.runs if r["verdict"] in ("first", "gain")][-1]

    def paper(self, heading: str) -> str:
        return sections(self.text["paper"])[heading]


@pytest.fixture(scope="module")
def real(real_daemon_workspace) -> Real:
    ws = real_daemon_workspace
    paths = generate_reports(ws, top_k=3, note="a real daemon run", progress=False)
    return Real(ws, {k: paths[k].read_text() for k in TEXT_KEYS},
                cycles=[json.loads(ln) for ln in (ws / "events.jsonl").open() if '"kind": "cycle"' in ln],
                runs=[json.loads(ln) for ln in (ws / "runs" / "index.jsonl").open()])


def test_the_real_run_is_what_the_reports_are_tested_on(real):
    every = range(1, REAL_DAEMON_CYCLES + 1)
    assert [c["cycle"] for c in real.cycles] == list(every) and {c["decision"]["source"] for c in real.cycles} == \
        {"offline"}
    assert [c["cycle"] for c in real.cycles if c.get("mentor", {}).get("verdict")] == [c for c in every if c % 2 == 0]
    assert [c["cycle"] for c in real.cycles if "gen_id" in c.get("evolution", {})] == [c for c in every if c % 3 == 0]
    assert len(real.runs) >= 3 and all(r["ok"] for r in real.runs)


def test_paper_sections_and_the_cycle_and_run_counts(real):
    title = "# Autonomous CNN experiments on digits classification: a Builder/Mentor research loop"
    assert real.text["paper"].startswith(f"{title}\n\n> Note: a real daemon run\n")     # the note near the top
    assert list(sections(real.text["paper"])) == SECTIONS
    n, runs = len(real.cycles), len(real.runs)
    assert f"({n} cycles) an autonomous Builder/Mentor loop ran {runs} training runs on the digits task" \
        in real.paper("## Abstract")
    assert f": {n} cycles, {runs} training runs ({runs} ok, 0 failed), {n // 2} Mentor reviews, 0 auto-repairs." \
        in real.text["story"]
    assert f"progress 1/8 read {n} cycles, {runs} runs eta" in real.text["log"]
    assert "progress 8/8" in real.text["log"] and "reports written" in real.text["log"]


def test_the_report_names_a_predict_command_that_runs(real, tmp_path):
    """The morning's commands, copied from the report as a user would, predict for real."""
    import shlex

    from PIL import Image
    from sklearn.datasets import load_digits

    from tests.conftest import run_cli

    body = real.paper("## Use the model")
    predicts = [ln for ln in body.splitlines() if ln.startswith("llmloop predict ")]
    assert predicts and all("<TEST_IMAGES>" in ln for ln in predicts)
    assert any(ln.startswith("llmloop export ") for ln in body.splitlines())
    digits = load_digits()
    for i in range(30):
        folder = tmp_path / "test" / str(digits.target[-i - 1])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[-i - 1] * 255 / 16).astype("uint8")).save(folder / f"t{i}.png")
    argv = shlex.split(predicts[0].replace("<TEST_IMAGES>", str(tmp_path / "test")))[1:]
    done = run_cli(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0] == "id,label" and len(rows) == 31 and "accuracy" in done.stdout + done.stderr


def test_the_best_run_and_its_accuracy(real):
    best, score = real.best, f"{real.best['score']:.4f}"
    ref = f"`{best['label']}` (cycle {best['cycle']}, `{best['trace']}`)"
    results = real.paper("## Results")
    lo, hi = wilson(best["score"], best["val_count"])
    assert (f"Best validation accuracy: **{score} [{lo:.4f}, {hi:.4f}]** (95% interval), {ref}, dimension "
            f"{best['dimension']}, fidelity 1.00.") in results
    assert "Kept improvements inside the noise band known now: **0** (target 0)" in results
    assert f"Per-class accuracy of `{best['label']}` (weakest class: " in results
    assert f"- Best model: {ref}, val acc {score}, run folder `{best['run_dir']}`." in real.text["story"]
    assert f"The best run, `{best['label']}` ({best['dimension']}, cycle {best['cycle']}), reached validation " \
           f"accuracy {score}" in real.paper("## Abstract")
    args = Path(best["run_dir"]) / "train_args.json"
    assert args.exists() and f"llmloop train --config {args} " in real.paper("## Reproduce")


def test_experiments_table_lists_every_run(real):
    rows = table_rows(real.paper("## Experiments"))
    assert [(int(r[0]), r[1].strip("`")) for r in rows] == [(r["cycle"], r["label"]) for r in real.runs]
    for row, run in zip(rows, real.runs):
        assert row[2] == run["dimension"] and row[3] == run["config"]["model"]["name"]
        assert row[4] == str(run["config"]["data"]["image_size"]) and row[6] == str(run["config"]["run"]["epochs"])
        assert row[7] == "ok" and row[8] == f"{run['score']:.4f}"


def test_policy_and_tokens_lines(real):
    n = len(real.cycles)
    policy = f"the embedded offline policy, not an LLM (no LLM endpoint; {n} by the offline policy)"
    setup = real.paper("## Setup")
    assert f"- Policy: {policy}; daemon started as Builder = offline policy (no endpoint configured; no network), " \
           "Mentor = offline policy." in setup
    assert f"Decisions came from {policy}." in real.text["story"]
    assert "Decisions came from the offline policy, not an LLM" in real.paper("## Limitations")
    tokens = real.cycles[-1]["tokens_total"]
    assert set(tokens) == {"builder", "mentor"} and all(t["calls"] == 0 for t in tokens.values())
    assert "- LLM tokens:" not in setup and "- LLM cost:" not in setup      # no call was made: no spend lines


def header_facts(paper: str) -> dict[str, str]:
    """The paper's header ("Where these numbers come from"): label -> text."""
    block = paper.split("**Where these numbers come from**\n\n", 1)[1].split("\n\n", 1)[0]
    return dict(line[2:].rstrip(".").split(": ", 1) for line in block.splitlines())


def test_the_header_says_where_the_numbers_come_from(real):
    """Machine, wall clock, seeds, runs and CPU-hours, tokens: each checked against what this machine,
    events.jsonl and the runs' metrics.json say, read raw here."""
    import datetime as dt
    import os
    from importlib.metadata import version

    from loop.util.progress import format_seconds

    facts = header_facts(real.text["paper"])
    assert list(facts) == ["Machine", "Wall clock", "Seeds", "Compute", "LLM", "Decisions", "Selection"]
    events = [json.loads(ln) for ln in (real.ws / "events.jsonl").open()]
    [start] = [e for e in events if e["kind"] == "daemon_start"]
    cpu = next(ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines()
               if ln.startswith("model name"))
    assert start["machine"]["cpu_model"] == " ".join(cpu.split()) and start["machine"]["cpu_cores"] == os.cpu_count()
    assert facts["Machine"].startswith(f"{' '.join(cpu.split())}, {os.cpu_count()} cores")
    assert f"torch {version('torch')} (" in facts["Machine"] and "; no GPU" in facts["Machine"]   # a CPU test box
    stamp = [dt.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%SZ") for e in events]
    first, last = dt.datetime.strptime(start["ts"], "%Y-%m-%dT%H:%M:%SZ"), max(stamp)
    assert facts["Wall clock"] == (f"{first:%Y-%m-%d %H:%M} UTC to {last:%Y-%m-%d %H:%M} UTC "
                                   f"({format_seconds((last - first).total_seconds())}, 1 daemon start)")
    seeds = sorted({r["config"]["run"]["seed"] for r in real.runs})
    assert facts["Seeds"].startswith(f"runs {', '.join(map(str, seeds))}; data splits ")
    labels = {r["label"] for r in real.runs}
    archived = [json.loads(f.read_text())["trainer"] for f in (real.ws / "models" / "archive").glob("*/metrics.json")]
    window = [t for t in archived if t["run_label"] not in labels]
    cpu_seconds = sum(json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["cpu_seconds"] for r in real.runs)
    cpu_seconds += sum(t["cpu_seconds"] for t in window)
    n = len(real.runs)
    assert cpu_seconds > 0 and window
    assert facts["Compute"].startswith(f"{n} training runs ({n} ok, 0 failed) and {len(window)} evolution candidate")
    assert f"; {cpu_seconds / 3600:.3f} CPU-hours, 0.000 GPU-hours, " in facts["Compute"]
    assert facts["LLM"] == "0 tokens, no cost: no LLM call was made"
    val = json.loads((Path(real.best["run_dir"]) / "metrics.json").read_text())["eval"]["count"]
    assert facts["Selection"].startswith(f"the best run was selected on the `val` split (validation accuracy, {val} "
                                         "images); GEN_HEAD candidates were gated and ranked on the probe splits")


def test_the_offline_night_says_the_offline_policy_decided(real):
    abstract = real.paper("## Abstract")
    said = f"the embedded offline policy, not an LLM (no LLM endpoint; {len(real.cycles)} by the offline policy)"
    assert f"decisions came from {said}." in abstract and header_facts(real.text["paper"])["Decisions"] == said
    assert "decisions came from an LLM" not in abstract and "a mix" not in abstract


def test_method_counts_the_gates_promotions_and_the_evolution_window(real):
    method = real.paper("## Method")
    actions = sum(1 for c in real.cycles if c["decision"]["action"] == "train")
    promos = [c["promotion"] for c in real.cycles if "promotion" in c]
    proposals = sum(bool(p.get("proposed")) for p in promos)
    lineage = (real.ws / "models" / "lineage.csv").read_text().strip().splitlines()[1:]
    assert f"- Actions: train {actions}." in method
    assert "- Gates: 0 decisions refused by the quality gate, 0 commands refused by the command policy." in method
    assert f"- Promotion pipeline: {len(promos)} hand-offs (PASS {len(promos)}), {proposals} proposal" in method
    assert f", 1 evolution window, {len(lineage)} archived candidates." in method


def test_mentor_reviews_come_from_the_events(real):
    rows = table_rows(real.paper("## What the Mentor changed"))
    reviewed = [c for c in real.cycles if c.get("mentor", {}).get("verdict")]
    assert [(int(r[0]), r[1], r[2], r[4]) for r in rows] == \
        [(c["cycle"], f"`{c['trace']}`", c["mentor"]["verdict"], "no") for c in reviewed]
    assert f"`{reviewed[0]['run']['label']}` ok" in rows[0][6]
    assert f"{len(reviewed)} reviews, 0 off track, 0 changed the decision." in real.text["story"]


def test_leaderboard_json_and_md(real):
    board = json.loads(real.text["leaderboard_json"])
    by_score = sorted((r for r in real.runs if r["ok"]), key=lambda r: (-r["score"], r["cycle"]))
    ranked = [real.best, *(r for r in by_score if r["label"] != real.best["label"])][:3]   # the kept best first
    assert board["top_k"] == 3 and board["count"] == len(ranked) and board["message"] is None
    assert [(e["label"], e["score"], e["cycle_trace_id"]) for e in board["entries"]] == \
        [(r["label"], r["score"], r["trace"]) for r in ranked]
    for entry, run in zip(board["entries"], ranked):
        assert entry["config"] == run["config"] and entry["key_config"]["model"] == "resnet10t"
        assert entry["metrics"]["val_accuracy"] == run["score"] and entry["metrics"]["status"] == "ok"
        assert entry["promotion_status"] == "PASS" and Path(entry["archive_path"]).is_dir()
    md_rows = table_rows(real.text["leaderboard_md"])
    assert [(r[1], r[2]) for r in md_rows] == [(f"`{r['label']}`", f"{r['score']:.4f}") for r in ranked]


def test_limitations_and_gen_head_come_from_the_data(real):
    limits = real.paper("## Limitations")
    metrics = json.loads((Path(real.best["run_dir"]) / "metrics.json").read_text())
    assert "Seed spread measured on 1 configuration(s) run with several seeds: pooled sd 0.0" in limits  # the replica
    assert "(1 degree(s) of freedom; seeds used: 7, 9)" in limits
    assert f"with {metrics['eval']['count']} validation images" in limits
    assert ("CPU only" in limits) == (metrics["device"] == "cpu")
    assert "did not read as a cycle record" not in limits and "metrics.json missing" not in limits
    proposal = json.loads((real.ws / "models" / "PROMOTION_PROPOSAL.json").read_text())
    assert f"Pending proposal: `{proposal['proposed_head']}`" in real.text["story"]


def test_plots_are_non_blank_800_by_450_pngs(real):
    for name in PLOT_FILES:
        with Image.open(real.ws / "reports" / name) as img:
            assert img.format == "PNG" and img.size == (800, 450), name
            colours = img.convert("RGB").getcolors(maxcolors=800 * 450)
        coloured = sum(n for n, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 60)
        assert len(colours) > 20 and coloured > 50, name        # axes, text and data drawn in colour
    with Image.open(real.ws / "reports" / "plot_per_class_best.png") as img:
        green = dict((c, n) for n, c in img.convert("RGB").getcolors(maxcolors=800 * 450)).get((44, 160, 44), 0)
    assert green > 100                                          # the best run's per-class bars
    for name in ("plot_best_over_cycles", "plot_runs_over_cycles", "plot_per_class_best"):
        assert f"]({name}.png)" in real.paper("## Results")


def test_the_accuracy_axis_zooms_to_the_successful_runs_and_the_band_is_binomial():
    from loop.report.helpers import accuracy_limits, noise_half_width

    lo, hi = accuracy_limits([0.975, 0.984, 0.979])
    assert 0.96 <= lo < 0.975 and 0.984 < hi <= 1.0 and hi - lo < 0.05     # 0.975 and 0.984 stay apart
    assert accuracy_limits([]) == (0.0, 1.0) and accuracy_limits([0.999])[1] == 1.0
    lo, hi = wilson(0.98, 270)          # the band is half the Wilson interval: one definition (verdict/noise)
    assert abs(noise_half_width(0.98, 270) - (hi - lo) / 2) < 1e-12 and 0.015 < noise_half_width(0.98, 270) < 0.02
    assert noise_half_width(0.98, None) is None


# ================================================================ the script ====

def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}     # the script finds the repo itself
    return subprocess.run([sys.executable, "scripts/generate_finishup_report.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_script_writes_the_reports_and_refuses_a_missing_workspace(real, tmp_path):
    done = run_script("--workspace-root", str(tmp_path), "--top-k", "2", "--workspace", str(real.ws))
    assert done.returncode == 0, done.stderr
    reports = real.ws / "reports"
    for name in ("final_condensed_story.md", "final_paper_report.md", "final_leaderboard_top2.json",
                 "final_leaderboard_top2.md", *PLOT_FILES):
        assert (reports / name).exists() and str(reports / name) in done.stdout
    assert len(json.loads((reports / "final_leaderboard_top2.json").read_text())["entries"]) == 2
    (tmp_path / "artifacts").symlink_to(real.ws)                      # the default workspace: <root>/artifacts
    assert run_script("--workspace-root", str(tmp_path), "--top-k", "1").returncode == 0
    assert (reports / "final_leaderboard_top1.md").exists()
    done = run_script("--workspace-root", str(tmp_path), "--top-k", "3", "--workspace", str(tmp_path / "nope"))
    assert done.returncode == 2 and "does not exist" in done.stderr and not (tmp_path / "nope").exists()


# ===================================================== what a short run lacks ====

HEAD, TRACE = "llmloop-G001-c1-20260101-000100", "c{0:05d}-{0:06x}"      # GEN_HEAD, a cycle's trace


def decision(action: str, label: str, dimension: str | None = None, source: str = "llm", **extra) -> DecisionEntry:
    return DecisionEntry(action=action, rationale=f"Because {label} is the next useful step.", run_label=label,
                         strategy_dimension=dimension, source=source, **extra)


class Night:
    """Writes a workspace cycle by cycle, each cycle a CycleRecord, the way the daemon does."""

    def __init__(self, ws: Path):
        self.ws, self.index = ws, []
        self.events = [{"ts": "2026-01-01T00:00:00Z", "kind": "daemon_start", "cycle_trace_id": "start-00001",
                        "builder": "LLM", "mentor": "LLM"}]
        self.tokens = {"builder": Usage(), "mentor": Usage()}
        (ws / "models" / "archive").mkdir(parents=True)

    def train(self, label: str, cycle: int, score: float | None, dimension: str | None, model: str = "resnet10t",
              lr: float = 0.05, indexed_in: int | None = None) -> RunOutcome:
        """A run folder as the trainer leaves it (no metrics.json for a crash), indexed unless it failed."""
        folder = self.ws / "runs" / f"{label}-{TRACE.format(cycle)}"
        (folder / "out").mkdir(parents=True)
        cfg = {"data": {"domain": "digits", "image_size": 32}, "model": {"name": model},
               "optim": {"name": "sgd", "lr": lr}, "budget": {"max_walltime_minutes": 30.0},
               "run": {"label": label, "seed": 7, "epochs": 10}}
        (folder / "run.yaml").write_text(json.dumps(cfg))
        if score is not None:
            (folder / "out" / "train_args.json").write_text(json.dumps(cfg))
            per_class = {str(c): score + (0.02 if c % 2 else -0.02) for c in range(10)}
            RunMetrics(status="ok", run_label=label, model_name=model, domain="digits", seed=7, device="cpu",
                       epochs_completed=10, epochs_planned=10, walltime_minutes=1.5,
                       eval=EvalMetrics(accuracy=score, loss=0.2, count=180, per_class_accuracy=per_class),
                       ).write(folder / "out")
            cycle_of = indexed_in or cycle
            self.index.append(RunRecord(label=label, cycle=cycle_of, config=cfg, ok=True, score=score,
                                        dimension=None if indexed_in else dimension, trace=TRACE.format(cycle_of),
                                        run_dir=str(folder / "out")))
        return RunOutcome(label=label, status="failed" if score is None else "ok", exit_code=3 if score is None else 0,
                          log_path=str(folder / "run.log"), run_dir=str(folder), seconds=90.0, val_accuracy=score,
                          error="Unsupported model.name: resnet99" if score is None else None)

    def promotion(self, cycle: int, score: float) -> dict:
        name = f"llmloop-G001-c{cycle}-20260101-000{cycle}00"
        path = self.ws / "models" / "archive" / name
        path.mkdir()
        return {"name": name, "status": "PASS", "score": score, "archive_path": str(path), "proposed": True}

    def cycle(self, cycle: int, mentor_tokens: int = 0, **fields) -> None:
        self.tokens["builder"].add(Usage(prompt_tokens=750, completion_tokens=250, total_tokens=1000, calls=1))
        self.tokens["mentor"].add(Usage(total_tokens=mentor_tokens, calls=int(mentor_tokens > 0)))
        rec = CycleRecord(cycle=cycle, trace=TRACE.format(cycle), seconds=12.5, quality_gate=GateEntry(ok=True),
                          **fields, tokens_total={k: v.model_copy() for k, v in self.tokens.items()})
        self.events.append({"ts": f"2026-01-01T0{cycle}:00:00Z", "kind": "cycle", "cycle_trace_id": rec.trace,
                            **rec.event_fields()})

    def started(self, o: RunOutcome, monitor: str = "finished") -> RunStart:
        return RunStart(label=o.label, pid=42, kind=o.kind, log_path=o.log_path, monitor=monitor, sandbox="bubblewrap")

    def write(self, foreign_cycle: dict, foreign_run: dict) -> None:
        # A crash mid-append tears the last line: the report must read past it.
        (self.ws / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [*self.events, foreign_cycle])
                                              + '{"ts": "2026-01-01T09:00:00Z", "kind": "cy')
        rows = [asdict(r) for r in self.index] + [foreign_run]
        (self.ws / "runs" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_night(ws: Path) -> Path:
    n = Night(ws)
    out = n.train("baseline-c1", 1, 0.95, "evaluation")             # c1: the baseline, promoted to GEN_HEAD
    n.cycle(1, decision=decision("train", "baseline-c1", "evaluation"), run=n.started(out), run_outcome=out,
            promotion=n.promotion(1, 0.95))
    # c2: an unsupported model fails with exit 3; the fallback repairs it and the retry succeeds
    failed = n.train("bigmodel-c2", 2, None, "model_arch", model="resnet99")
    retry = n.train("bigmodel-c2-retry", 2, 0.96, "model_arch")
    fallback = {"kind": "fallback", "target": "resnet99", "ok": True, "detail": "patched model.name",
                "fallback": "resnet10t"}
    n.cycle(2, decision=decision("train", "bigmodel-c2", "model_arch"), run=n.started(failed), run_outcome=failed,
            auto_repair=RepairEntry(applied=True, actions=[fallback]), run_outcome_retry=retry,
            promotion=n.promotion(2, 0.96))
    # c3: the Mentor calls it off track and its challenge runs instead
    challenge = decision("train", "mentor-lr-c3", "optimization", source="mentor",
                         train_overlay={"optim": {"lr": 0.02}})
    out = n.train("mentor-lr-c3", 3, 0.955, "optimization", lr=0.02)
    n.cycle(3, mentor_tokens=500, decision=challenge, run=n.started(out), run_outcome=out,
            promotion=n.promotion(3, 0.955),
            mentor=MentorEntry(why="stuck: 2 failed runs in a row", name="AI-Mentor", web_search="off", source="llm",
                               verdict="off_track", critical_question="Is lr 0.05 too high for the new head?",
                               challenge=challenge.model_dump(exclude={"source"}), challenge_applied=True))
    command = RunOutcome(label="inspect-data", kind="command", status="ok", exit_code=0)     # c4: a command
    n.cycle(4, policy=PolicyEntry(allowed=True), run=n.started(command),
            decision=decision("run_command", "inspect-data", "evaluation", command="ls"), run_outcome=command)
    # c5 starts a long run that c6 follows to its end (the index row carries no dimension then)
    out = n.train("smoothing-c5", 5, 0.94, "loss", model="resnet14t", indexed_in=6)
    n.cycle(5, decision=decision("train", "smoothing-c5", "loss"), run=n.started(out, monitor="running"))
    n.cycle(6, run=n.started(out), run_outcome=out, followed_run=out, promotion=n.promotion(6, 0.94))
    # lines from an older loop or a hand edit: a cycle the record model refuses, a run with no usable cycle
    n.write({"ts": "2026-01-01T07:00:00Z", "kind": "cycle", "cycle_trace_id": "c7", "cycle": 7, "trace": "c7",
             "decision": {"action": "wait", "source": "llm"}, "gate": {"ok": True}},
            {"label": "hand-edited", "cycle": "three", "ok": True, "score": None})
    write_lineage(ws / "models" / "lineage.csv", [
        LineageRow(name=HEAD, gen_id=1, branch_id="c1", seed=7, strategy="uniform", status="PASS", score=0.95,
                   promoted=True, archive_path=str(ws / "models" / "archive" / HEAD), hashes_sha256="0" * 64)])
    (ws / "models" / "GEN_HEAD").symlink_to(Path("archive") / HEAD)
    return ws


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict[str, str]:
    paths = generate_reports(build_night(tmp_path_factory.mktemp("night") / "artifacts"), top_k=10, progress=False)
    return {k: paths[k].read_text() for k in TEXT_KEYS}


def test_a_crashed_run_is_reported_with_its_repair_and_retry(night):
    found = sections(night["paper"])
    rows = {r[1].strip("`"): r for r in table_rows(found["## Experiments"])}
    assert rows["bigmodel-c2"][-2:] == ["failed", "-"] and rows["bigmodel-c2"][3] == "resnet99"
    assert rows["bigmodel-c2-retry"][-1] == "0.9600" and rows["bigmodel-c2-retry"][3] == "resnet10t"
    failures = found["## Failures and repairs"]
    row = next(r for r in table_rows(failures) if r[2] == "`bigmodel-c2`")
    assert row[:2] == ["2", "`c00002-000002`"] and row[3:6] == ["train", "failed", "3"]
    assert "Unsupported model.name: resnet99" in row[6]
    assert "- Cycle 2 `c00002-000002`: auto-repair applied." in failures
    assert "model fallback resnet99 -> resnet10t: ok (patched model.name)" in failures
    assert "Retry: `bigmodel-c2-retry` ok val_acc 0.9600" in failures
    assert "metrics.json missing for 1 run (bigmodel-c2)." in found["## Limitations"]
    story = night["story"]
    assert "6 cycles, 5 training runs (4 ok, 1 failed), 1 Mentor review, 1 auto-repair" in story
    assert "- Cycle 2 `c00002-000002`: `bigmodel-c2` failed (Unsupported model.name: resnet99), exit code 3." in story
    assert "- Cycle 2 auto-repair: model fallback resnet99 -> resnet10t: ok (patched model.name); " \
           "retry -> `bigmodel-c2-retry` ok val_acc 0.9600." in story


def test_a_mentor_challenge_that_replaced_the_decision(night):
    [row] = table_rows(sections(night["paper"])["## What the Mentor changed"])
    assert row[0] == "3" and row[2] == "off_track" and row[4] == "yes" and "lr 0.05 too high" in row[3]
    assert "`mentor-lr-c3`" in row[5] and "optimization" in row[5] and '"lr": 0.02' in row[5]
    assert row[6] == "`mentor-lr-c3` ok 0.9550"
    assert "- Cycle 3 `c00003-000003`: Is lr 0.05 too high for the new head? -> train `mentor-lr-c3` (optimization)" \
           ' overlay {"optim": {"lr": 0.02}} -> ok val acc 0.9550' in night["story"]


def test_a_command_a_followed_run_llm_tokens_and_gen_head(night):
    found = sections(night["paper"])
    assert "- Actions: train 4, run_command 1." in found["## Method"]
    rows = {r[1].strip("`"): r for r in table_rows(found["## Experiments"])}
    assert "inspect-data" not in rows and rows["smoothing-c5"][:3] == ["6", "`smoothing-c5`", "loss"]
    setup = found["## Setup"]
    assert "- Policy: an LLM (4 by the LLM Builder (model not recorded); 1 by an LLM Mentor challenge (model not " \
           "recorded)); daemon started as Builder = LLM" in setup
    assert "- LLM tokens: builder 6000 tokens (6 calls); mentor 500 tokens (1 calls)." in setup
    assert f"GEN_HEAD: `{HEAD}`" in found["## Reproduce"] and f"GEN_HEAD: `{HEAD}`" in night["story"]
    assert [e["score"] for e in json.loads(night["leaderboard_json"])["entries"]] == [0.96, 0.955, 0.95, 0.94]


def test_a_torn_line_and_foreign_records_are_skipped_and_counted(night):
    limits = sections(night["paper"])["## Limitations"]
    assert "- 1 cycle event in events.jsonl did not read as a cycle record (an old or foreign file) and was " \
           "skipped: this report leaves it out." in limits
    assert "From 2026-01-01 00:00 UTC to 2026-01-01 07:00 UTC (7h00m00s): 6 cycles," in night["story"]
    assert "read 6 cycles, 5 runs, 1 unreadable cycle events skipped" in night["log"]
    assert "hand-edited" not in night["leaderboard_json"]         # the index line whose cycle is not a number


WHO_DECIDED = [   # decision sources of the cycles, the models recorded at start -> what the abstract says
    (["offline"] * 6 + ["finish-up"], {},
     "the embedded offline policy, not an LLM (no LLM endpoint; 6 by the offline policy; 1 forced by finish-up)"),
    (["llm"] * 3 + ["mentor"], {"builder": "gpt-x", "mentor": "gpt-y"},
     "an LLM (3 by the LLM Builder (gpt-x); 1 by an LLM Mentor challenge (gpt-y))"),
    (["llm"] * 2 + ["offline-fallback"] * 2 + ["llm-failed"], {"builder": "gpt-x", "mentor": "gpt-x"},
     "a mix of an LLM and the offline policy (2 by the LLM Builder (gpt-x); 2 by the offline policy standing in "
     "for the LLM; 1 wait after a failed LLM call)"),
    (["offline-fallback"] * 3 + ["llm-failed"] * 2, {"builder": "gpt-x"},
     "the embedded offline policy, not an LLM (the configured LLM decided none of them; 3 by the offline policy "
     "standing in for the LLM; 2 waits after a failed LLM call)"),
]


@pytest.mark.parametrize("sources, models, said", WHO_DECIDED)
def test_who_decided_is_said_from_the_decision_sources(tmp_path, sources, models, said):
    """A finish-up decision is not an LLM's, a Mentor challenge is credited to whoever made it, and
    a night of both says so: the abstract, the setup and the header agree."""
    from loop.report.data import load_data
    from loop.report.paper import paper_report

    n = Night(tmp_path / "artifacts")
    n.events[0]["llm_models"] = models
    (n.ws / "runs").mkdir()
    for i, source in enumerate(sources, start=1):
        mentor = MentorEntry(why="cadence", name="AI-Mentor", web_search="off", source="llm", verdict="off_track",
                             challenge_applied=True) if source == "mentor" else None
        n.cycle(i, decision=decision("wait", f"w{i}", source=source), mentor=mentor)
    n.write({}, {})
    paper = paper_report(load_data(n.ws, 10, ""))
    found = sections(paper)
    assert f"decisions came from {said}." in found["## Abstract"]
    assert f"- Policy: {said};" in found["## Setup"] and header_facts(paper)["Decisions"] == said
    offline = sum(s.startswith("offline") for s in sources)
    assert ("Decisions came from the offline policy, not an LLM" in found["## Limitations"]) == \
        ("not an LLM" in said)
    if said.startswith("a mix"):
        assert f"{offline} of 4 decisions came from the offline policy, not the LLM" in found["## Limitations"]


def test_a_cleaned_run_folder_makes_a_thinner_report_not_a_crash(tmp_path):
    night = build_night(tmp_path / "artifacts")
    (night / "runs" / "bigmodel-c2-retry-c00002-000002" / "out" / "metrics.json").unlink()
    text = generate_reports(night, progress=False)["paper"].read_text()
    assert "Per-class accuracy of `bigmodel-c2-retry`: unavailable" in text
    assert "metrics.json missing for 2 runs" in text        # the crashed original never had one


def test_an_empty_workspace_still_gets_every_file(tmp_path):
    paths = generate_reports(tmp_path, top_k=10, progress=False)
    text = {k: paths[k].read_text() for k in TEXT_KEYS}
    assert all("No runs yet" in text[k] for k in ("story", "paper", "leaderboard_json", "leaderboard_md"))
    assert "progress 8/8" in text["log"] and list(sections(text["paper"])) == SECTIONS
    assert json.loads(text["leaderboard_json"])["entries"] == []
    for file in PLOT_FILES:
        with Image.open(tmp_path / "reports" / file) as img:
            assert img.format == "PNG" and img.size == (800, 450)

