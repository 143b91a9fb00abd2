"""`llmloop dashboard` against the workspace of a real short daemon run (`real_daemon_workspace`,
copied first: the actions change it): the real uvicorn server in a subprocess on a free loopback
port, checked over HTTP (status fields, the events read from a byte offset, the token-guarded
actions, secrets redacted, the Host check), then Debian's chromium in headless mode (the rendered
DOM holds the best run, GEN_HEAD and the cycle count; the screenshot is not blank)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from loop.archive.paths import ModelPaths
from loop.journal.events import EventLog
from loop.report.data import load_data
from loop.util.workspace import Workspace
from tests.conftest import REAL_DAEMON_CYCLES, REPO, run_cli

pytest.importorskip("starlette", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")

SECRET_NAME, SECRET = "DASHBOARD_TEST_SECRET", "hunter2-dashboard-secret-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, token: str, ws: Path, proc: subprocess.Popen, token_file: Path, stdout: str):
        self.url, self.token, self.ws, self.proc = url, token, ws, proc
        self.token_file, self.stdout = token_file, stdout

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=20) as r:
            return json.loads(r.read())

    def post(self, action: str, token: str | None = None, form: dict | None = None,
             header: bool = True) -> tuple[int, dict]:
        data = dict(form or {})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if token is not None and header:
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            data["token"] = token
        request = urllib.request.Request(self.url + f"api/action/{action}", method="POST", headers=headers,
                                         data=urllib.parse.urlencode(data).encode())
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(real_daemon_workspace, tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard")
    ws = base / "artifacts"
    shutil.copytree(real_daemon_workspace, ws, symlinks=True)
    with open(Workspace(ws).storyline, "a", encoding="utf-8") as fh:    # a secret that reached a note
        fh.write(f"- a line that leaked {SECRET} into the notes\n")
    port, token_file = free_port(), base / "token"
    env = dict(os.environ, PYTHONPATH=str(REPO), **{SECRET_NAME: SECRET})
    proc = subprocess.Popen([sys.executable, "-m", "loop.cli.main", "dashboard", "--workspace", str(ws),
                             "--port", str(port), "--token-file", str(token_file), "--poll-seconds", "1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while not any(line.startswith("actions:") for line in lines):
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
            pytest.fail(f"the dashboard exited ({proc.returncode}): {''.join(lines)}")
        lines.append(line)
    token = token_file.read_text().strip()
    srv = Server(f"http://127.0.0.1:{port}/", token, ws, proc, token_file, "".join(lines))
    deadline = time.monotonic() + 30
    while True:
        try:
            srv.get("api/status")
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield srv
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_token_printed_once_and_kept_0600(server):
    assert server.stdout.count(server.token) == 1, server.stdout
    assert stat.S_IMODE(server.token_file.stat().st_mode) == 0o600
    assert "read-only without the token" in server.stdout


def test_status_reads_the_workspace(server):
    s = server.get("api/status")
    assert s["running"] is False and s["why"].startswith("stopped"), s["why"]
    assert s["cycle"] == REAL_DAEMON_CYCLES
    assert isinstance(s["heartbeat_age_seconds"], float)
    assert s["gen_head"] == ModelPaths(server.ws).head_name()
    assert s["active_runs"] == [] and set(s["tokens"]) >= {"builder", "mentor"}
    best = load_data(server.ws, 10, "").best
    assert s["best_label"] == best.label
    assert s["finish_up"] is None and "proposal_pending" in s
    assert s["storyline_tail"], "the storyline's tail"


def test_runs_and_leaderboard(server):
    data = load_data(server.ws, 10, "")
    runs = server.get("api/runs")
    assert runs["cycles"] == REAL_DAEMON_CYCLES
    assert [r["label"] for r in runs["runs"]] == [r.label for r in data.runs]
    for r in runs["runs"]:
        assert {"label", "cycle", "score", "ok", "dimension", "trace"} <= set(r)
    assert runs["best_label"] == data.best.label
    assert runs["best_series"][-1][1] == pytest.approx(data.best.score)
    assert runs["chart_svg"].startswith("<svg") and data.best.label in runs["chart_svg"]
    detail = server.get("api/run?label=" + urllib.parse.quote(data.best.label))
    assert detail["label"] == data.best.label and detail["curve"] and detail["curve_svg"].startswith("<svg")
    with pytest.raises(urllib.error.HTTPError) as missing:
        server.get("api/run?label=no-such-run")
    assert missing.value.code == 404
    cycles = server.get("api/cycles?last=50")
    assert cycles["count"] == REAL_DAEMON_CYCLES and [c["cycle"] for c in cycles["cycles"]] == [1, 2, 3, 4]
    assert all(c["summary"] for c in cycles["cycles"]) and any("decision" in c["parts"] for c in cycles["cycles"])
    board = server.get("api/leaderboard")
    assert board["entries"][0]["label"] == data.best.label
    assert board["gen_head"] == data.head


def test_the_header_says_where_the_numbers_come_from(server):
    """/api/header is the paper report's header record (machine, wall clock, seeds, compute, tokens,
    who decided, the selection split), and the page's first paint shows it."""
    from html import escape

    from loop.report.header import night_header

    header = server.get("api/header")
    data = load_data(server.ws, 10, "")
    expected = night_header(data)
    assert [(i["label"], i["text"]) for i in header["items"]] == [(label, text) for _, label, text in expected.items()]
    start = next(e for e in EventLog(Workspace(server.ws).events) if e.get("kind") == "daemon_start")
    assert header["machines"] == [start["machine"]] and header["machines"][0]["cpu_cores"] == os.cpu_count()
    assert header["compute"]["runs"] == len(data.runs) and header["compute"]["cpu_hours"] > 0
    assert header["tokens"] == 0 and header["deciders"]["offline"] == REAL_DAEMON_CYCLES
    assert header["selection_split"] == "val" and header["seeds"]
    with urllib.request.urlopen(server.url, timeout=20) as r:
        page = r.read().decode("utf-8")
    machine = next(i for i in header["items"] if i["key"] == "machine")
    assert f'<li id="header-machine"><span class="k">Machine</span> {escape(machine["text"])}</li>' in page
    assert "the embedded offline policy, not an LLM" in page


