"""The paper-style report (final_paper_report.md): Abstract, Setup, Data, Method, Experiments,
Results, Mentor, Failures and repairs, Limitations, Reproduce; a data leak and ages that follow the
class are warned of at the top."""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

from loop.report.data import ReportData, Run, dig
from loop.report.datasection import age_warning, data_section, leak_warning
from loop.report.deciders import deciders
from loop.report.header import night_header
from loop.report.helpers import (
    NO_RUNS,
    PLOTS,
    acc,
    action_text,
    active_run_label,
    decision_text,
    devices,
    domains,
    failures,
    head_text,
    mentor_reviews,
    outcome_text,
    per_class,
    plural,
    policy_text,
    repairs,
    run_launched_in,
    run_ref,
    sources,
    span,
    spread_rows,
    table,
    tokens_final,
    val_count,
)
from loop.report.leaderboard import leaderboard_table
from loop.report.usage import use_section
from loop.verdict.keeps import inside_noise, interval_text, noise_text, seed_groups
from loop.verdict.noise import pooled_seed_spread


def paper_report(data: ReportData) -> str:
    lines = [f"# {paper_title(data)}", ""]
    if data.note:
        lines += [f"> Note: {data.note}", ""]
    lines += [f"_Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from `{data.ws.root}`._",
              ""]
    lines += [HEADER_TITLE, ""] + night_header(data).lines() + [""]
    lines += leak_warning(data) + age_warning(data)
    for section in (abstract, setup, data_section, method, experiments, results, mentor_section, failures_section,
                    limitations, reproduce, use_section):
        lines += section(data) + [""]
    return "\n".join(lines).rstrip() + "\n"


HEADER_TITLE = "**Where these numbers come from**"


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
             f"{sum(bool(c.mentor.challenge_applied) for c in reviews)}; "
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
    lines.extend(llm_spend_lines(data))
    return lines


def llm_spend_lines(data: ReportData) -> list[str]:
    """Tokens and cost per role (every request, failed ones included), the cost per cycle, and
    the cycles the offline policy decided because the LLM could not."""
    tokens = tokens_final(data)
    if not any(u.calls for u in tokens.values()):
        return []
    lines = [f"- LLM tokens: {'; '.join(f'{role} {u.describe()}' for role, u in tokens.items())}."]
    cost = sum(u.cost for u in tokens.values())
    if cost:
        lines.append(f"- LLM cost: {cost:.4f} in all, {cost / max(1, len(data.cycles)):.4f} per cycle.")
    fallbacks = sources(data).get("offline-fallback", 0)
    if fallbacks:
        lines.append(f"- The offline policy decided {plural(fallbacks, 'cycle')} while the Builder LLM "
                     "was unavailable (endpoint down, budget spent, or decisions refused by the gate).")
    return lines


def budget_text(data: ReportData) -> str:
    caps = next((dig(r.config, "budget") for r in reversed(data.runs) if dig(r.config, "budget")), None) or {}
    set_caps = ", ".join(f"{k} {v}" for k, v in caps.items() if v is not None) or "no caps recorded"
    minutes = sum(r.metrics.walltime_minutes for r in data.runs if r.metrics)
    return f"{set_caps}; {minutes:.1f} training minutes in all"


