"""The one HTML page. Its first paint is rendered here, server-side (the status header with the
cycle, GEN_HEAD and the best run, the chart, the leaderboard, the storyline), so it reads right even
without JavaScript; static/page.js then polls the JSON endpoints and redraws each part. The CSS and
JS are inlined from the package: no CDN, no second request."""
from __future__ import annotations

import json
from html import escape
from importlib import resources

from loop.dashboard.views import Dashboard


def asset(name: str) -> str:
    return resources.files("loop.dashboard").joinpath("static", name).read_text(encoding="utf-8")


def state_text(status: dict) -> str:
    if status.get("running"):
        return f"RUNNING (pid {status.get('pid')})" + ("" if status.get("alive") else " - heartbeat stale")
    return str(status.get("why") or "stopped")


def header_html(status: dict) -> str:
    age = status.get("heartbeat_age_seconds")
    best = status.get("best_label")
    score = status.get("best_score")
    blocked = status.get("blocked")
    facts = [("state", state_text(status)), ("blocked", blocked["text"] if blocked else "no"),
             ("cycle", str(status.get("cycle", 0))),
             ("heartbeat", "-" if age is None else f"{age:.0f}s ago"),
             ("GEN_HEAD", status.get("gen_head") or "none"),
             ("best run", f"{best} ({score:.4f})" if best and score is not None else "no successful run yet"),
             ("proposal", status.get("proposal_pending") or "none"),
             ("finish-up", (status.get("finish_up") or {}).get("text") or "not requested")]
    return "".join(f'<div class="fact"><span class="k">{escape(k)}</span> '
                   f'<span class="v" id="fact-{escape(k.replace(" ", "-").lower())}">{escape(v)}</span></div>'
                   for k, v in facts)


def night_header_items(header: dict) -> str:
    """The report's header, one fact a line (page.js redraws it from /api/header)."""
    return "".join(f'<li id="header-{escape(i["key"])}"><span class="k">{escape(i["label"])}</span> '
                   f'{escape(i["text"])}</li>' for i in header.get("items", []))


def leaderboard_rows(board: dict) -> str:
    rows = []
    for e in board.get("entries", []):
        k = e.get("key_config") or {}
        rows.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            e["rank"], e["label"], f"{e['score']:.4f}", interval(e), e.get("verdict") or "-", e["cycle"],
            e.get("dimension") or "-", k.get("model") or "-", e.get("cycle_trace_id") or "-")) + "</tr>")
    return "".join(rows) or '<tr><td colspan="9">no successful runs yet</td></tr>'


def interval(entry: dict) -> str:
    ci = entry.get("interval95")
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"


def render_page(dash: Dashboard) -> str:
    status, runs, board, night = dash.status(), dash.runs(), dash.leaderboard(), dash.header()
    story = "".join(f"<li>{escape(line[2:])}</li>" for line in status.get("storyline_tail", []))
    boot = {"poll_seconds": status.get("poll_seconds", 3)}
    # A JSON island inside <script>: "</" would close the tag early
    boot_json = json.dumps(boot).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmloop: cycle {escape(str(status.get("cycle", 0)))}</title>
<style>{asset("page.css")}</style></head>
<body>
<header><h1>llmloop</h1><div id="facts">{header_html(status)}</div></header>
<main>
<section id="provenance"><h2>Where these numbers come from</h2>
<ul id="night-header">{night_header_items(night)}</ul></section>
<section><h2>Best validation accuracy over cycles</h2>
<div id="chart">{runs["chart_svg"]}</div>
<p class="note">Every run is a point coloured by its strategy dimension (hover for label, trace and config
difference from the best); the y axis spans the successful runs only; failed runs are crosses under the axis;
the band is the best's 95% binomial interval on the validation set.</p>
</section>
<section><h2>Run curves</h2><p class="note">Click a point of the chart or a leaderboard row for that run's
per-epoch loss and accuracy.</p><div id="curves"></div><pre id="run-detail" class="log"></pre></section>
<section><h2>GEN_HEAD, lineage and the pending proposal</h2><div id="lineage"></div>
<pre id="proposal" class="log"></pre></section>
<section id="active"><h2>Active runs</h2><div id="active-runs"></div></section>
<section><h2>Leaderboard (top {escape(str(board.get("top_k", 10)))})</h2>
<table id="leaderboard"><thead><tr><th>#</th><th>label</th><th>val acc</th><th>95% interval</th><th>verdict</th>
<th>cycle</th>
<th>dimension</th>
<th>model</th><th>trace</th></tr></thead><tbody>{leaderboard_rows(board)}</tbody></table></section>
<section><h2>Tokens and cost</h2><div id="tokens"></div></section>
<section><h2>Cycles</h2><p class="note">The last 30; open one for its decision, gate verdict, run
outcome, repair and Mentor review.</p><div id="cycles"></div></section>
<section><h2>Storyline</h2><ul id="storyline">{story}</ul></section>
<section><h2>Events</h2>
<div class="controls"><label>trace id <input id="trace" placeholder="c00042-1a2b3c"></label>
<button id="trace-apply">filter</button><button id="trace-clear">all</button></div>
<ol id="events"></ol></section>
<section id="actions"><h2>Actions</h2>
<p id="action-mode" class="note">Read-only: actions need the token printed when the dashboard started
(or its 0600 file).</p>
<div class="controls"><label>token <input id="token" type="password" autocomplete="off"></label>
<label>note <input id="note"></label><label>minutes <input id="minutes" value="60" size="4"></label></div>
<div class="controls">
<button data-action="promote_approve">approve proposal</button>
<button data-action="promote_reject">reject proposal</button>
<button data-action="finishup_request">request finish-up</button>
<button data-action="finishup_cancel">cancel finish-up</button>
<button data-action="stop">stop the daemon</button></div>
<pre id="action-result"></pre></section>
</main>
<script type="application/json" id="boot">{boot_json}</script>
<script>{asset("page.js")}</script>
</body></html>"""
