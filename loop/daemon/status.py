"""`llmloop status` and `llmloop watch`: what the loop is doing, at a glance.

The seed's caveat is handled: the heartbeat is written after a cycle returns, and a cycle may
watch a long run, so an old heartbeat with an active run whose log is still growing reads as
alive, not stuck."""
from __future__ import annotations

import json
import time
from pathlib import Path

from loop.archive.paths import ModelPaths
from loop.config import DaemonConfig
from loop.cycle import finishup
from loop.cycle.state import LoopState
from loop.journal.events import EventLog
from loop.journal.notes import todo_summary
from loop.util.fsutil import read_regular_bytes
from loop.util.workspace import Workspace

LOG_FRESH_SECONDS = 120


def last_progress_line(log_path: Path) -> str:
    try:          # a run's log is the run's to replace: never read through a link
        lines = read_regular_bytes(log_path, tail=8192).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if any(word in line for word in ("epoch", "progress", "done:")):
            return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


def daemon_liveness(ws: Workspace) -> tuple[int | None, str]:
    """(pid, why) — running, stopped cleanly (and why), or crashed (a stale pid file)."""
    from loop.daemon.process import running_pid

    pid = running_pid(ws)
    if pid is not None:
        return pid, "running"
    if ws.pid.exists():
        return None, f"crashed: stale pid file ({ws.pid.read_text().strip()}), no daemon holds the lock"
    stops = EventLog(ws.events).tail(1, kind="daemon_stop")
    return None, f"stopped: {stops[0]['reason']}" if stops else "stopped: never started here"


def leaderboard(ws: Workspace, n: int = 3) -> list[dict]:
    from loop.journal.history import read_history

    runs = sorted((r for r in read_history(ws) if r.ok), key=lambda r: r.score, reverse=True)[:n]
    return [{"label": r.label, "val_accuracy": round(r.score, 4), "cycle": r.cycle,
             "model": r.config.get("model", {}).get("name")} for r in runs]


def llm_or_offline(role, ws: Workspace) -> str:
    """'LLM <model> at <url> (mode json_object_schema)' or 'offline policy'."""
    from loop.agents.formats import ModeStore

    if not role.base_url:
        return "offline policy"
    mode = role.structured_output
    if mode == "auto":
        mode = ModeStore(ws.llm_modes).get(role.base_url, role.model) or "auto, not negotiated yet"
    return f"LLM {role.model} at {role.base_url} (mode {mode}; when unavailable: {role.when_unavailable})"


def llm_budget_line(cfg: DaemonConfig, ws: Workspace, tokens: dict) -> str | None:
    """The budget's state this run of the daemon, from the last `llm_budget_spent` event since start."""
    caps = cfg.llm_budget
    if caps.max_cost is None and caps.max_tokens is None:
        return None
    log = EventLog(ws.events)
    start = log.tail(1, kind="daemon_start")
    spent = log.tail(1, kind="llm_budget_spent")
    if spent and (not start or spent[0].get("ts", "") >= start[0].get("ts", "")):
        return f"LLM budget: SPENT ({spent[0].get('reason')}); no LLM calls until the daemon restarts"
    limits = [f"max_cost {caps.max_cost}" if caps.max_cost is not None else "",
              f"max_tokens {caps.max_tokens}" if caps.max_tokens is not None else ""]
    return "LLM budget per daemon start: " + ", ".join(x for x in limits if x)


def pending_proposal(models: ModelPaths) -> str | None:
    """The entry PROMOTION_PROPOSAL.json proposes. The promotion module (torch) is imported only
    when a proposal is pending, so `status` stays quick the rest of the time."""
    if not models.proposal.exists():
        return None
    from loop.archive.proposal import read_proposal

    proposal = read_proposal(models)
    return proposal.proposed_head if proposal else None


def disk_wait(ws: Workspace) -> str | None:
    """Why the daemon waits, when its last disk event is `disk_low` (loop/retention/disk.py), else None."""
    from loop.retention.disk import DISK_LOW, DiskLow, last_disk_event

    last = last_disk_event(EventLog(ws.events))
    if not last or last.get("kind") != DISK_LOW:
        return None
    try:
        return DiskLow.model_validate({k: last.get(k) for k in DiskLow.model_fields}).text()
    except ValueError:                     # a hand-edited event: the wait stands, its figures do not
        return "disk low (see the last disk_low event in events.jsonl)"


