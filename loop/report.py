"""The final reports of a night's run (the seed's "Finish-Up Mode"), written into
`<workspace>/reports/`:

  final_condensed_story.md      the run in about a page: span, arc of improvements, Mentor, repairs, end
  final_paper_report.md         paper-style: Abstract, Setup, Method, Experiments, Results, Mentor,
                                Failures and repairs, Limitations, Reproduce
  final_leaderboard_top{k}.json the top-k successful runs with their full configs and metrics
  final_leaderboard_top{k}.md   the same as a table
  plot_*.png                    800x450 plots linked from the paper report
  report.log                    the progress lines of every generation

Everything is read from the workspace files, never from the daemon, so a report can be written
while the loop runs or long after. Missing or torn files (a cleaned run folder, a crash mid-append)
make a thinner report, never a crash: an empty workspace still gets every file.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop.events import EventLog
from loop.evolution.paths import ModelPaths
from loop.progress import ProgressLog, format_seconds
from loop.workspace import Workspace

STORY_FILE = "final_condensed_story.md"
PAPER_FILE = "final_paper_report.md"
PLOTS = {
    "plot_best_over_cycles": "plot_best_over_cycles.png",
    "plot_runs_over_cycles": "plot_runs_over_cycles.png",
    "plot_per_class_best": "plot_per_class_best.png",
    "plot_tokens_over_cycles": "plot_tokens_over_cycles.png",
}
FIGSIZE, DPI = (8.0, 4.5), 100          # 800x450 pixels: the PNG size is known to readers and tests
NO_RUNS = "No runs yet: the loop has not finished a training run in this workspace."
FINAL_STATUSES_OK = ("ok",)


# ================================================================ the data ====

@dataclass
class Run:
    """One training run: a runs/index.jsonl row, or a failed run that only the events know
    (a run whose retry replaced it in the index)."""

    label: str
    cycle: int
    trace: str
    ok: bool
    score: float
    status: str
    dimension: str | None = None
    config: dict = field(default_factory=dict)
    run_dir: str = ""
    metrics: dict | None = None
    error: str | None = None
    exit_code: int | None = None
    promotion: dict | None = None

    @property
    def archive_path(self) -> str | None:
        return (self.promotion or {}).get("archive_path")

    def key(self) -> dict[str, Any]:
        """The config fields a reader compares runs by."""
        c, m = self.config, self.metrics or {}
        return {"model": dig(c, "model.name") or m.get("model_name"),
                "image_size": dig(c, "data.image_size"),
                "sampling": dig(c, "data.sampling.strategy"),
                "augment": [a.get("name") for a in dig(c, "data.augment") or [] if isinstance(a, dict)],
                "optimizer": dig(c, "optim.name"), "lr": dig(c, "optim.lr"),
                "epochs": dig(c, "run.epochs"), "batch_size": dig(c, "data.batch_size"),
                "label_smoothing": dig(c, "loss.label_smoothing"), "seed": dig(c, "run.seed") or m.get("seed"),
                "kd_teacher": dig(c, "kd.teacher")}


@dataclass
class ReportData:
    ws: Workspace
    cycles: list[dict]
    events: list[dict]                    # every record, cycle or not
    runs: list[Run]                       # by cycle
    state: dict
    lineage: list[dict]
    head: str | None
    proposal: dict | None
    finish_up: dict | None
    storyline: list[str]
    open_todos: list[str]
    note: str
    top_k: int

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def ranked(self) -> list[Run]:
        return sorted(self.ok_runs, key=lambda r: (-r.score, r.cycle))

    @property
    def best(self) -> Run | None:
        return self.ranked[0] if self.ok_runs else None

    @property
    def baseline(self) -> Run | None:
        return self.ok_runs[0] if self.ok_runs else None


def dig(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line; a torn or foreign line is skipped."""
    return [r for r in EventLog(path) if isinstance(r, dict)]


