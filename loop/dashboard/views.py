"""The JSON payloads the page polls, each already scrubbed of secrets: status (the same
`status_info` as `llmloop status`, plus log and storyline tails and the proposal's gates), the runs
and the chart, the leaderboard (the report's own entries), and the events read from a byte offset."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from loop.config import DaemonConfig
from loop.cycle.record import CycleRecord
from loop.dashboard.chart import svg_chart, svg_curves
from loop.dashboard.data import (
    RunPoint,
    RunsView,
    WorkspaceReader,
    inside,
    log_tail,
    read_events,
    runs_view,
    scrub,
    storyline_tail,
)
from loop.report.data import ReportData
from loop.report.header import night_header
from loop.report.leaderboard import leaderboard_entries, metrics_summary
from loop.util.secrets import known_secrets, looks_secret, url_secrets
from loop.util.workspace import Workspace


@dataclass
class DashboardSettings:
    cfg: DaemonConfig
    ws: Workspace
    token: str                       # the actions' bearer token (generated at start)
    secrets: list[str] = field(default_factory=list)   # values never served (API keys, the token)
    poll_seconds: float = 3.0
    top_k: int = 10
    allowed_hosts: list[str] = field(default_factory=list)   # Host headers served (empty: any)


def collect_secrets(cfg: DaemonConfig, token: str) -> list[str]:
    """What build_loop redacts (secret-looking environment values, the notification URLs' secret
    parts, each role's API key), every secret-named value of the credentials file, and the
    dashboard's own token."""
    from loop.agents.credentials import resolve_api_key

    found = known_secrets() + url_secrets(cfg.notify.all_urls()) + [token]
    found += [k for k in (resolve_api_key(cfg.builder, cfg.credentials_file),
                          resolve_api_key(cfg.mentor, cfg.credentials_file)) if k]
    try:
        stored = json.loads(Path(cfg.credentials_file).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if isinstance(stored, dict):
        found += [v for k, v in stored.items() if isinstance(v, str) and looks_secret(k) and v.strip()]
    return sorted(set(found))


CYCLES_KEPT = 200            # the cycles view keeps the last ones (the events feed has the rest)
CYCLE_PARTS = ("decision", "quality_gate", "policy", "run", "run_outcome", "auto_repair", "run_outcome_retry",
               "followed_runs", "mentor", "promotion", "evolution", "finish_up", "llm_error", "llm_fallback")
STATUS_TTL_SECONDS = 1.0     # several tabs polling share one status read (it briefly takes the daemon's lock)


class Dashboard:
    def __init__(self, settings: DashboardSettings):
        self.settings = settings
        self.reader = WorkspaceReader(settings.ws, settings.top_k)
        self._status: tuple[float, dict] | None = None

    def invalidate(self) -> None:
        """After an action: the next status is read afresh."""
        self._status = None

    def scrub(self, obj):
        return scrub(obj, self.settings.secrets)

    def data(self) -> ReportData:
        return self.reader.data()

    def status(self) -> dict:
        cached = self._status
        if cached is not None and time.monotonic() - cached[0] < STATUS_TTL_SECONDS:
            return cached[1]
        info = self._read_status()
        self._status = (time.monotonic(), info)
        return info

    def _read_status(self) -> dict:
        from loop.daemon.status import status_info

        ws = self.settings.ws
        info = status_info(self.settings.cfg, ws)
        for run in info["active_runs"]:       # active_run is the first of these (the same dict)
            if not inside(Path(run["log"]), ws.root):
                run["last_progress"] = ""     # a log outside the workspace is not read for the page
            run["log_tail"] = log_tail(run["log"], ws)
        runs = self.runs()
        info.update(best_label=runs["best_label"], best_score=runs["best_score"],
                    proposal=self.data().proposal, storyline_tail=storyline_tail(ws),
                    poll_seconds=self.settings.poll_seconds, workspace=str(ws.root))
        return self.scrub(info)

    def runs(self) -> dict:
        def make(data: ReportData) -> dict:
            # scrub the records first, then draw: a pattern run over finished SVG could eat its markup
            clean = self.scrub(asdict(runs_view(data)))
            view = RunsView(**{**clean, "runs": [RunPoint(**r) for r in clean["runs"]]})
            return {**clean, "chart_svg": svg_chart(view)}

        return self.reader.view("runs", make)

    def leaderboard(self) -> dict:
        def make(data: ReportData) -> dict:
            entries = leaderboard_entries(data)
            return self.scrub({"top_k": data.top_k, "count": len(entries), "ok_runs": len(data.ok_runs),
                               "gen_head": data.head, "entries": entries,
                               "lineage_tail": data.lineage[-10:]})

        return self.reader.view("leaderboard", make)

    def header(self) -> dict:
        """Where the numbers come from: the paper report's header record, and its items as shown."""
        def make(data: ReportData) -> dict:
            found = night_header(data)
            return self.scrub({**found.model_dump(mode="json"),
                               "items": [{"key": k, "label": label, "text": text} for k, label, text in found.items()]})

        return self.reader.view("header", make)

    def cycles(self, last: int) -> dict:
        """The last cycles, each with what a reader expands: decision, gate verdict, run outcome,
        repair, Mentor review, promotion (the `cycle` event's own fields, CycleRecord's names)."""
        def make(data: ReportData) -> list[dict]:
            return self.scrub([cycle_summary(c) for c in data.cycles[-CYCLES_KEPT:]])

        rows = self.reader.view("cycles", make)
        return {"count": len(self.data().cycles), "cycles": rows[-last:]}

    def run(self, label: str) -> dict | None:
        """One run's detail: its key config, metrics summary and per-epoch curves (metrics.json)."""
        def make(data: ReportData) -> dict | None:
            found = [r for r in data.runs if r.label == label]
            if not found:
                return None
            r = found[-1]
            clean = self.scrub({"label": r.label, "cycle": r.cycle, "trace": r.trace, "ok": r.ok, "status": r.status,
                                "score": r.score, "dimension": r.dimension, "key_config": r.key(),
                                "metrics": metrics_summary(r.metrics),
                                "curve": [e.model_dump() for e in r.metrics.curve] if r.metrics else []})
            return {**clean, "curve_svg": svg_curves(clean["label"], clean["curve"])}

        return self.reader.view(f"run:{label}", make)

    def events(self, after: int | None, trace: str | None, limit: int) -> dict:
        page = read_events(self.settings.ws.events, after, trace or None, limit)
        # scrub builds new containers already: asdict's deep copy of every record first doubled the work
        return self.scrub({f.name: getattr(page, f.name) for f in fields(page)})


def cycle_summary(c: CycleRecord) -> dict:
    fields = c.event_fields()
    decision, outcome, gate = c.decision, c.run_outcome_retry or c.run_outcome or c.followed_run, c.quality_gate
    line = " ".join(x for x in (
        f"{decision.action} {decision.run_label}".strip() if decision else "no decision",
        f"(gate refused: {'; '.join(gate.reasons)[:120]})" if gate and not gate.ok else "",
        f"-> {outcome.label} {outcome.status}" if outcome else "",
        f"{outcome.val_accuracy:.4f}" if outcome and outcome.val_accuracy is not None else "",
        f"[mentor {c.mentor.verdict}]" if c.mentor and c.mentor.verdict else "") if x)
    return {"cycle": c.cycle, "trace": c.trace, "seconds": c.seconds, "summary": line,
            "parts": {k: fields[k] for k in CYCLE_PARTS if k in fields}}