def status_info(cfg: DaemonConfig, ws: Workspace) -> dict:
    from loop.daemon.process import builder_role, mentor_role

    state = LoopState.load(ws.state)
    pid, why = daemon_liveness(ws)
    now = time.time()
    try:
        heartbeat_age = round(now - json.loads(ws.heartbeat.read_text())["ts"], 1)
    except (OSError, ValueError, KeyError):
        heartbeat_age = None
    runs = []
    for run in state.active_runs:
        log_age = now - Path(run.log_path).stat().st_mtime if Path(run.log_path).exists() else None
        runs.append({"label": run.label, "pid": run.pid, "elapsed_seconds": round(now - run.started_at),
                     "log": run.log_path, "log_age_seconds": None if log_age is None else round(log_age, 1),
                     "last_progress": last_progress_line(Path(run.log_path)),
                     "device": run.device or "-", "executor": run.executor})
    active = runs[0] if runs else None
    # A long monitor window leaves the heartbeat old while training is fine: trust a growing log.
    alive = pid is not None and (heartbeat_age is None or heartbeat_age < cfg.max_monitor_seconds + 60
                                 or any(r["log_age_seconds"] is not None and r["log_age_seconds"] < LOG_FRESH_SECONDS
                                        for r in runs))
    models = ModelPaths(ws.root)
    request = finishup.load(ws.finish_up) if ws.finish_up.exists() else None
    open_todos, _ = todo_summary(ws.todo)
    return {
        "running": pid is not None, "pid": pid, "why": why, "alive": alive,
        "cycle": state.cycle, "heartbeat_age_seconds": heartbeat_age, "active_run": active,
        "active_runs": runs, "max_concurrent_runs": cfg.max_concurrent_runs,
        "last_decision": state.last_decision,
        "last_outcome": state.last_outcome.model_dump() if state.last_outcome else None,
        "blocked": ({**state.blocked.model_dump(mode="json"), "text": state.blocked.text()}
                    if state.blocked else None),
        "disk_low": disk_wait(ws) if pid is not None else None,
        "leaderboard_top3": leaderboard(ws), "gen_head": models.head_name(),
        "proposal_pending": pending_proposal(models),
        "finish_up": None if request is None else {
            "status": request.status, "deadline_utc": request.deadline_utc,
            "minutes_left": round(request.minutes_to_deadline(finishup.now_utc()), 1),
            "text": finishup.describe(request, finishup.now_utc())},
        "open_todos": open_todos, "tokens": {k: v.model_dump() for k, v in state.tokens.items()},
        "cost_per_cycle": round(sum(v.cost for v in state.tokens.values()) / state.cycle, 6) if state.cycle else 0.0,
        "llm_budget": llm_budget_line(cfg, ws, state.tokens),
        "builder": llm_or_offline(builder_role(cfg), ws),
        "mentor": llm_or_offline(mentor_role(cfg), ws),
    }


def render(info: dict) -> str:
    state = f"RUNNING (pid {info['pid']})" if info["running"] else info["why"]
    if info["running"] and not info["alive"]:
        state += " - heartbeat stale and no log progress: check logs/daemon.log"
    age = info["heartbeat_age_seconds"]
    lines = [f"llmloop: {state}"]
    if info.get("disk_low"):
        lines.append(f"WAITING: {info['disk_low']}; free space, or lower retention.min_free_gb")
    if info.get("blocked"):           # first, so it is the line nobody misses
        lines.append(f"{info['blocked']['text']} - `llmloop unblock` clears it once the cause is fixed")
    lines.append(f"cycle {info['cycle']}; heartbeat {'-' if age is None else f'{age:.0f}s ago'}; "
                 f"Builder: {info['builder']}; Mentor: {info['mentor']}")
    runs = info.get("active_runs") or ([info["active_run"]] if info["active_run"] else [])
    if not runs:
        lines.append("active run: none")
    for run in runs:
        head = "active run" if len(runs) == 1 else f"active run {runs.index(run) + 1}/{len(runs)}"
        lines.append(f"{head}: {run['label']} (pid {run['pid']}, {run['elapsed_seconds']}s, "
                     f"{run.get('device', '-')} via {run.get('executor', 'local')}) log {run['log']}")
        if run["last_progress"]:
            lines.append(f"  {run['last_progress']}")
    d = info["last_decision"]
    if d:
        lines.append(f"last decision: {d.get('action')} `{d.get('label')}` from {d.get('source')}; "
                     f"quality gate {'passed' if d.get('gate_ok') else 'downgraded it'}")
    o = info["last_outcome"]
    if o:
        acc = o.get("val_accuracy")
        sig = o.get("signature")
        lines.append(f"last outcome: {o.get('label')} {o.get('status')}" + (f" val_acc {acc:.4f}" if acc else "")
                     + (f" ({sig['exc_type']}: {sig['message']} [{sig['key']}], {sig['category']})" if sig else ""))
    board = info["leaderboard_top3"]
    lines.append("leaderboard: " + ("; ".join(f"{r['label']} {r['val_accuracy']:.4f}" for r in board)
                                    if board else "no runs yet"))
    lines.append(f"GEN_HEAD: {info['gen_head'] or 'none'}; proposal pending: {info['proposal_pending'] or 'no'}")
    lines.append(info["finish_up"]["text"] if info["finish_up"] else "finish-up: not requested")
    lines.append(f"open TODOs: {info['open_todos']}")
    lines.extend(token_lines(info))
    return "\n".join(lines)


def token_lines(info: dict) -> list[str]:
    """LLM spend per role, the cost so far and per cycle, and the budget's state."""
    from loop.agents.usage import Usage

    roles = {role: Usage.model_validate(tokens) for role, tokens in info["tokens"].items()}
    total = Usage()
    for usage in roles.values():
        total.add(usage)
    lines = ["tokens: " + "; ".join(f"{role} {usage.describe()}" for role, usage in roles.items())]
    if total.cost:
        lines.append(f"LLM cost so far: {total.cost:.4f} ({info['cost_per_cycle']:.4f} per cycle)")
    if info.get("llm_budget"):
        lines.append(info["llm_budget"])
    return lines


def watch(cfg: DaemonConfig, ws: Workspace, interval_seconds: float, once: bool) -> int:
    """Refresh the status in place (rich Live on a terminal; plain blocks otherwise)."""
    import sys

    from rich.live import Live
    from rich.text import Text

    if once or not sys.stdout.isatty():
        while True:
            print(render(status_info(cfg, ws)), flush=True)
            if once:
                return 0
            time.sleep(interval_seconds)
            print()
    with Live(Text(render(status_info(cfg, ws))), refresh_per_second=1, screen=True) as live:
        try:
            while True:
                time.sleep(interval_seconds)
                live.update(Text(render(status_info(cfg, ws))
                                 + f"\n\n(refresh every {interval_seconds:g}s; Ctrl-C to quit)"))
        except KeyboardInterrupt:
            return 0