def read_config(run_dir: Path) -> dict:
    """The resolved trainer config of a run folder (`out/`): train_args.json, else the run.yaml
    the daemon wrote beside it (JSON, which YAML reads too)."""
    for path in (run_dir / "train_args.json", run_dir.parent / "run.yaml"):
        if path.exists():
            try:
                import yaml

                data = yaml.safe_load(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                continue
    return {}


def load_data(ws_root: Path, top_k: int, note: str) -> ReportData:
    ws = Workspace(ws_root)
    events = read_jsonl(ws.events)
    cycles = sorted((e for e in events if e.get("kind") == "cycle" and isinstance(e.get("cycle"), int)),
                    key=lambda e: e["cycle"])
    finish_up = read_json(ws.finish_up)
    finish_up = finish_up if isinstance(finish_up, dict) else None
    paths = ModelPaths(ws.root)
    proposal = read_json(paths.proposal)
    return ReportData(
        ws=ws, cycles=cycles, events=events, runs=load_runs(ws, cycles),
        state=read_json(ws.state) or {}, lineage=read_lineage_rows(paths.lineage), head=paths.head_name(),
        proposal=proposal if isinstance(proposal, dict) else None, finish_up=finish_up,
        storyline=[ln for ln in read_text(ws.storyline).splitlines() if ln.startswith("- ")],
        open_todos=[ln for ln in read_text(ws.todo).splitlines() if ln.startswith("- [ ]")],
        note=note or (finish_up or {}).get("note", "") or "", top_k=top_k)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_lineage_rows(path: Path) -> list[dict]:
    # Plain dicts: a report must not fail on a row the current LineageRow schema would refuse.
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


# ------------------------------------------------------------------ runs ----

def outcomes_of(event: dict) -> list[dict]:
    """The finished run outcomes a cycle event holds (a follow cycle repeats run_outcome as followed_run)."""
    found = [event.get(k) for k in ("run_outcome", "run_outcome_retry", "followed_run")]
    seen, out = set(), []
    for o in found:
        if isinstance(o, dict) and o.get("label") and o.get("status") not in (None, "running"):
            key = (o["label"], o.get("status"))
            if key not in seen:
                seen.add(key)
                out.append(o)
    return out


def launch_dimensions(cycles: list[dict]) -> dict[str, str]:
    """run label -> the strategy dimension of the decision that launched it. A run followed in a
    later cycle is indexed without one (that cycle made no decision)."""
    dims = {}
    for e in cycles:
        label, dim = dig(e, "run.label"), dig(e, "decision.strategy_dimension")
        if label and dim:
            dims[label] = dim
    return dims


def load_runs(ws: Workspace, cycles: list[dict]) -> list[Run]:
    by_trace = {e.get("cycle_trace_id"): e for e in cycles}
    dims = launch_dimensions(cycles)
    runs = [index_run(row, by_trace, dims) for row in read_jsonl(ws.runs_index) if row.get("label")]
    indexed = {(r.trace, r.label) for r in runs}
    for e in cycles:                # failed train runs that a retry replaced in the index
        for o in outcomes_of(e):
            if o.get("kind") == "train" and (e.get("cycle_trace_id"), o["label"]) not in indexed:
                runs.append(event_run(o, e, dims))
    for r in runs:
        r.metrics = read_json(Path(r.run_dir) / "metrics.json") if r.run_dir else None
    return sorted(runs, key=lambda r: (r.cycle, r.label.endswith("-retry")))   # a failure before its retry


def index_run(row: dict, by_trace: dict[str, dict], dims: dict[str, str]) -> Run:
    event = by_trace.get(row.get("trace"), {})
    outcome = next((o for o in outcomes_of(event) if o["label"] == row["label"]), {})
    run_dir = str(row.get("run_dir") or "")
    promotion = event.get("promotion") if isinstance(event.get("promotion"), dict) else None
    return Run(label=row["label"], cycle=int(row.get("cycle") or 0), trace=str(row.get("trace") or ""),
               ok=bool(row.get("ok")), score=float(row.get("score") or 0.0),
               status=outcome.get("status") or ("ok" if row.get("ok") else "failed"),
               dimension=row.get("dimension") or dims.get(base_label(row["label"])),
               config=row.get("config") or (read_config(Path(run_dir)) if run_dir else {}),
               run_dir=run_dir, error=outcome.get("error"), exit_code=outcome.get("exit_code"),
               promotion=promotion if row.get("ok") else None)


def event_run(outcome: dict, event: dict, dims: dict[str, str]) -> Run:
    run_dir = str(Path(outcome["run_dir"]) / "out") if outcome.get("run_dir") else ""
    return Run(label=outcome["label"], cycle=int(event["cycle"]), trace=event.get("cycle_trace_id", ""),
               ok=False, score=0.0, status=outcome.get("status") or "failed",
               dimension=dims.get(base_label(outcome["label"])),
               config=read_config(Path(run_dir)) if run_dir else {}, run_dir=run_dir,
               error=outcome.get("error"), exit_code=outcome.get("exit_code"))


def base_label(label: str) -> str:
    return label[:-len("-retry")] if label.endswith("-retry") else label


# ============================================================ small helpers ====

def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def cell(value: Any) -> str:
    """A markdown table cell: one line, no pipe."""
    text = "-" if value is None or value == "" else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def parse_ts(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def span(data: ReportData) -> tuple[str, str, str]:
    """First event time, last event time, and the duration between them."""
    stamps = [t for t in (parse_ts(e.get("ts")) for e in data.events) if t]
    if not stamps:
        return "-", "-", "0s"
    first, last = min(stamps), max(stamps)
    return (first.strftime("%Y-%m-%d %H:%M UTC"), last.strftime("%Y-%m-%d %H:%M UTC"),
            format_seconds((last - first).total_seconds()))


def run_ref(r: Run) -> str:
    return f"`{r.label}` (cycle {r.cycle}, `{r.trace}`)"


def sources(data: ReportData) -> Counter:
    return Counter(dig(e, "decision.source") for e in data.cycles if dig(e, "decision.source"))


def policy_text(data: ReportData) -> str:
    counts = sources(data)
    if not counts:
        return "no decisions recorded yet"
    parts = ", ".join(f"{n} {src}" for src, n in counts.most_common()) + " decisions"
    if set(counts) <= {"offline", "mentor"}:
        return f"the embedded offline policy, no LLM endpoint ({parts})"
    return f"an LLM Builder and Mentor ({parts})"


def tokens_final(data: ReportData) -> dict[str, dict]:
    last = next((e["tokens_total"] for e in reversed(data.cycles) if isinstance(e.get("tokens_total"), dict)), {})
    return {role: v for role, v in last.items() if isinstance(v, dict)}


def improvements(data: ReportData) -> list[tuple[Run, float | None]]:
    """The runs that raised the best validation accuracy so far, with the best before them."""
    arc, best = [], None
    for r in data.ok_runs:
        if best is None or r.score > best:
            arc.append((r, best))
            best = r.score
    return arc


def mentor_reviews(data: ReportData) -> list[dict]:
    return [e for e in data.cycles if isinstance(e.get("mentor"), dict) and e["mentor"].get("verdict")]


def run_launched_in(data: ReportData, event: dict) -> Run | None:
    """The run a cycle started (it may have finished in a later cycle, or as a retry)."""
    label = dig(event, "run.label")
    if not label:
        return None
    matches = [r for r in data.runs if base_label(r.label) == label and r.cycle >= event["cycle"]]
    return sorted(matches, key=lambda r: (not r.ok, r.cycle))[0] if matches else None


def decision_text(d: dict | None) -> str:
    if not isinstance(d, dict):
        return "-"
    text = d.get("action", "?")
    if d.get("run_label"):
        text += f" `{d['run_label']}`"
    if d.get("strategy_dimension"):
        text += f" ({d['strategy_dimension']})"
    if d.get("train_overlay"):
        text += f" overlay {json.dumps(d['train_overlay'], sort_keys=True)}"
    return text


def failures(data: ReportData) -> list[tuple[dict, dict]]:
    """Every finished non-ok outcome, with the cycle event it is recorded in."""
    out = []
    for e in data.cycles:
        out += [(o, e) for o in outcomes_of(e) if o.get("status") not in FINAL_STATUSES_OK]
    return out


def repairs(data: ReportData) -> list[dict]:
    return [e for e in data.cycles if isinstance(e.get("auto_repair"), dict)]


def action_text(a: dict) -> str:
    what = {"fallback": f"model fallback {a.get('target')} -> {a.get('fallback')}",
            "pip": f"pip install {a.get('package')} (for {a.get('target')})",
            "clone": f"clone for {a.get('target')}"}.get(a.get("kind"), f"{a.get('kind')} {a.get('target')}")
    return f"{what}: {'ok' if a.get('ok') else 'FAILED'}" + (f" ({cell(a['detail'])})" if a.get("detail") else "")


def outcome_text(o: dict | None) -> str:
    if not isinstance(o, dict):
        return "unknown"
    text = f"`{o.get('label')}` {o.get('status')}"
    if o.get("val_accuracy") is not None:
        text += f" val_acc {acc(o['val_accuracy'])}"
    if o.get("status") not in ("ok", "running") and o.get("error"):
        text += f" ({cell(o['error'])})"
    return text


def spread_rows(runs: list[Run], key) -> list[list[Any]]:
    """n, mean ± std, min, max of the scores of successful runs per group; failures counted apart."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(str(key(r) or "unknown"), []).append(r)
    rows = []
    for name, members in sorted(groups.items()):
        scores = [r.score for r in members if r.ok]
        failed = len(members) - len(scores)
        if scores:
            std = statistics.stdev(scores) if len(scores) > 1 else None
            mean = f"{statistics.mean(scores):.4f} ± {std:.4f}" if std is not None else f"{scores[0]:.4f} (1 run)"
            rows.append([name, len(scores), failed, mean, acc(min(scores)), acc(max(scores))])
        else:
            rows.append([name, 0, failed, "-", "-", "-"])
    return rows


def devices(data: ReportData) -> set[str]:
    return {str(r.metrics.get("device")) for r in data.runs if r.metrics and r.metrics.get("device")}


def domains(data: ReportData) -> set[str]:
    found = {dig(r.config, "data.domain") or (r.metrics or {}).get("domain") for r in data.runs}
    return {d for d in found if d}


def per_class(run: Run | None) -> dict[str, float]:
    pc = dig(run.metrics, "eval.per_class_accuracy") if run and run.metrics else None
    return {str(k): float(v) for k, v in pc.items()} if isinstance(pc, dict) else {}


def active_run_label(data: ReportData) -> str | None:
    return dig(data.state, "active_run.label")


# =============================================================== the plots ====

def new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)     # no pyplot: no global state, no screen needed
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)                 # no bbox_inches="tight": keeps 800x450 exactly
    return path


def empty_note(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def integer_cycles(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))     # cycles are whole numbers


def plot_best_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Best validation accuracy so far", xlabel="cycle", ylabel="val accuracy")
    last_cycle = max((e["cycle"] for e in data.cycles), default=0)
    if data.ok_runs:
        xs, ys, best = [], [], 0.0
        for r in data.ok_runs:
            best = max(best, r.score)
            xs.append(r.cycle)
            ys.append(best)
        xs.append(max(last_cycle, xs[-1]))
        ys.append(best)
        ax.step(xs, ys, where="post", color="tab:blue")
        ax.scatter([r.cycle for r, _ in improvements(data)], [r.score for r, _ in improvements(data)],
                   color="tab:blue", zorder=3, label="new best")
        ax.legend(loc="lower right")
    else:
        empty_note(ax, "no runs yet")
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_runs_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Every training run", xlabel="cycle", ylabel="val accuracy")
    dims = sorted({r.dimension or "unknown" for r in data.ok_runs})
    for dim in dims:
        members = [r for r in data.ok_runs if (r.dimension or "unknown") == dim]
        ax.scatter([r.cycle for r in members], [r.score for r in members], label=dim, alpha=0.8)
    failed = [r for r in data.runs if not r.ok]
    if failed:
        ax.scatter([r.cycle for r in failed], [0.0] * len(failed), marker="x", color="red", s=60,
                   label="failed (no score)", zorder=3)
    if data.runs:
        ax.legend(loc="best", fontsize="small")
    else:
        empty_note(ax, "no runs yet")
    ax.set_ylim(-0.05, 1.05)
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_per_class_best(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    best, classes = data.best, per_class(data.best)
    ax.set(title=f"Per-class accuracy of the best run{': ' + best.label if best else ''}",
           xlabel="class", ylabel="accuracy")
    if classes:
        ax.bar(list(classes), list(classes.values()), color="tab:green")
        ax.set_ylim(0, 1.05)
    else:
        empty_note(ax, "no runs yet" if best is None else "per-class accuracy unavailable (metrics.json missing)")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_tokens_over_cycles(data: ReportData, path: Path) -> Path:
    fig, ax = new_figure()
    ax.set(title="Cumulative LLM tokens per role", xlabel="cycle", ylabel="total tokens")
    points = [(e["cycle"], e["tokens_total"]) for e in data.cycles if isinstance(e.get("tokens_total"), dict)]
    roles = sorted({role for _, t in points for role in t})
    for role in roles:
        ax.plot([c for c, _ in points], [dig(t, f"{role}.total_tokens") or 0 for _, t in points],
                marker=".", label=role)
    if roles:
        ax.legend(loc="upper left")
    if not points:
        empty_note(ax, "no cycles yet")
    elif not any(dig(t, f"{role}.total_tokens") for _, t in points for role in roles):
        ax.set_ylim(-1, 10)
        empty_note(ax, "no LLM tokens used (offline policy)", y=0.6)
    integer_cycles(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# ======================================================= the condensed story ====

def condensed_story(data: ReportData) -> str:
    lines = ["# The run, condensed", ""]
    if data.note:
        lines += [f"> Note: {data.note}", ""]
    lines += story_span(data) + story_arc(data) + story_mentor(data) + story_failures(data) + story_end(data)
    lines += story_excerpt(data)
    return "\n".join(lines).rstrip() + "\n"


def story_span(data: ReportData) -> list[str]:
    first, last, took = span(data)
    if not data.cycles:
        return ["Nothing recorded yet: events.jsonl holds no cycles. " + NO_RUNS, ""]
    ok, failed = len(data.ok_runs), len(data.runs) - len(data.ok_runs)
    return [f"From {first} to {last} ({took}): {plural(len(data.cycles), 'cycle')}, "
            f"{plural(len(data.runs), 'training run')} ({ok} ok, {failed} failed), "
            f"{plural(len(mentor_reviews(data)), 'Mentor review')}, {plural(len(repairs(data)), 'auto-repair')}. "
            f"Decisions came from {policy_text(data)}.", ""]


def story_arc(data: ReportData) -> list[str]:
    lines = ["## The arc", ""]
    if not data.ok_runs:
        return lines + [NO_RUNS, ""]
    for r, before in improvements(data):
        if before is None:
            lines.append(f"- Baseline: `{r.label}` ({r.dimension or '-'}, cycle {r.cycle}, `{r.trace}`) reached "
                         f"val acc {acc(r.score)}.")
        else:
            lines.append(f"- Cycle {r.cycle} `{r.trace}`: `{r.label}` ({r.dimension or '-'}) raised the best to "
                         f"{acc(r.score)} (+{r.score - before:.4f}).")
    return lines + [""]


def story_mentor(data: ReportData) -> list[str]:
    reviews = mentor_reviews(data)
    lines = ["## The Mentor", ""]
    if not reviews:
        return lines + ["No Mentor reviews were recorded.", ""]
    challenged = [e for e in reviews if e["mentor"].get("challenge_applied")]
    off = sum(e["mentor"]["verdict"] == "off_track" for e in reviews)
    lines.append(f"{plural(len(reviews), 'review')}, {off} off track, {len(challenged)} changed the decision.")
    for e in challenged:
        run = run_launched_in(data, e)
        question = e["mentor"].get("critical_question") or "off track"
        lines.append(f"- Cycle {e['cycle']} `{e['cycle_trace_id']}`: {question}"
                     f" -> {decision_text(e['mentor'].get('challenge'))}"
                     + (f" -> {run.status} val acc {acc(run.score)}" if run else ""))
    return lines + [""]


def story_failures(data: ReportData) -> list[str]:
    lines = ["## Failures and repairs", ""]
    fails, fixes = failures(data), repairs(data)
    if not fails and not fixes:
        return lines + ["No run failed.", ""]
    for o, e in fails:
        lines.append(f"- Cycle {e['cycle']} `{e['cycle_trace_id']}`: {outcome_text(o)}"
                     + (f", exit code {o['exit_code']}" if o.get("exit_code") is not None else "") + ".")
    for e in fixes:
        fix = e["auto_repair"]
        acts = "; ".join(action_text(a) for a in fix.get("actions") or []) or fix.get("reason") or "nothing to do"
        lines.append(f"- Cycle {e['cycle']} auto-repair: {acts}; retry -> {outcome_text(e.get('run_outcome_retry'))}.")
    return lines + [""]


def story_end(data: ReportData) -> list[str]:
    lines = ["## Where it ended", ""]
    best = data.best
    lines.append(f"- Best model: {run_ref(best)}, val acc {acc(best.score)}, run folder `{best.run_dir}`."
                 if best else f"- {NO_RUNS}")
    lines.append(head_text(data))
    if active_run_label(data):
        lines.append(f"- Still running when the report was written: `{active_run_label(data)}`.")
    if data.state.get("stop_reason"):
        lines.append(f"- Stop reason: {data.state['stop_reason']}.")
    return lines + [""]


def head_text(data: ReportData) -> str:
    text = f"- GEN_HEAD: `{data.head}`." if data.head else "- GEN_HEAD: none (no candidate promoted yet)."
    if data.proposal and data.proposal.get("proposed_head"):
        text += (f" Pending proposal: `{data.proposal['proposed_head']}` (score {data.proposal.get('score')}; "
                 f"`llmloop promote` approves it).")
    return text


def story_excerpt(data: ReportData) -> list[str]:
    lines = data.storyline
    if not lines:
        return []
    if len(lines) > 12:
        lines = lines[:3] + [f"- ... {len(lines) - 8} more cycles ..."] + lines[-5:]
    return ["## Storyline excerpt", ""] + lines + [""]


# ========================================================== the paper report ====

def paper_report(data: ReportData) -> str:
    lines = [f"# {paper_title(data)}", ""]
    if data.note:
        lines += [f"> Note: {data.note}", ""]
    lines += [f"_Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from `{data.ws.root}`._",
              ""]
    for section in (abstract, setup, method, experiments, results, mentor_section, failures_section,
                    limitations, reproduce):
        lines += section(data) + [""]
    return "\n".join(lines).rstrip() + "\n"


def paper_title(data: ReportData) -> str:
    domain = ", ".join(sorted(domains(data))) or "image"
    return f"Autonomous CNN experiments on {domain} classification: a Builder/Mentor research loop"


def abstract(data: ReportData) -> list[str]:
    lines = ["## Abstract", ""]
    if not data.cycles:
        return lines + ["No cycles have run in this workspace yet. " + NO_RUNS]
    _, _, took = span(data)
    task = ", ".join(sorted(domains(data))) or "configured"
    text = (f"Over {took} ({plural(len(data.cycles), 'cycle')}) an autonomous Builder/Mentor loop ran "
            f"{plural(len(data.runs), 'training run')} on the {task} task; decisions came from {policy_text(data)}. ")
    best, base = data.best, data.baseline
    if best:
        text += f"The best run, `{best.label}` ({best.dimension or '-'}, cycle {best.cycle}), reached validation " \
                f"accuracy {acc(best.score)}"
        text += (f", against {acc(base.score)} for the first successful run `{base.label}`. "
                 if base is not best else ". ")
    else:
        text += NO_RUNS + " "
    reviews = mentor_reviews(data)
    text += (f"The Mentor reviewed {plural(len(reviews), 'decision')} and replaced "
             f"{sum(bool(e['mentor'].get('challenge_applied')) for e in reviews)}; "
             f"{plural(len(failures(data)), 'run')} failed and {plural(len(repairs(data)), 'auto-repair')} "
             f"{'was' if len(repairs(data)) == 1 else 'were'} attempted.")
    return lines + [text]


def setup(data: ReportData) -> list[str]:
    lines = ["## Setup", ""]
    models = Counter(r.key()["model"] for r in data.runs if r.key()["model"])
    classes = per_class(data.best)
    starts = [e for e in data.events if e.get("kind") == "daemon_start"]
    lines.append(f"- Task: {', '.join(sorted(domains(data))) or 'unknown (no runs yet)'}"
                 + (f", {len(classes)} classes" if classes else "")
                 + (f", validation set of {val_count(data)} images" if val_count(data) else "") + ".")
    used = ", ".join(f"{m} ({plural(n, 'run')})" for m, n in models.most_common())
    lines.append(f"- Models: {used or 'none yet'}.")
    lines.append(f"- Budget per run: {budget_text(data)}.")
    lines.append(f"- Machine: {machine_text(data)}.")
    lines.append(f"- Policy: {policy_text(data)}"
                 + (f"; daemon started as Builder = {starts[-1].get('builder')}, Mentor = {starts[-1].get('mentor')}"
                    if starts else "") + ".")
    tokens = tokens_final(data)
    if tokens:
        spent = [f"{role} {t.get('total_tokens', 0)} in {plural(t.get('calls', 0), 'call')}"
                 for role, t in tokens.items()]
        lines.append(f"- LLM tokens: {', '.join(spent)}.")
    return lines


def val_count(data: ReportData) -> int | None:
    counts = [dig(r.metrics, "eval.count") for r in data.runs if r.metrics and dig(r.metrics, "eval.count")]
    return max(counts) if counts else None


def budget_text(data: ReportData) -> str:
    caps = next((dig(r.config, "budget") for r in reversed(data.runs) if dig(r.config, "budget")), None) or {}
    set_caps = ", ".join(f"{k} {v}" for k, v in caps.items() if v is not None) or "no caps recorded"
    minutes = sum(float(dig(r.metrics, "walltime_minutes") or 0) for r in data.runs if r.metrics)
    return f"{set_caps}; {minutes:.1f} training minutes in all"


def machine_text(data: ReportData) -> str:
    devs = devices(data)
    versions = next((r.metrics.get("versions") for r in data.runs if r.metrics and r.metrics.get("versions")), {})
    text = ", ".join(sorted(devs)) if devs else "unknown (no metrics.json)"
    if versions:
        text += " (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")"
    return text


def method(data: ReportData) -> list[str]:
    lines = ["## Method", "",
             "Each cycle the Builder returns one decision (`train`, `run_command`, `wait`, `research`, `finish`); "
             "on a cadence, or when the loop is stuck, the Mentor reviews it and may replace it with a concrete "
             "challenge. A quality gate checks every decision; a training overlay is validated against the trainer "
             "config, a command against the command policy. A failed run gets one auto-repair pass and one retry. "
             "Every finished training run is handed to the promotion pipeline: archived as a candidate, scored "
             "against the gates, and proposed as GEN_HEAD when it beats the current head.", ""]
    gate_refused = sum(1 for e in data.cycles if dig(e, "quality_gate.ok") is False)
    policy_refused = sum(1 for e in data.cycles if dig(e, "policy.allowed") is False)
    actions = Counter(dig(e, "decision.action") for e in data.cycles if dig(e, "decision.action"))
    lines.append("- Actions: " + (", ".join(f"{a} {n}" for a, n in actions.most_common()) or "none") + ".")
    lines.append(f"- Gates: {gate_refused} decisions refused by the quality gate, "
                 f"{policy_refused} commands refused by the command policy.")
    promos = [e["promotion"] for e in data.cycles if isinstance(e.get("promotion"), dict)]
    statuses = Counter(str(p.get("status", "error")).split(" ")[0] for p in promos)
    windows = [e for e in data.cycles if isinstance(e.get("evolution"), dict) and "gen_id" in e["evolution"]]
    lines.append(f"- Promotion pipeline: {plural(len(promos), 'hand-off')} ("
                 + (", ".join(f"{s} {n}" for s, n in statuses.most_common()) or "none")
                 + f"), {plural(sum(bool(p.get('proposed')) for p in promos), 'proposal')}, "
                 f"{plural(len(windows), 'evolution window')}, {plural(len(data.lineage), 'archived candidate')}.")
    dims = Counter(r.dimension or "unknown" for r in data.runs)
    lines.append("- Strategy dimensions explored (training runs): "
                 + (", ".join(f"{d} {n}" for d, n in dims.most_common()) or "none yet") + ".")
    return lines


def experiments(data: ReportData) -> list[str]:
    lines = ["## Experiments", ""]
    if not data.runs:
        return lines + [NO_RUNS]
    rows = []
    for r in data.runs:
        k = r.key()
        rows.append([r.cycle, f"`{r.label}`", r.dimension, k["model"], k["image_size"],
                     f"{k['optimizer'] or '-'}/{k['lr'] if k['lr'] is not None else '-'}", k["epochs"], r.status,
                     acc(r.score) if r.ok else "-"])
    return lines + table(["cycle", "label", "dimension", "model", "image size", "optimizer/lr", "epochs",
                          "status", "val acc"], rows)


def results(data: ReportData) -> list[str]:
    lines = ["## Results", ""]
    best = data.best
    if best is None:
        lines += [NO_RUNS, ""]
    else:
        lines += [f"Best validation accuracy: **{acc(best.score)}**, {run_ref(best)}, dimension "
                  f"{best.dimension or '-'}.", ""]
        lines += ["Results with spread per strategy dimension (successful runs; one seed each):", ""]
        lines += table(["dimension", "ok runs", "failed", "mean ± std", "min", "max"],
                       spread_rows(data.runs, lambda r: r.dimension)) + [""]
        lines += ["Results with spread per model:", ""]
        lines += table(["model", "ok runs", "failed", "mean ± std", "min", "max"],
                       spread_rows(data.runs, lambda r: r.key()["model"])) + [""]
        lines += [f"Top {data.top_k}:", ""] + leaderboard_table(data) + [""]
        lines += per_class_lines(best)
    lines += ["Plots:", ""]
    lines += [f"![{name.replace('plot_', '').replace('_', ' ')}]({file})" for name, file in PLOTS.items()]
    return lines


def per_class_lines(best: Run) -> list[str]:
    classes = per_class(best)
    if not classes:
        return [f"Per-class accuracy of `{best.label}`: unavailable (metrics.json missing in `{best.run_dir}`).", ""]
    worst = min(classes, key=classes.get)
    return ([f"Per-class accuracy of `{best.label}` (weakest class: {worst} at {acc(classes[worst])}):", ""]
            + table(["class", "accuracy"], [[c, acc(a)] for c, a in classes.items()]) + [""])


def mentor_section(data: ReportData) -> list[str]:
    lines = ["## What the Mentor changed", ""]
    reviews = mentor_reviews(data)
    if not reviews:
        return lines + ["No Mentor reviews were recorded."]
    rows = []
    for e in reviews:
        m = e["mentor"]
        run = run_launched_in(data, e)
        outcome = f"`{run.label}` {run.status} {acc(run.score) if run.ok else ''}" if run else "no run"
        rows.append([e["cycle"], f"`{e['cycle_trace_id']}`", m.get("verdict"), m.get("critical_question"),
                     "yes" if m.get("challenge_applied") else "no",
                     decision_text(m.get("challenge")) if m.get("challenge") else "-", outcome])
    return lines + table(["cycle", "trace", "verdict", "question", "challenge applied", "challenge",
                          "outcome of the cycle's run"], rows)


def failures_section(data: ReportData) -> list[str]:
    lines = ["## Failures and repairs", ""]
    fails, fixes = failures(data), repairs(data)
    if not fails:
        lines.append("No run failed.")
    else:
        rows = [[e["cycle"], f"`{e['cycle_trace_id']}`", f"`{o.get('label')}`", o.get("kind"), o.get("status"),
                 o.get("exit_code"), o.get("error")] for o, e in fails]
        lines += table(["cycle", "trace", "label", "kind", "status", "exit code", "error"], rows)
    lines.append("")
    if not fixes:
        return lines + ["No auto-repair was attempted."]
    for e in fixes:
        fix = e["auto_repair"]
        lines.append(f"- Cycle {e['cycle']} `{e['cycle_trace_id']}`: auto-repair "
                     f"{'applied' if fix.get('applied') else 'not applied'}"
                     + (f" ({fix['reason']})" if fix.get("reason") else "") + ".")
        lines += [f"  - {action_text(a)}" for a in fix.get("actions") or []]
        lines.append(f"  - Retry: {outcome_text(e.get('run_outcome_retry'))}")
    return lines


def limitations(data: ReportData) -> list[str]:
    lines = ["## Limitations", ""]
    items = [limit_seeds(data), limit_val_set(data), limit_policy(data), limit_machine(data),
             limit_groups(data), limit_missing(data), limit_open(data)]
    items = [i for i in items if i]
    return lines + ([f"- {i}" for i in items] or ["- Nothing was run, so nothing can be concluded yet."])


def limit_seeds(data: ReportData) -> str:
    if not data.runs:
        return "No runs: nothing can be concluded yet."
    seeds = {r.key()["seed"] for r in data.runs if r.key()["seed"] is not None}
    return (f"One seed per configuration (seeds used: {', '.join(map(str, sorted(seeds))) or 'unknown'}): "
            "differences of a few tenths of a point between runs may be noise.")


def limit_val_set(data: ReportData) -> str:
    n = val_count(data)
    if not data.runs:
        return ""
    base = "Runs were selected on the same validation set they are scored on (no held-out test set), " \
           "so the best score is optimistic"
    return f"{base}; with {n} validation images one image is {100 / n:.2f} points." if n else base + "."


def limit_policy(data: ReportData) -> str:
    counts = sources(data)
    if not counts:
        return ""
    if set(counts) <= {"offline", "mentor"}:
        return "Decisions came from the offline policy, not an LLM: this shows the loop, not an LLM's research."
    failed = counts.get("llm-failed", 0)
    return f"{plural(failed, 'Builder call')} failed and became waits." if failed else ""


def limit_machine(data: ReportData) -> str:
    devs = devices(data)
    if devs == {"cpu"}:
        return "CPU only: models and epochs were kept small, so scores understate what a GPU run would reach."
    return ""


def limit_groups(data: ReportData) -> str:
    thin = [d for d, n in Counter(r.dimension or "unknown" for r in data.ok_runs).items() if n < 3]
    return (f"Fewer than 3 successful runs for {', '.join(sorted(thin))}: their spread is not a reliable estimate."
            if thin else "")


def limit_missing(data: ReportData) -> str:
    missing = [r.label for r in data.runs if r.metrics is None]
    text = f"metrics.json missing for {plural(len(missing), 'run')} ({', '.join(missing[:5])})." if missing else ""
    if active_run_label(data):
        text += f" `{active_run_label(data)}` was still running and is not in these results."
    return text.strip()


def limit_open(data: ReportData) -> str:
    return f"{plural(len(data.open_todos), 'item')} still open in shared_todo.md." if data.open_todos else ""


def reproduce(data: ReportData) -> list[str]:
    lines = ["## Reproduce", ""]
    best = data.best
    if best is None:
        return lines + [NO_RUNS + " Start one with `llmloop start`."]
    run_dir = Path(best.run_dir)
    config = run_dir / "train_args.json" if (run_dir / "train_args.json").exists() else run_dir.parent / "run.yaml"
    lines += [f"The best run `{best.label}` used this resolved config (`{config}`):", "", "```bash",
              f"llmloop train --config {config} --out artifacts/runs/{best.label}-repro", "```", ""]
    if config.name == "train_args.json":
        lines += [f"The daemon's own copy, with the overlay it applied, is `{run_dir.parent / 'run.yaml'}`.", ""]
    if best.archive_path:
        lines += [f"The archived candidate (weights, model card, hashes) is `{best.archive_path}`.", ""]
    lines.append(head_text(data)[2:])
    return lines


# ============================================================== leaderboard ====

def leaderboard_entries(data: ReportData) -> list[dict]:
    return [{"rank": i, "label": r.label, "score": r.score, "cycle": r.cycle, "cycle_trace_id": r.trace,
             "dimension": r.dimension, "key_config": r.key(), "config": r.config,
             "metrics": metrics_summary(r.metrics), "run_dir": r.run_dir, "archive_path": r.archive_path,
             "promotion_status": (r.promotion or {}).get("status"), "promotion_score": (r.promotion or {}).get("score")}
            for i, r in enumerate(data.ranked[:data.top_k], start=1)]


def metrics_summary(m: dict | None) -> dict | None:
    if not m:
        return None
    keep = ("status", "model_name", "domain", "seed", "device", "steps", "epochs_completed", "epochs_planned",
            "loss_start", "loss_final", "walltime_minutes", "images_per_second", "budget_used")
    out = {k: m.get(k) for k in keep if k in m}
    ev = m.get("eval") or {}
    out.update(val_accuracy=ev.get("accuracy"), val_loss=ev.get("loss"), val_count=ev.get("count"),
               per_class_accuracy=ev.get("per_class_accuracy"))
    return out


def leaderboard_json(data: ReportData) -> str:
    entries = leaderboard_entries(data)
    return json.dumps({"generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "workspace": str(data.ws.root), "top_k": data.top_k, "count": len(entries),
                       "gen_head": data.head, "note": data.note or None,
                       "message": None if entries else NO_RUNS, "entries": entries}, indent=2, default=str) + "\n"


def leaderboard_table(data: ReportData) -> list[str]:
    rows = []
    for e in leaderboard_entries(data):
        k = e["key_config"]
        rows.append([e["rank"], f"`{e['label']}`", acc(e["score"]), e["cycle"], f"`{e['cycle_trace_id']}`",
                     e["dimension"], k["model"], k["image_size"], f"{k['optimizer'] or '-'}/{k['lr']}", k["epochs"],
                     Path(e["archive_path"]).name if e["archive_path"] else "-"])
    if not rows:
        return [NO_RUNS]
    return table(["rank", "label", "val acc", "cycle", "trace", "dimension", "model", "image size",
                  "optimizer/lr", "epochs", "archive"], rows)


def leaderboard_md(data: ReportData) -> str:
    lines = [f"# Leaderboard: top {data.top_k}", ""]
    if data.note:
        lines += [f"> Note: {data.note}", ""]
    lines += [f"Successful training runs ranked by validation accuracy ({len(data.ok_runs)} in all).", ""]
    lines += leaderboard_table(data) + ["", head_text(data)]
    return "\n".join(lines) + "\n"


# ================================================================ the entry ====

def generate_reports(workspace: Path, top_k: int = 10, note: str = "", progress: bool = True) -> dict[str, Path]:
    """Write every final report into `<workspace>/reports/`; returns {name: path}."""
    out = Workspace(workspace).reports
    out.mkdir(parents=True, exist_ok=True)
    paths = {"story": out / STORY_FILE, "paper": out / PAPER_FILE,
             "leaderboard_json": out / f"final_leaderboard_top{top_k}.json",
             "leaderboard_md": out / f"final_leaderboard_top{top_k}.md",
             **{name: out / file for name, file in PLOTS.items()}}
    plotters = {"plot_best_over_cycles": plot_best_over_cycles, "plot_runs_over_cycles": plot_runs_over_cycles,
                "plot_per_class_best": plot_per_class_best, "plot_tokens_over_cycles": plot_tokens_over_cycles}
    log = ProgressLog(out / "report.log", "final report", total=1 + len(plotters) + 3,
                      stream=None if progress else io.StringIO())
    try:
        log.line(f"final report for {workspace} (top {top_k})")
        data = load_data(Path(workspace), top_k, note)
        step = 1
        log.update(step, f"read {len(data.cycles)} cycles, {len(data.runs)} runs")
        for name, plot in plotters.items():       # plots first: the paper links them
            plot(data, paths[name])
            step += 1
            log.update(step, name)
        paths["leaderboard_json"].write_text(leaderboard_json(data), encoding="utf-8")
        paths["leaderboard_md"].write_text(leaderboard_md(data), encoding="utf-8")
        log.update(step + 1, "leaderboard")
        paths["paper"].write_text(paper_report(data), encoding="utf-8")
        log.update(step + 2, "paper report")
        paths["story"].write_text(condensed_story(data), encoding="utf-8")
        log.update(step + 3, "condensed story")
        log.line(f"reports written to {out}")
    finally:
        log.close()
    return {**paths, "log": out / "report.log"}


def report_command(workspace_root: Path, top_k: int, workspace: Path | None = None, note: str = "") -> int:
    """`llmloop report` and scripts/generate_finishup_report.py: 0 done, 2 no such workspace or bad k."""
    ws = Path(workspace) if workspace is not None else Path(workspace_root) / "artifacts"
    if not ws.is_dir():
        print(f"error: workspace {ws} does not exist (give --workspace, or a --workspace-root with artifacts/)",
              file=sys.stderr)
        return 2
    if top_k < 1:
        print(f"error: --top-k must be at least 1, not {top_k}", file=sys.stderr)
        return 2
    paths = generate_reports(ws, top_k=top_k, note=note)
    for path in paths.values():
        print(path)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's arguments, shared by the script and `llmloop report`."""
    parser.add_argument("--workspace-root", default=".", help="the repo root (default: the current folder)")
    parser.add_argument("--top-k", type=int, default=10, help="leaderboard size (default 10)")
    parser.add_argument("--workspace", help="the workspace folder (default: <workspace-root>/artifacts)")
    parser.add_argument("--note", default="", help="a note shown at the top of the reports")


def run_args(args: argparse.Namespace) -> int:
    return report_command(Path(args.workspace_root), args.top_k,
                          Path(args.workspace) if args.workspace else None, args.note)