def machine_text(data: ReportData) -> str:
    devs = devices(data)
    versions = next((r.metrics.versions for r in data.runs if r.metrics and r.metrics.versions), {})
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
    gate_refused = sum(1 for c in data.cycles if c.quality_gate and not c.quality_gate.ok)
    policy_refused = sum(1 for c in data.cycles if c.policy and not c.policy.allowed)
    actions = Counter(c.decision.action for c in data.cycles if c.decision)
    lines.append("- Actions: " + (", ".join(f"{a} {n}" for a, n in actions.most_common()) or "none") + ".")
    lines.append(f"- Gates: {gate_refused} decisions refused by the quality gate, "
                 f"{policy_refused} commands refused by the command policy.")
    promos = [c.promotion for c in data.cycles if c.promotion is not None]
    statuses = Counter(str(p.status or "error").split(" ")[0] for p in promos)
    windows = [c for c in data.cycles if c.evolution is not None and c.evolution.gen_id is not None]
    lines.append(f"- Promotion pipeline: {plural(len(promos), 'hand-off')} ("
                 + (", ".join(f"{s} {n}" for s, n in statuses.most_common()) or "none")
                 + f"), {plural(sum(bool(p.proposed) for p in promos), 'proposal')}, "
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
        lines += [f"Best validation accuracy: **{interval_text(best)}** (95% interval), {run_ref(best)}, dimension "
                  f"{best.dimension or '-'}, fidelity {best.fidelity:.2f}.", ""]
        lines += noise_lines(data)
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


def noise_lines(data: ReportData) -> list[str]:
    """The noise band, the verdicts, and the kept improvements inside the noise (the target is 0)."""
    verdicts = Counter(r.verdict for r in data.runs if r.verdict)
    noisy = inside_noise(data.runs)
    text = (f"Noise: {noise_text(data.runs)} Verdicts: "
            + (", ".join(f"{n} {v}" for v, n in verdicts.most_common()) or "none recorded") + ". "
            f"Kept improvements inside the noise band known now: **{len(noisy)}** (target 0)"
            + (f": {', '.join(f'`{r.label}`' for r in noisy)}" if noisy else "") + ".")
    return [text, ""]


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
    for c in reviews:
        m = c.mentor
        run = run_launched_in(data, c)
        outcome = f"`{run.label}` {run.status} {acc(run.score) if run.ok else ''}" if run else "no run"
        rows.append([c.cycle, f"`{c.trace}`", m.verdict, m.critical_question,
                     "yes" if m.challenge_applied else "no",
                     decision_text(m.challenge) if m.challenge else "-", outcome])
    return lines + table(["cycle", "trace", "verdict", "question", "challenge applied", "challenge",
                          "outcome of the cycle's run"], rows)


def failures_section(data: ReportData) -> list[str]:
    lines = ["## Failures and repairs", ""]
    fails, fixes = failures(data), repairs(data)
    if not fails:
        lines.append("No run failed.")
    else:
        rows = [[c.cycle, f"`{c.trace}`", f"`{o.label}`", o.kind, o.status, o.exit_code, o.error]
                for o, c in fails]
        lines += table(["cycle", "trace", "label", "kind", "status", "exit code", "error"], rows)
    lines.append("")
    if not fixes:
        return lines + ["No auto-repair was attempted."]
    for c in fixes:
        fix = c.auto_repair
        lines.append(f"- Cycle {c.cycle} `{c.trace}`: auto-repair {'applied' if fix.applied else 'not applied'}"
                     + (f" ({fix.reason})" if fix.reason else "") + ".")
        lines += [f"  - {action_text(a)}" for a in fix.actions]
        lines.append(f"  - Retry: {outcome_text(c.run_outcome_retry)}")
    return lines


def limitations(data: ReportData) -> list[str]:
    lines = ["## Limitations", ""]
    items = [limit_leak(data), limit_seeds(data), limit_val_set(data), limit_policy(data), limit_machine(data),
             limit_groups(data), limit_missing(data), limit_skipped(data), limit_open(data)]
    items = [i for i in items if i]
    return lines + ([f"- {i}" for i in items] or ["- Nothing was run, so nothing can be concluded yet."])


def limit_leak(data: ReportData) -> str:
    r = data.data_report
    return (f"Data leak: {r.leak_text()}; the scores on those sets are optimistic." if r and r.leaks else "")


def limit_seeds(data: ReportData) -> str:
    if not data.runs:
        return "No runs: nothing can be concluded yet."
    seeds = ", ".join(map(str, sorted({r.key()["seed"] for r in data.runs if r.key()["seed"] is not None})))
    spread = pooled_seed_spread(seed_groups(data.runs))
    if spread is None:
        return (f"One seed per configuration (seeds used: {seeds or 'unknown'}): the seed spread was not measured, "
                "so differences of a few tenths of a point between runs may be noise.")
    replicated = len(seed_groups(data.runs))
    return (f"Seed spread measured on {replicated} configuration(s) run with several seeds: pooled sd "
            f"{spread[0]:.4f} ({spread[1]} degree(s) of freedom; seeds used: {seeds}). Every other configuration "
            "ran with one seed; its score carries that spread unmeasured.")


def limit_val_set(data: ReportData) -> str:
    n = val_count(data)
    if not data.runs:
        return ""
    base = "Runs were selected on the same validation set they are scored on (no held-out test set), " \
           "so the best score is optimistic"
    return f"{base}; with {n} validation images one image is {100 / n:.2f} points." if n else base + "."


def limit_policy(data: ReportData) -> str:
    who = deciders(data)
    if who.who == "offline":
        return "Decisions came from the offline policy, not an LLM: this shows the loop, not an LLM's research."
    if who.who == "mix":
        return (f"{who.by_offline} of {who.by_offline + who.by_llm} decisions came from the offline policy, not "
                "the LLM: credit the results to both.")
    failed = who.llm_failed
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


def limit_skipped(data: ReportData) -> str:
    n = data.skipped_cycles
    if not n:
        return ""
    return (f"{plural(n, 'cycle event')} in events.jsonl did not read as a cycle record (an old or foreign "
            f"file) and {'was' if n == 1 else 'were'} skipped: this report leaves {'it' if n == 1 else 'them'} out.")


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
