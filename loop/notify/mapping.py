"""What is worth telling someone, read off the event log: `notifications(event)` maps one
events.jsonl record to the notifications it means (most to none). Pure: no clock, no I/O, so the
mapping is tested on its own and the notifier (loop/notify/notifier.py) only delivers.

  new_best        a `cycle` event's keep with verdict first | gain (score, margin, noise band)
  blocked         a `blocked` event (the failure signature, how often, the next try)
  run_stalled     a run outcome with status stalled (no output for run_stall_minutes)
  run_timed_out   a run outcome with status timed_out (its walltime cap)
  disk_low        a `disk_low` event (free_gb under min_free_gb on path); disk_ok when it is back
  budget_spent    an `llm_budget_spent` event (no more LLM calls this daemon start)
  report_written  the `final_reports` event: finish-up's reports are written (their paths)
  crash_restart   a `daemon_start` event with after_crash (what recovery did)
"""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from loop.config.load import StrictModel
from loop.config.sections import NotifyEvent
from loop.cycle.failures import Blocked
from loop.cycle.record import CycleRecord, KeepEntry
from loop.run.judge import RunOutcome

Level = Literal["info", "success", "warning", "failure"]      # apprise's notify types
STUCK = {"stalled": "run_stalled", "timed_out": "run_timed_out"}
REPORT_ORDER = ("paper", "story", "leaderboard")               # the paper report first, when there is one


class Notification(StrictModel):
    """One message to send: which notify event, how urgent, a title and a body."""

    event: NotifyEvent
    level: Level
    title: str
    body: str
    trace: str = ""                    # the cycle_trace_id of the record it came from


def notifications(event: dict) -> list[Notification]:
    """The notifications one events.jsonl record means ([] for most records, and for one that does
    not read as its kind's model: the event log is the record, a notification is a courtesy)."""
    make = MAPPERS.get(str(event.get("kind")))
    if make is None:
        return []
    fields = {k: v for k, v in event.items() if k not in ("ts", "kind", "cycle_trace_id")}
    try:
        found = make(fields)
    except (ValidationError, KeyError, TypeError, ValueError):
        return []
    trace = str(event.get("cycle_trace_id", ""))
    return [n.model_copy(update={"trace": trace}) for n in found]


# ---- the cycle event: new bests, stuck runs, the report ----

def from_cycle(fields: dict) -> list[Notification]:
    rec = CycleRecord.from_event(fields)
    found = [new_best(rec.cycle, keep) for keep in rec.keeps if keep.verdict in ("first", "gain")]
    found += [stuck_run(rec.cycle, outcome) for outcome in outcomes(rec) if outcome.status in STUCK]
    return found


def from_final_reports(fields: dict) -> list[Notification]:
    """The `final_reports` event the daemon writes after finish-up's last cycle."""
    return [report_written(int(fields.get("cycle", 0)), dict(fields.get("reports") or {}))]


def outcomes(rec: CycleRecord) -> list[RunOutcome]:
    """Every run outcome the cycle recorded, each run once (followed_run repeats followed_runs[0])."""
    seen, found = set(), []
    for outcome in [*rec.followed_runs, rec.followed_run, rec.run_outcome, rec.run_outcome_retry]:
        if outcome is not None and (outcome.label, outcome.status) not in seen:
            seen.add((outcome.label, outcome.status))
            found.append(outcome)
    return found


def new_best(cycle: int, keep: KeepEntry) -> Notification:
    if keep.verdict == "first":
        why = "the first full-fidelity result: the best so far"
    else:
        why = f"{keep.margin:+.4f} over the previous best, outside the noise band of {keep.band:.4f}"
    interval = (f"; interval {keep.score - keep.band:.4f} .. {keep.score + keep.band:.4f}"
                if keep.band else "")
    body = (f"{keep.label} scored {keep.score:.4f} (fidelity {keep.fidelity:.2f}) in cycle {cycle}: "
            f"{why}{interval}." + (f"\nTest: {keep.test}" if keep.test else ""))
    return Notification(event="new_best", level="success", title=f"new best {keep.score:.4f}: {keep.label}",
                        body=body)