def test_events_are_read_from_the_offset(server):
    events = Workspace(server.ws).events
    first = server.get("api/events?after=0&limit=5000")
    assert first["offset"] == events.stat().st_size and len(first["events"]) == len(list(EventLog(events)))
    assert server.get(f"api/events?after={first['offset']}")["events"] == []
    EventLog(events).append("dashboard_probe", "probe-0001", note="appended after the first read")
    second = server.get(f"api/events?after={first['offset']}")
    assert [e["kind"] for e in second["events"]] == ["dashboard_probe"]
    assert second["offset"] == events.stat().st_size
    trace = next(e["cycle_trace_id"] for e in first["events"] if e["kind"] == "cycle")
    only = server.get(f"api/events?after=0&trace={trace}")["events"]
    assert only and {e["cycle_trace_id"] for e in only} == {trace}
    tail = server.get("api/events")                   # no offset: the tail, and where it ends
    assert tail["offset"] == events.stat().st_size and tail["events"][-1]["kind"] == "dashboard_probe"


class CountingOpen:
    """`open` for loop.dashboard.data that counts the bytes each read returns."""

    def __init__(self):
        self.bytes_read = 0

    def __call__(self, *args, **kwargs):
        fh, counter = open(*args, **kwargs), self

        class Counted:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def seek(self, *a):
                return fh.seek(*a)

            def read(self, *a):
                chunk = fh.read(*a)
                counter.bytes_read += len(chunk)
                return chunk

        return Counted()


