"""Finish-up's last step, called by the daemon once the cycle that reached the deadline is recorded:
when the request says `reporting`, write the final reports, mark the request done and record a
`final_reports` event with their paths (what notifications and the dashboard read)."""
from __future__ import annotations

from loop.cycle import finishup
from loop.journal.events import EventLog
from loop.report.generate import generate_reports
from loop.util.workspace import Workspace

FINISHED = "finish-up complete: final reports written"


def write_final_reports(ws: Workspace, events: EventLog, cycle: int) -> dict[str, str] | None:
    """The final reports when finish-up asked for them; their paths, or None when none were due. A
    crash before the request is marked done leaves it `reporting`: the next cycle asks again."""
    request = finishup.load(ws.finish_up)
    if request is None or request.status != "reporting":
        return None
    paths = generate_reports(ws.root, request.top_k, request.note, progress=False)
    request.status, request.reports = "done", {name: str(path) for name, path in paths.items()}
    finishup.save(ws.finish_up, request)
    events.append("final_reports", f"report-{cycle:05d}", cycle=cycle, reports=request.reports)
    return request.reports
