"""The condensed story (final_condensed_story.md): the run in about a page: span, arc of
improvements, Mentor, failures and repairs, where it ended, a storyline excerpt."""
from __future__ import annotations

from loop.report.data import ReportData
from loop.report.helpers import (
    NO_RUNS,
    acc,
    action_text,
    active_run_label,
    decision_text,
    failures,
    head_text,
    improvements,
    mentor_reviews,
    outcome_text,
    plural,
    policy_text,
    repairs,
    run_launched_in,
    run_ref,
    span,
)


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
    challenged = [c for c in reviews if c.mentor.challenge_applied]
    off = sum(c.mentor.verdict == "off_track" for c in reviews)
    lines.append(f"{plural(len(reviews), 'review')}, {off} off track, {len(challenged)} changed the decision.")
    for c in challenged:
        run = run_launched_in(data, c)
        question = c.mentor.critical_question or "off track"
        lines.append(f"- Cycle {c.cycle} `{c.trace}`: {question} -> {decision_text(c.mentor.challenge)}"
                     + (f" -> {run.status} val acc {acc(run.score)}" if run else ""))
    return lines + [""]


def story_failures(data: ReportData) -> list[str]:
    lines = ["## Failures and repairs", ""]
    fails, fixes = failures(data), repairs(data)
    if not fails and not fixes:
        return lines + ["No run failed.", ""]
    for o, c in fails:
        lines.append(f"- Cycle {c.cycle} `{c.trace}`: {outcome_text(o)}"
                     + (f", exit code {o.exit_code}" if o.exit_code is not None else "") + ".")
    for c in fixes:
        fix = c.auto_repair
        acts = "; ".join(action_text(a) for a in fix.actions) or fix.reason or "nothing to do"
        lines.append(f"- Cycle {c.cycle} auto-repair: {acts}; retry -> {outcome_text(c.run_outcome_retry)}.")
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


def story_excerpt(data: ReportData) -> list[str]:
    lines = data.storyline
    if not lines:
        return []
    if len(lines) > 12:
        lines = lines[:3] + [f"- ... {len(lines) - 8} more cycles ..."] + lines[-5:]
    return ["## Storyline excerpt", ""] + lines + [""]