def test_a_refresh_reads_only_what_was_appended(tmp_path, monkeypatch):
    """The page's records (EventTail) and the events feed (read_events) read the events file from
    where they stopped: after the first read, a refresh reads the appended bytes and no more, and a
    refresh with nothing appended reads nothing."""
    from loop.dashboard import data

    log = EventLog(tmp_path / "events.jsonl")
    for i in range(300):
        log.append("timer", f"timer-{i:05d}", seconds=1.0, reasons=["a reason long enough to weigh"] * 4)
    counting = CountingOpen()
    monkeypatch.setattr(data, "open", counting, raising=False)
    tail = data.EventTail(log.path)
    tail.refresh()
    size = log.path.stat().st_size
    assert counting.bytes_read == size and len(tail.events) == 300
    page = data.read_events(log.path, None)                  # the page's first call: the tail only
    assert page.offset == size and counting.bytes_read <= size + min(size, data.EVENTS_TAIL_BYTES)
    for i in range(10):
        log.append("probe", f"probe-{i}", note="appended after the first read")
    appended, before = log.path.stat().st_size - size, counting.bytes_read
    assert tail.refresh() == size + appended and counting.bytes_read - before == appended
    assert [e["kind"] for e in tail.events[-10:]] == ["probe"] * 10
    before = counting.bytes_read
    later = data.read_events(log.path, page.offset)
    assert len(later.events) == 10 and counting.bytes_read - before == appended
    before = counting.bytes_read
    tail.refresh()
    assert data.read_events(log.path, later.offset).events == [] and counting.bytes_read == before


def test_secrets_are_never_served(server):
    s = server.get("api/status")
    assert any("[REDACTED]" in line for line in s["storyline_tail"])
    for path in ("", "api/status", "api/runs", "api/leaderboard", "api/header", "api/events?after=0&limit=5000"):
        with urllib.request.urlopen(server.url + path, timeout=20) as r:
            body = r.read().decode()
        assert SECRET not in body and server.token not in body, path


def test_foreign_host_header_is_refused(server):
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/")), timeout=10)
    conn.request("GET", "/api/status", headers={"Host": "attacker.example"})
    assert conn.getresponse().status == 400
    conn.close()


def test_actions_need_the_token(server):
    ws = Workspace(server.ws)
    for token in (None, "wrong-token"):
        code, body = server.post("finishup_request", token, {"minutes_left": "30"})
        assert code == 403 and "token" in body["message"]
        code, _ = server.post("stop", token)
        assert code == 403
    assert not ws.finish_up.exists() and not ws.stop_request.exists()
    code, body = server.post("finishup_request", server.token, {"minutes_left": "30", "note": "from the page"})
    assert code == 200 and body["ok"], body
    request = json.loads(ws.finish_up.read_text())
    assert request["status"] == "active" and request["note"] == "from the page"
    assert server.get("api/status")["finish_up"]["status"] == "active"
    code, body = server.post("finishup_cancel", server.token, header=False)      # the token as a form field
    assert code == 200 and json.loads(ws.finish_up.read_text())["status"] == "cancelled"
    code, body = server.post("stop", server.token)
    assert code == 200 and body["message"] == "llmloop is not running"


def test_promotion_with_and_without_the_token(server):
    """The fixture's evolution window leaves a proposal: refused without the token, approved with it
    (GEN_HEAD moves, which the browser test then finds on the page), and a reject after that is the
    pipeline's own refusal, as `llmloop promote --reject` prints it."""
    paths = ModelPaths(server.ws)
    pending = server.get("api/status")["proposal_pending"]
    for action in ("promote_approve", "promote_reject"):
        code, _ = server.post(action, None)
        assert code == 403 and paths.proposal.exists() == bool(pending)
    if pending:
        code, body = server.post("promote_approve", server.token)
        assert code == 200 and body["message"].startswith("PROMOTED"), body
        assert paths.head_name() == pending and not paths.proposal.exists()
        assert server.get("api/status")["gen_head"] == pending
    code, body = server.post("promote_reject", server.token, {"note": "not tonight"})
    assert code == 409 and "no pending proposal" in body["message"]


