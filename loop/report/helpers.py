"""What the report writers share: the report file names, the "no runs" sentence, and the small
helpers that turn the loaded records into text and facts (markdown cells and tables, the time span,
improvements, Mentor reviews, failures, repairs, spreads, devices, domains, GEN_HEAD)."""
from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter
from typing import Any

from loop.agents.usage import Usage
from loop.report.data import CycleRecord, ReportData, Run, base_label, dig, outcomes_of
from loop.report.deciders import deciders
from loop.run.judge import RunOutcome
from loop.util.progress import format_seconds
from loop.verdict.noise import KEEPS, wilson

STORY_FILE = "final_condensed_story.md"
PAPER_FILE = "final_paper_report.md"
PLOTS = {
    "plot_best_over_cycles": "plot_best_over_cycles.png",
    "plot_runs_over_cycles": "plot_runs_over_cycles.png",
    "plot_per_class_best": "plot_per_class_best.png",
    "plot_tokens_over_cycles": "plot_tokens_over_cycles.png",
}
NO_RUNS = "No runs yet: the loop has not finished a training run in this workspace."
FINAL_STATUSES_OK = ("ok",)


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
    return Counter(c.decision.source for c in data.cycles if c.decision and c.decision.source)


def policy_text(data: ReportData) -> str:
    """Who decided: the offline policy, an LLM (its models), or a mix, with the counts."""
    return deciders(data).text()


def tokens_final(data: ReportData) -> dict[str, Usage]:
    """Tokens per role over the workspace's life, as the last cycle that counted them recorded."""
    return next((c.tokens_total for c in reversed(data.cycles) if c.tokens_total), {})


def improvements(data: ReportData) -> list[tuple[Run, float | None]]:
    """The runs kept as the best (first, then each real gain; a tie never counts), with the best
    before them. Rows from before verdicts existed: every full-fidelity rise of the best."""
    if any(r.verdict for r in data.runs):
        kept = [r for r in data.ok_runs if r.verdict in KEEPS]
        return list(zip(kept, [None] + [k.score for k in kept[:-1]]))
    arc, best = [], None
    for r in data.ok_runs:
        if r.full and (best is None or r.score > best):
            arc.append((r, best))
            best = r.score
    return arc


def best_steps(data: ReportData) -> list[tuple[int, float]]:
    """(cycle, the kept best's score from then on) at each improvement."""
    return [(r.cycle, r.score) for r, _ in improvements(data)]


def mentor_reviews(data: ReportData) -> list[CycleRecord]:
    return [c for c in data.cycles if c.mentor and c.mentor.verdict]


def run_launched_in(data: ReportData, cycle: CycleRecord) -> Run | None:
    """The run a cycle started (it may have finished in a later cycle, or as a retry)."""
    label = cycle.run.label if cycle.run else None
    if not label:
        return None
    matches = [r for r in data.runs if base_label(r.label) == label and r.cycle >= cycle.cycle]
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


def failures(data: ReportData) -> list[tuple[RunOutcome, CycleRecord]]:
    """Every finished non-ok outcome, with the cycle it is recorded in."""
    out = []
    for c in data.cycles:
        out += [(o, c) for o in outcomes_of(c) if o.status not in FINAL_STATUSES_OK]
    return out


def repairs(data: ReportData) -> list[CycleRecord]:
    return [c for c in data.cycles if c.auto_repair]


def action_text(a: dict) -> str:
    if not isinstance(a, dict):
        return cell(a)
    what = {"fallback": f"model fallback {a.get('target')} -> {a.get('fallback')}",
            "pip": f"pip install {a.get('package')} (for {a.get('target')})",
            "clone": f"clone for {a.get('target')}"}.get(a.get("kind"), f"{a.get('kind')} {a.get('target')}")
    return f"{what}: {'ok' if a.get('ok') else 'FAILED'}" + (f" ({cell(a['detail'])})" if a.get("detail") else "")


def outcome_text(o: RunOutcome | None) -> str:
    if o is None:
        return "unknown"
    text = f"`{o.label}` {o.status}"
    if o.val_accuracy is not None:
        text += f" val_acc {acc(o.val_accuracy)}"
    if o.status not in ("ok", "running") and o.error:
        text += f" ({cell(o.error)})"
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
    return {r.metrics.device for r in data.runs if r.metrics and r.metrics.device}


def domains(data: ReportData) -> set[str]:
    found = {dig(r.config, "data.domain") or (r.metrics.domain if r.metrics else None) for r in data.runs}
    return {d for d in found if d}


def per_class(run: Run | None) -> dict[str, float]:
    ev = run.metrics.eval if run and run.metrics else None
    return dict(ev.per_class_accuracy) if ev else {}


def active_run_label(data: ReportData) -> str | None:
    """The runs still in flight when the report was written, as one text (None when none)."""
    runs = data.state.get("active_runs") or ([data.state["active_run"]] if data.state.get("active_run") else [])
    return "`, `".join(r.get("label", "?") for r in runs if isinstance(r, dict)) or None


def head_text(data: ReportData) -> str:
    text = f"- GEN_HEAD: `{data.head}`." if data.head else "- GEN_HEAD: none (no candidate promoted yet)."
    if data.proposal and data.proposal.get("proposed_head"):
        text += (f" Pending proposal: `{data.proposal['proposed_head']}` (score {data.proposal.get('score')}; "
                 f"`llmloop promote` approves it).")
    return text


# ---------------------------------------------- accuracy axis and noise ----
# One definition each, for the report's plots, the paper and the dashboard's chart.

def val_count(data: ReportData) -> int | None:
    """The validation set's size, as the runs' metrics.json record it (None when none does)."""
    counts = [r.metrics.eval.count for r in data.runs if r.metrics and r.metrics.eval and r.metrics.eval.count]
    return max(counts) if counts else None


def accuracy_limits(scores: list[float]) -> tuple[float, float]:
    """The accuracy axis zoomed to the successful runs (runs at 0.975 and 0.984 must not sit on one
    line), with a margin; failures never set the scale (they are marked on the axis instead)."""
    if not scores:
        return 0.0, 1.0
    lo, hi = min(scores), max(scores)
    pad = max(0.01, 0.1 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad)


def noise_half_width(score: float, n: int | None) -> float | None:
    """Half the 95% binomial interval of an accuracy measured on `n` validation images: how far
    the best could move on a new draw of the same size (None without a count)."""
    ci = wilson(score, n)
    return None if ci is None else (ci[1] - ci[0]) / 2
