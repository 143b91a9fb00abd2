"""`llmloop dashboard`: a live web page of the night's run, served on 127.0.0.1 by default.

It reads the workspace files only (never the daemon's memory), so it works whether the daemon runs,
has stopped or crashed, and it never slows a cycle: it is its own process and reads incrementally.

  data.py      the workspace read for the page: the report's typed records (ReportData), cached on
               the files' size and mtime, the events file read from a byte offset, log and storyline
               tails, and `scrub` (every served string through loop.util.secrets.redact)
  chart.py     the best-over-cycles chart as server-made SVG (y axis zoomed to the successful runs,
               failures under the axis, the best's noise band) and one run's per-epoch curves
  views.py     the JSON payloads (status, runs, leaderboard, cycles, one run, events), scrubbed
  page.py      the page's first paint, rendered server-side
  actions.py   the token-guarded actions, each through the same function the CLI calls
  app.py       the Starlette app: the page and its JSON endpoints
  server.py    the token (printed once, 0600 file), the loopback check, uvicorn
  background.py  `llmloop start --dashboard` (a detached server) and `dashboard --stop`: the pid file
               <workspace>/logs/dashboard.pid that a serving dashboard keeps
  static/      the page's CSS and JS, inlined into the page (no CDN: the machines may be offline)
"""
