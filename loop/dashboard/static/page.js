// llmloop dashboard: polls the JSON endpoints and redraws the page. Vanilla JS, no library, no CDN.
// Data goes into the page through textContent only; the chart's SVG is made (and escaped) by the server.
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var pollMs = Math.max(1, boot.poll_seconds || 3) * 1000;
  var events = { offset: null, trace: "" };
  var MAX_EVENTS = 500;

  // Notebook style: `/?token=...` once; kept for this tab only, and taken off the address bar.
  var params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("llmloop-token", params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  var tokenInput = document.getElementById("token");
  tokenInput.value = sessionStorage.getItem("llmloop-token") || "";
  tokenInput.addEventListener("change", function () {
    sessionStorage.setItem("llmloop-token", tokenInput.value.trim());
    actionMode();
  });

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (cls) n.className = cls;
    return n;
  }
  function getJSON(url) {
    return fetch(url, { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }
  function setFact(id, text) { var n = $("fact-" + id); if (n) n.textContent = text; }
  function replaceChildren(node, children) {
    while (node.firstChild) node.removeChild(node.firstChild);
    children.forEach(function (c) { node.appendChild(c); });
  }

  function stateText(s) {
    if (s.running) return "RUNNING (pid " + s.pid + ")" + (s.alive ? "" : " - heartbeat stale");
    return s.why || "stopped";
  }

  function renderStatus(s) {
    setFact("state", stateText(s));
    setFact("blocked", s.blocked ? s.blocked.text : "no");
    setFact("cycle", String(s.cycle));
    setFact("heartbeat", s.heartbeat_age_seconds == null ? "-" : Math.round(s.heartbeat_age_seconds) + "s ago");
    setFact("gen_head", s.gen_head || "none");
    setFact("best-run", s.best_label ? s.best_label + " (" + Number(s.best_score).toFixed(4) + ")" : "no successful run yet");
    setFact("proposal", s.proposal_pending || "none");
    setFact("finish-up", s.finish_up ? s.finish_up.text : "not requested");
    document.title = "llmloop: cycle " + s.cycle;
    var runs = (s.active_runs || []).map(function (r) {
      var box = el("div");
      box.appendChild(el("div", r.label + " (pid " + r.pid + ", " + r.device + " via " + r.executor + ", " +
        r.elapsed_seconds + "s; log " + (r.log_age_seconds == null ? "-" : r.log_age_seconds + "s old") + ")"));
      box.appendChild(el("pre", (r.log_tail || []).join("\n"), "log"));
      return box;
    });
    replaceChildren($("active-runs"), runs.length ? runs : [el("p", "none", "note")]);
    var rows = Object.keys(s.tokens || {}).map(function (role) {
      var u = s.tokens[role], tr = el("tr");
      [role, u.calls, u.prompt_tokens, u.completion_tokens, u.total_tokens, u.failed_calls, u.cost.toFixed(4)]
        .forEach(function (v) { tr.appendChild(el("td", v)); });
      return tr;
    });
    var table = el("table"), head = el("tr");
    ["role", "calls", "prompt", "completion", "total", "failed", "cost"].forEach(function (h) { head.appendChild(el("th", h)); });
    table.appendChild(head);
    rows.forEach(function (r) { table.appendChild(r); });
    var extra = [table, el("p", "cost per cycle: " + s.cost_per_cycle, "note")];
    if (s.llm_budget) extra.push(el("p", s.llm_budget, "note"));
    extra.push(el("p", "Builder: " + s.builder + "; Mentor: " + s.mentor, "note"));
    replaceChildren($("tokens"), extra);
    $("proposal").textContent = s.proposal ? JSON.stringify(s.proposal, null, 1) : "no pending proposal";
    replaceChildren($("storyline"), (s.storyline_tail || []).map(function (l) { return el("li", l.replace(/^- /, "")); }));
  }

  var shown = false;
  function renderRuns(r) {
    $("chart").innerHTML = r.chart_svg;
    if (!shown && r.best_label) { shown = true; showRun(r.best_label); }     // the best run's curves first
  }

  function showRun(label) {
    getJSON("api/run?label=" + encodeURIComponent(label)).then(function (d) {
      $("curves").innerHTML = d.curve_svg;
      $("run-detail").textContent = JSON.stringify({ label: d.label, status: d.status, score: d.score,
        cycle: d.cycle, trace: d.trace, key_config: d.key_config, metrics: d.metrics }, null, 1);
    }).catch(function (err) { $("run-detail").textContent = String(err); });
  }
  $("chart").addEventListener("click", function (ev) {
    var label = ev.target && ev.target.getAttribute && ev.target.getAttribute("data-label");
    if (label) showRun(label);
  });
  $("leaderboard").addEventListener("click", function (ev) {
    var row = ev.target.closest("tr"), cells = row ? row.querySelectorAll("td") : [];
    if (cells.length > 1) showRun(cells[1].textContent);
  });

  function renderLineage(b) {
    var rows = (b.lineage_tail || []).map(function (l) {
      var tr = el("tr");
      [l.name === b.gen_head ? "HEAD" : "", l.name, l.gen_id, l.status, l.score, l.promoted, l.parent]
        .forEach(function (v) { tr.appendChild(el("td", v)); });
      return tr;
    });
    var table = el("table"), head = el("tr");
    ["", "entry", "gen", "status", "score", "promoted", "parent"].forEach(function (h) { head.appendChild(el("th", h)); });
    table.appendChild(head);
    rows.forEach(function (r) { table.appendChild(r); });
    replaceChildren($("lineage"), [el("p", "GEN_HEAD: " + (b.gen_head || "none")), table]);
  }

  function renderBoard(b) {
    var rows = (b.entries || []).map(function (e) {
      var tr = el("tr"), k = e.key_config || {};
      var ci = e.interval95 ? "[" + Number(e.interval95[0]).toFixed(4) + ", " + Number(e.interval95[1]).toFixed(4) + "]" : "-";
      [e.rank, e.label, Number(e.score).toFixed(4), ci, e.verdict || "-", e.cycle, e.dimension || "-", k.model || "-",
       e.cycle_trace_id || "-"]
        .forEach(function (v) { tr.appendChild(el("td", v)); });
      return tr;
    });
    if (!rows.length) { var tr = el("tr"), td = el("td", "no successful runs yet"); td.colSpan = 9; tr.appendChild(td); rows = [tr]; }
    replaceChildren($("leaderboard").querySelector("tbody"), rows);
  }

  var openCycles = {};
  function renderCycles(c) {
    var items = c.cycles.slice().reverse().map(function (cy) {
      var d = el("details");
      d.open = !!openCycles[cy.trace];
      d.addEventListener("toggle", function () { openCycles[cy.trace] = d.open; });
      d.appendChild(el("summary", "cycle " + cy.cycle + " " + cy.trace + ": " + cy.summary));
      d.appendChild(el("pre", JSON.stringify(cy.parts, null, 1), "log"));
      return d;
    });
    replaceChildren($("cycles"), items.length ? items : [el("p", "no cycles yet", "note")]);
  }

  function summary(e) {
    var rest = {};
    Object.keys(e).forEach(function (k) { if (["ts", "kind", "cycle_trace_id"].indexOf(k) < 0) rest[k] = e[k]; });
    return JSON.stringify(rest).slice(0, 400);
  }

  function renderEvents(page) {
    var list = $("events");
    if (page.reset) replaceChildren(list, []);
    page.events.forEach(function (e) {
      var li = el("li");
      li.title = JSON.stringify(e, null, 1).slice(0, 4000);
      li.appendChild(el("span", (e.ts || "") + " "));
      li.appendChild(el("span", e.kind, "kind"));
      li.appendChild(el("span", " "));
      var t = el("span", e.cycle_trace_id, "trace");
      t.addEventListener("click", function () { $("trace").value = e.cycle_trace_id; applyTrace(); });
      li.appendChild(t);
      li.appendChild(el("span", " " + summary(e)));
      list.appendChild(li);
    });
    while (list.childNodes.length > MAX_EVENTS) list.removeChild(list.firstChild);
    if (page.events.length) list.scrollTop = list.scrollHeight;
    events.offset = page.offset;
  }

  function pollEvents() {
    // Only what was appended since the last answer: the server reads from this byte offset.
    var url = "api/events?limit=" + MAX_EVENTS;
    if (events.offset !== null) url += "&after=" + events.offset;
    else if (events.trace) url += "&after=0";
    if (events.trace) url += "&trace=" + encodeURIComponent(events.trace);
    return getJSON(url).then(function (page) {
      renderEvents(page);
      if (page.more) return pollEvents();
    });
  }

  function applyTrace() {
    events.trace = $("trace").value.trim();
    events.offset = null;
    replaceChildren($("events"), []);
    pollEvents();
  }
  $("trace-apply").addEventListener("click", applyTrace);
  $("trace-clear").addEventListener("click", function () { $("trace").value = ""; applyTrace(); });

  function renderHeader(h) {
    replaceChildren($("night-header"), (h.items || []).map(function (i) {
      var li = el("li");
      li.id = "header-" + i.key;
      li.appendChild(el("span", i.label, "k"));
      li.appendChild(document.createTextNode(" " + i.text));
      return li;
    }));
  }

  function refresh() {
    return Promise.all([
      getJSON("api/status").then(renderStatus),
      getJSON("api/header").then(renderHeader),
      getJSON("api/runs").then(renderRuns),
      getJSON("api/leaderboard").then(function (b) { renderBoard(b); renderLineage(b); }),
      getJSON("api/cycles?last=30").then(renderCycles),
      pollEvents(),
    ]).catch(function (err) { $("action-result").textContent = "refresh failed: " + err.message; });
  }

  function actionMode() {
    var has = !!tokenInput.value.trim();
    $("action-mode").textContent = has ? "Actions enabled with the token given (the server checks it on every action)."
      : "Read-only: actions need the token printed when the dashboard started (or its 0600 file).";
    document.querySelectorAll("button[data-action]").forEach(function (b) { b.disabled = !has; });
  }

  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      var name = button.getAttribute("data-action");
      if (name === "stop" && !confirm("Stop the daemon after its current cycle?")) return;
      var body = new URLSearchParams({ note: $("note").value, minutes_left: $("minutes").value });
      fetch("api/action/" + name, {
        method: "POST", body: body,
        headers: { "Authorization": "Bearer " + tokenInput.value.trim() },
      }).then(function (r) {
        return r.json().then(function (j) {
          $("action-result").textContent = (r.status === 403 ? "refused (HTTP 403): " : "") + (j.message || JSON.stringify(j));
        });
      }).then(refresh).catch(function (err) { $("action-result").textContent = String(err); });
    });
  });

  actionMode();
  refresh();
  setInterval(refresh, pollMs);
})();