def stuck_run(cycle: int, outcome: RunOutcome) -> Notification:
    what = "stalled (no output for too long) and was killed" if outcome.status == "stalled" else \
        "timed out (its walltime cap) and was killed"
    lines = [f"Run {outcome.label} {what} after {outcome.seconds / 60:.1f} min (cycle {cycle})."]
    lines += [f"Error: {outcome.error}"] if outcome.error else []
    lines += [f"Signature: {outcome.signature.text()}"] if outcome.signature else []
    lines += [f"Log: {outcome.log_path}"] if outcome.log_path else []
    return Notification(event=STUCK[outcome.status], level="warning",
                        title=f"run {outcome.status.replace('_', ' ')}: {outcome.label}", body="\n".join(lines))


def report_written(cycle: int, reports: dict[str, str]) -> Notification:
    ordered = sorted(reports.items(), key=lambda kv: next((i for i, w in enumerate(REPORT_ORDER) if w in kv[0]),
                                                          len(REPORT_ORDER)))
    body = f"Finish-up wrote the final reports in cycle {cycle}:\n" + "\n".join(f"{k}: {v}" for k, v in ordered)
    return Notification(event="report_written", level="success", title=f"report written: {ordered[0][1]}",
                        body=body)


# ---- the other records ----

def from_blocked(fields: dict) -> list[Notification]:
    blocked = Blocked.model_validate(fields)
    sig = blocked.signature
    body = (f"{blocked.text()}.\nSignature {sig.key} ({sig.category}): {sig.exc_type}"
            + (f": {sig.message}" if sig.message else "") + (f" @ {sig.frame}" if sig.frame else "")
            + ".\nThe daemon proposes none of these configurations again and tries something else after its "
              "back-off; `llmloop unblock` clears it.")
    return [Notification(event="blocked", level="failure", title=f"BLOCKED on {sig.exc_type} [{sig.key}]",
                         body=body)]


def from_disk_low(fields: dict) -> list[Notification]:
    free, floor, path = float(fields["free_gb"]), float(fields["min_free_gb"]), fields["path"]
    return [Notification(event="disk_low", level="failure", title=f"disk low: {free:.1f} GB free on {path}",
                         body=f"{free:.2f} GB free on {path}, under min_free_gb {floor:g}: the daemon starts no new "
                              "run until space is back.")]


def from_disk_ok(fields: dict) -> list[Notification]:
    free, path = fields.get("free_gb"), fields.get("path", "the workspace")
    space = f"{float(free):.1f} GB free" if free is not None else "space is back"
    return [Notification(event="disk_ok", level="info", title=f"disk ok: {space} on {path}",
                         body=f"{space} on {path}: runs start again.")]


def from_budget(fields: dict) -> list[Notification]:
    caps = ", ".join(f"{k} {fields[k]}" for k in ("max_cost", "max_tokens") if fields.get(k) is not None)
    return [Notification(event="budget_spent", level="warning", title="LLM budget spent",
                         body=f"{fields['reason']}" + (f" (llm_budget: {caps})" if caps else "") +
                              ". No more LLM calls this daemon start; the offline policy or a wait takes over "
                              "(when_unavailable).")]


def from_daemon_start(fields: dict) -> list[Notification]:
    if not fields.get("after_crash"):
        return []
    recovery, reaped = fields.get("recovery") or {}, fields.get("reaped") or {}
    done = [f"{k.replace('_', ' ')}: {v if not isinstance(v, list) else len(v)}"
            for k, v in recovery.items() if v not in (None, False, [], 0, {})]
    done += [f"leftover processes killed: {len(reaped['killed'])}"] if reaped.get("killed") else []
    runs = fields.get("active_runs") or []
    lines = [f"The daemon (pid {fields.get('pid')}) started after a crash: the last start had no clean stop. "
             f"Resuming at cycle {fields.get('resume_cycle')}."]
    lines += [f"Runs re-adopted: {', '.join(reaped.get('adopted_runs') or []) or 'none'} of {', '.join(runs)}"] \
        if runs else []
    lines += ["Recovery: " + "; ".join(done)] if done else ["Recovery: nothing to repair."]
    return [Notification(event="crash_restart", level="warning", title="daemon restarted after a crash",
                         body="\n".join(lines))]


MAPPERS = {"cycle": from_cycle, "final_reports": from_final_reports, "blocked": from_blocked,
           "disk_low": from_disk_low, "disk_ok": from_disk_ok, "llm_budget_spent": from_budget,
           "daemon_start": from_daemon_start}
