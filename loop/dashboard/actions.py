"""The page's actions, each through the same function its CLI command calls (loop/cli/pipeline.py
`promote`, loop/cli/daemon.py `finishup` and `stop`), so a click and a command cannot drift apart.
The token check is the app's (app.py); these run only after it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable

from loop.config import DaemonConfig
from loop.errors import LoopError
from loop.util.workspace import Workspace

ACTIONS = ("promote_approve", "promote_reject", "finishup_request", "finishup_cancel", "stop")


@dataclass
class ActionResult:
    ok: bool
    action: str
    message: str
    record: dict = field(default_factory=dict)


def promote_approve(cfg: DaemonConfig, ws: Workspace, params: dict, trace: str) -> ActionResult:
    from loop.archive import promotion

    record = promotion.approve(cfg, ws.root, trace, say=lambda *_: None)
    promoted = record["action"] == "PROMOTED"
    message = (f"PROMOTED: {record.get('from')} -> {record.get('to')}" if promoted
               else f"{record['action']}: GEN_HEAD stays {record.get('head')}: {record.get('reason')}")
    return ActionResult(promoted, "promote_approve", message, record)


def promote_reject(cfg: DaemonConfig, ws: Workspace, params: dict, trace: str) -> ActionResult:
    from loop.archive import headswitch

    record = headswitch.reject(ws.root, str(params.get("note", "")), trace)
    return ActionResult(True, "promote_reject", f"rejected {record['candidate']}", record)


def finishup_request(cfg: DaemonConfig, ws: Workspace, params: dict, trace: str) -> ActionResult:
    """`llmloop finishup --minutes-left M [--note N]`: active now, deadline in M minutes (default 60)."""
    from loop.cycle import finishup

    minutes = float(params.get("minutes_left") or 60)
    now = finishup.now_utc()
    ws.ensure()
    request = finishup.schedule(now, minutes_left=minutes, note=str(params.get("note", "")),
                                top_k=int(params.get("top_k") or 10),
                                final_training_rounds=int(params.get("final_training_rounds") or 1))
    finishup.save(ws.finish_up, request)
    return ActionResult(True, "finishup_request", finishup.describe(request, now), request.model_dump())


def finishup_cancel(cfg: DaemonConfig, ws: Workspace, params: dict, trace: str) -> ActionResult:
    from loop.cycle import finishup

    request = finishup.cancel(ws.finish_up)
    return ActionResult(True, "finishup_cancel", f"finish-up cancelled (was due {request.deadline_utc})",
                        request.model_dump())


def stop(cfg: DaemonConfig, ws: Workspace, params: dict, trace: str) -> ActionResult:
    """`llmloop stop`: the stop file and SIGTERM; the daemon exits after its current cycle."""
    from loop.daemon import process as daemon

    if daemon.running_pid(ws) is None:
        return ActionResult(True, "stop", "llmloop is not running")
    from loop.daemon.control import request_stop

    stopped = request_stop(ws, 0)
    return ActionResult(True, "stop", "llmloop stopped" if stopped
                        else "stop requested: the daemon exits after its current cycle")


HANDLERS: dict[str, Callable[[DaemonConfig, Workspace, dict, str], ActionResult]] = {
    "promote_approve": promote_approve, "promote_reject": promote_reject, "finishup_request": finishup_request,
    "finishup_cancel": finishup_cancel, "stop": stop}


def run_action(name: str, cfg: DaemonConfig, ws: Workspace, params: dict) -> ActionResult:
    """The action `name`; a refusal of the pipeline (no proposal, nothing to cancel, a bad value)
    comes back as ok=False with its message, as the CLI prints it."""
    trace = f"dashboard-{uuid.uuid4().hex[:8]}"
    try:
        return HANDLERS[name](cfg, ws, params, trace)
    except (LoopError, ValueError) as exc:
        return ActionResult(False, name, str(exc))
