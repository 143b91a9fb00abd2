"""The Starlette app: the page, its JSON endpoints, and the token-guarded actions.

  GET  /                      the page (first paint rendered here; page.js polls the rest)
  GET  /api/status            `llmloop status` as JSON, with log and storyline tails
  GET  /api/runs              every run (label, cycle, score, ok, dimension, trace), the best so far, the chart
  GET  /api/events            ?after=<byte offset>&trace=<id>&limit=N: only the records after the offset
  GET  /api/leaderboard       the report's top-k entries
  GET  /api/run               ?label=L: one run's key config, metrics and per-epoch curves (SVG)
  GET  /api/cycles            ?last=N: the last cycles, each with its decision, gate, outcome, repair, review
  GET  /api/header            where the numbers come from: machine, wall clock, seeds, compute, tokens, who
                              decided, the selection split (the paper report's header)
  POST /api/action/{name}     promote_approve | promote_reject | finishup_request | finishup_cancel | stop,
                              only with `Authorization: Bearer <token>` (or a `token` form field); else 403

Nothing here serves a file by name, so the credentials file (or any other) cannot be asked for."""
from __future__ import annotations

import json
import secrets as pysecrets
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from loop.dashboard.actions import ACTIONS, run_action
from loop.dashboard.page import render_page
from loop.dashboard.views import Dashboard, DashboardSettings

MAX_EVENTS_LIMIT = 5000
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def json_response(payload, status_code: int = 200) -> Response:
    return Response(json.dumps(payload, default=str), status_code=status_code, media_type="application/json",
                    headers=HEADERS)


def int_param(request: Request, name: str, default: int | None) -> int | None:
    try:
        return int(request.query_params[name])
    except (KeyError, ValueError):
        return default


def form_of(body: bytes) -> dict[str, str]:
    """An urlencoded body read by hand (Starlette's form parser needs python-multipart)."""
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        return {}


def token_given(request: Request, form: dict[str, str]) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return form.get("token", "")


def warm_up(dash: Dashboard) -> str | None:
    """The first read at start, not on the first page load: status imports the LLM client's modules
    (about 0.7 s) and the records of a long night are parsed once. None, or why it failed (the
    endpoints then answer with the same error when asked)."""
    try:
        dash.status()
        dash.leaderboard()
        dash.cycles(30)
        dash.header()
    except Exception as exc:      # an unreadable workspace must not keep the server from starting
        return f"{type(exc).__name__}: {exc}"
    return None


def create_app(settings: DashboardSettings, warm: bool = False, say=print) -> Starlette:
    dash = Dashboard(settings)
    if warm and (problem := warm_up(dash)):
        say(f"warning: the first read of {settings.ws.root} failed ({dash.scrub(problem)})")

    def page(request: Request) -> HTMLResponse:
        # Built from the views' scrubbed payloads only (a pattern run over the finished page would
        # also hit its own script, e.g. the Authorization header the actions send).
        return HTMLResponse(render_page(dash), headers=HEADERS)

    def status(request: Request) -> Response:
        return json_response(dash.status())

    def runs(request: Request) -> Response:
        return json_response(dash.runs())

    def leaderboard(request: Request) -> Response:
        return json_response(dash.leaderboard())

    def events(request: Request) -> Response:
        limit = min(max(1, int_param(request, "limit", 500) or 500), MAX_EVENTS_LIMIT)
        after = int_param(request, "after", None)
        return json_response(dash.events(after, request.query_params.get("trace"), limit))

    def cycles(request: Request) -> Response:
        return json_response(dash.cycles(min(max(1, int_param(request, "last", 30) or 30), 200)))

    def header(request: Request) -> Response:
        return json_response(dash.header())

    def run(request: Request) -> Response:
        detail = dash.run(request.query_params.get("label", ""))
        return json_response(detail if detail else {"message": "no such run"}, 200 if detail else 404)

    async def action(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ACTIONS:
            return json_response({"ok": False, "message": f"no action {name!r}; one of {', '.join(ACTIONS)}"}, 404)
        form = form_of(await request.body())
        given = token_given(request, form)
        if not given or not pysecrets.compare_digest(given.encode(), settings.token.encode()):
            return json_response({"ok": False, "action": name,
                                  "message": "refused: actions need the dashboard's token (printed at start, "
                                             "and in its 0600 token file); the page is read-only without it"}, 403)
        # The pipeline's functions block (hashing, torch for a promotion): off the event loop.
        result = await run_in_threadpool(run_action, name, settings.cfg, settings.ws, form)
        dash.invalidate()
        return json_response(dash.scrub({"ok": result.ok, "action": result.action, "message": result.message,
                                         "record": result.record}), 200 if result.ok else 409)

    # Host header check: a page elsewhere that re-points its own name at 127.0.0.1 (DNS rebinding)
    # cannot read the dashboard through the browser.
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts or ["*"])
    return Starlette(middleware=[hosts], max_body_size=1 << 16, routes=[
        Route("/", page), Route("/api/status", status), Route("/api/runs", runs),
        Route("/api/events", events), Route("/api/leaderboard", leaderboard), Route("/api/cycles", cycles),
        Route("/api/run", run), Route("/api/header", header),
        Route("/api/action/{name}", action, methods=["POST"]),
    ])