def test_stop_reaches_a_running_daemon(server):
    """A stand-in daemon: this process holds the workspace lock (as the daemon does) and the pid file
    names a child process. Without the token nothing happens; with it, the stop file is written and
    the pid gets SIGTERM, as `llmloop stop` does."""
    from filelock import FileLock

    ws = Workspace(server.ws)
    sleeper = subprocess.Popen(["sleep", "60"])
    lock = FileLock(str(ws.lock))
    lock.acquire(timeout=5)
    try:
        ws.pid.write_text(f"{sleeper.pid}\n")
        code, _ = server.post("stop", None)
        assert code == 403 and not ws.stop_request.exists() and sleeper.poll() is None
        code, body = server.post("stop", server.token)
        assert code == 200 and body["message"].startswith("stop requested"), body
        assert ws.stop_request.exists() and sleeper.wait(10) == -15
        status = server.get("api/status")
        assert status["running"] is True and status["pid"] == sleeper.pid
    finally:
        lock.release()
        sleeper.kill()
        sleeper.wait()
        ws.pid.unlink(missing_ok=True)
        ws.stop_request.unlink(missing_ok=True)


def test_non_loopback_host_is_refused(tmp_path):
    done = run_cli("dashboard", "--workspace", str(tmp_path), "--host", "0.0.0.0", timeout=60)
    assert done.returncode == 2 and "--allow-remote" in done.stderr and "loopback" in done.stderr


def test_chart_zooms_to_the_successful_runs():
    from loop.dashboard.chart import svg_chart
    from loop.dashboard.data import RunPoint, RunsView
    from loop.report.helpers import accuracy_limits as y_range

    def point(label, cycle, score, ok):
        return RunPoint(label, cycle, score, ok, "ok" if ok else "failed", "loss", f"t{cycle}", 1.0,
                        None if ok else "boom", False)

    runs = [point("a", 1, 0.975, True), point("b", 2, 0.0, False), point("c", 3, 0.984, True)]
    lo, hi = y_range([0.975, 0.984])
    assert 0.96 < lo < 0.975 and 0.984 < hi < 0.995         # not 0-1: the two runs are apart
    svg = svg_chart(RunsView(3, runs, [(1, 0.975), (3, 0.984), (3, 0.984)], "c", 0.984))
    assert svg.count("<circle") == 2 + 1                     # two runs and one legend entry
    assert svg.count('class="failed"') == 1 and "failed (no score)" in svg


# ------------------------------------------------------------ the browser ----

def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian's chromium is not installed (scripts/setup_env.sh installs it: apt-get install chromium)")
    return found


def headless(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_chromium_renders_the_page(server, tmp_path):
    from PIL import Image

    data = load_data(server.ws, 10, "")
    done = headless("--virtual-time-budget=5000", "--dump-dom", server.url)
    dom = done.stdout
    assert data.best.label in dom, done.stderr[-2000:]
    if data.head:
        assert data.head in dom
    assert f'id="fact-cycle">{REAL_DAEMON_CYCLES}<' in dom
    for item in server.get("api/header")["items"]:          # the header, as page.js redrew it
        assert f'<li id="header-{item["key"]}"><span class="k">{item["label"]}</span> ' in dom
    assert "not an LLM" in dom.split('id="header-decisions"', 1)[1].split("</li>", 1)[0]
    assert 'id="leaderboard"' in dom and "<svg" in dom
    png = tmp_path / "page.png"
    done = headless("--virtual-time-budget=3000", f"--screenshot={png}", "--window-size=1200,900", server.url)
    assert png.exists(), done.stderr[-2000:]
    with Image.open(png) as img:
        assert img.size == (1200, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 1, "a blank screenshot"
