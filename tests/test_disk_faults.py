"""Disk full and file-size limits at the write sites: the daemon stays up (keeps cycling or backing
off, never exits with a traceback), the last good state.json survives whole, and a `degraded` event
naming the write site is written (at once, or once space returns when even events.jsonl is full).

How each site is covered (all real writes, real errors; the cases run in tests/kill_harness.py):
  - a really full disk: a 4 MiB tmpfs mounted in a user+mount namespace (`unshare`) under a running
    daemon, filled until ENOSPC, then freed; and each site's own writer (state.json, heartbeat,
    events.jsonl, workpad, shared TODO, storyline, runs index, progress log, lifecycle checkpoint,
    archive freeze) called on that full disk;
  - a real RLIMIT_FSIZE on the daemon (SIGXFSZ ignored, so writes get EFBIG): a workpad grown near
    the limit, and an events.jsonl that reaches it mid-run;
  - ENOSPC injected at one named site of a running daemon at a time (LLMLOOP_DISK_FAULT, a switch
    file that is created, then removed as space "returns"): state.json, events.jsonl, workpad,
    shared TODO, heartbeat.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from loop.journal.events import EventLog
from loop.util.faults import disk_fault
from tests.conftest import REPO, record_reliability

TMPFS_SIZE = "4m"


def namespaces_work() -> str | None:
    """None when an unprivileged user+mount namespace with a tmpfs can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"no user+mount namespace: {probe.stderr.strip()[:200]}"


def run_disk_harness(tmp_path) -> dict:
    out, tmpfs = tmp_path / "result.json", tmp_path / "tmpfs"
    harness = [sys.executable, "-m", "tests.kill_harness", "--mode", "disk", "--workdir", str(tmp_path),
               "--out", str(out)]
    why_not = namespaces_work()
    if why_not is None:
        tmpfs.mkdir()
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                   f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$1" && shift && exec "$@"', "sh", str(tmpfs),
                   *harness, "--tmpfs", str(tmpfs)]
    else:
        command = harness
    proc = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=240)
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())
    result["tmpfs_skipped_because"] = why_not
    return result


@pytest.mark.faults
def test_disk_full_and_file_size_limits(tmp_path):
    result = run_disk_harness(tmp_path)
    assert result["ok"], result.get("violation")
    cases = result["cases"]
    by_how = {}
    for case in cases:
        by_how.setdefault(case["how"], []).append(case)
    injected = by_how["injected ENOSPC (LLMLOOP_DISK_FAULT)"]
    assert {c["site"] for c in injected} == {"atomic:state.json", "events:append", "atomic:workpad.md",
                                             "atomic:shared_todo.md", "atomic:daemon_heartbeat.json"}
    assert all(c["survived"] and c["errno"] == "ENOSPC" for c in injected)
    sites = {c["site"]: c["write_site"] for c in injected}
    assert sites["atomic:state.json"] == "state.save" and sites["atomic:workpad.md"] == "notes.append_workpad"
    events_case = next(c for c in injected if c["site"] == "events:append")
    assert events_case["stderr_only"] >= 1           # held back while events.jsonl could not be written
    fsize = by_how["RLIMIT_FSIZE (EFBIG)"]
    assert len(fsize) == 2 and all(c["survived"] for c in fsize)
    assert next(c for c in fsize if c["site"] == "workpad.md")["degraded_events"] >= 1
    assert next(c for c in fsize if c["site"] == "events.jsonl")["stderr_only"] >= 2
    if result["tmpfs_skipped_because"] is None:
        daemon = by_how["tmpfs filled mid-run"][0]
        assert daemon["survived"] and "ENOSPC" in daemon["errnos"] and daemon["degraded_events"] >= 1
        writers = {c["site"] for c in by_how["writer on a full tmpfs"]}
        assert {"state.json", "heartbeat", "events.jsonl", "notes:workpad", "notes:shared_todo", "notes:storyline",
                "history", "progress", "lifecycle", "archive freeze", "reports"} <= writers
    else:
        assert "skipped" in result and result["skipped"]
    record_reliability("disk_faults", sites=sorted({c["site"] for c in cases}), cases=len(cases),
                       daemon_survived=sum(1 for c in cases if c.get("survived")),
                       degraded_events=sum(c.get("degraded_events", 0) for c in cases),
                       degraded_reported_on_stderr_only=sum(c.get("stderr_only", 0) for c in cases),
                       writer_cases_last_good_intact=sum(1 for c in cases if c.get("last_good_intact")),
                       skipped=result.get("skipped", []), seconds=result["seconds"])


# ------------------------------------------------- the write primitives ----

def test_injected_enospc_names_the_site_and_can_be_switched_off(tmp_path, monkeypatch):
    switch = tmp_path / "sites"
    monkeypatch.setenv("LLMLOOP_DISK_FAULT", f"@{switch}")
    disk_fault("atomic:state.json")                                  # no switch file: no fault
    switch.write_text("atomic:*.json")
    with pytest.raises(OSError) as raised:
        disk_fault("atomic:state.json", tmp_path / "state.json")
    assert raised.value.errno == 28 and raised.value.filename.endswith("state.json")
    disk_fault("events:append")                                      # not named: no fault


def test_event_append_that_fails_leaves_no_partial_line(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE in a child process) makes write() short and then EFBIG:
    the partial line is cut off again."""
    log = EventLog(tmp_path / "events.jsonl")
    log.append("cycle", "c00001-a", cycle=1)
    size = log.path.stat().st_size
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
from loop.journal.events import EventLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({size} + 100, {size} + 100))
try:
    EventLog({str(log.path)!r}).append("cycle", "c00002-b", cycle=2, pad="z" * 5000)
except OSError as exc:
    print(exc.errno, exc.filename)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split()[0] == "27" and proc.stdout.split()[1].endswith("events.jsonl"), proc.stderr
    assert log.path.stat().st_size == size and [e["cycle"] for e in log] == [1]


def test_degraded_record_names_the_site_and_never_reuses_a_logged_cycle(tmp_path, capsys):
    """A cycle that failed after its `cycle` event was written (here: the storyline on a full disk)
    counts as done, so the next cycle gets a new number; the `degraded` event names the writer."""
    import errno

    from loop.cycle.state import LoopState
    from loop.daemon.recovery import Degraded
    from loop.journal.notes import append_storyline

    events = EventLog(tmp_path / "events.jsonl")
    events.append("cycle", "c00005-abcdef", cycle=5)
    state = LoopState(cycle=4)
    (tmp_path / "storyline.md").mkdir()                      # a real OSError from the real writer
    with pytest.raises(OSError) as raised:
        append_storyline(tmp_path / "storyline.md", "- c00005 line")
    degraded = Degraded(events)
    first = degraded.record(raised.value, state, say=lambda *_: None)
    second = degraded.record(OSError(errno.ENOSPC, "No space left on device"), state, say=lambda *_: None)
    assert state.cycle == 5 and second == 2 * first                 # counter moved past 5; backoff grows
    recorded = [e for e in events if e["kind"] == "degraded"]
    assert recorded[0]["site"] == "notes.append_line" and recorded[0]["errno"] == "EISDIR"
    assert recorded[1]["errno"] == "ENOSPC" and recorded[1]["failures_in_a_row"] == 2
    assert capsys.readouterr().err == ""                            # written, so nothing on stderr


# ------------------------------------ the shared append, reports, daemon start and stop ----

def test_plain_appends_that_fail_leave_no_partial_line(tmp_path):
    """The storyline (notes), the runs index and a progress log under a real file-size limit
    (RLIMIT_FSIZE in a child process: write() short, then EFBIG): each failed append is cut off
    again, so the next append starts on a clean line (no half record glued into runs/index.jsonl)."""
    import io

    from loop.journal.history import append_history, read_history
    from loop.journal.notes import append_storyline
    from loop.util.progress import ProgressLog
    from loop.util.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    progress_log = tmp_path / "progress.log"
    append_history(ws, {"label": "good", "cycle": 1, "ok": True})
    append_storyline(ws.storyline, "- c00001 good")
    ProgressLog(progress_log, "t", 1, stream=io.StringIO()).line("good")
    before = {p: p.read_bytes() for p in (ws.runs_index, ws.storyline, progress_log)}
    limit = max(len(b) for b in before.values()) + 100
    code = f"""
import io, json, resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from loop.journal.history import append_history
from loop.journal.notes import append_storyline
from loop.util.progress import ProgressLog
from loop.util.workspace import Workspace
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
pad = "z" * 5000
writers = {{"history": lambda: append_history(Workspace(Path({str(ws.root)!r})),
                                              {{"label": "x", "cycle": 2, "pad": pad}}),
           "storyline": lambda: append_storyline(Path({str(ws.storyline)!r}), "- c00002 " + pad),
           "progress": lambda: ProgressLog(Path({str(progress_log)!r}), "t", 1, stream=io.StringIO()).line(pad)}}
errnos = {{}}
for name, write in writers.items():
    try:
        write()
    except OSError as exc:
        errnos[name] = exc.errno
print(json.dumps(errnos))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout) == {"history": 27, "storyline": 27, "progress": 27}, proc.stderr
    assert {p: p.read_bytes() for p in before} == before                 # nothing of the failed lines left
    append_history(ws, {"label": "next", "cycle": 3, "ok": True})
    append_storyline(ws.storyline, "- c00003 next")
    ProgressLog(progress_log, "t", 1, stream=io.StringIO()).line("next")
    assert [r.label for r in read_history(ws)] == ["good", "next"]
    assert [json.loads(line)["label"] for line in ws.runs_index.read_text().splitlines()] == ["good", "next"]
    assert ws.storyline.read_text().splitlines()[-2:] == ["- c00001 good", "- c00003 next"]
    assert [line.split()[-1] for line in progress_log.read_text().splitlines()] == ["good", "next"]


def test_a_report_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """ENOSPC injected (LLMLOOP_DISK_FAULT) at the paper report's write: the reports are replaced
    atomically, so the previous paper survives byte for byte and no temp file is left behind."""
    from loop.report import generate_reports
    from loop.report.helpers import PAPER_FILE

    ws = tmp_path / "artifacts"
    ws.mkdir()
    paper = generate_reports(ws, top_k=10, progress=False)["paper"]
    paper.write_text("# the previous report\n")
    monkeypatch.setenv("LLMLOOP_DISK_FAULT", f"atomic:{PAPER_FILE}")
    with pytest.raises(OSError) as raised:
        generate_reports(ws, top_k=10, progress=False)
    assert raised.value.errno == 28 and raised.value.filename == str(paper)
    assert paper.read_text() == "# the previous report\n"
    assert not [p.name for p in paper.parent.iterdir() if p.name.startswith(".")]   # no temp left
    monkeypatch.delenv("LLMLOOP_DISK_FAULT")
    assert "No runs yet" in generate_reports(ws, top_k=10, progress=False)["paper"].read_text()


@pytest.mark.slow
def test_daemon_starts_and_stops_while_events_jsonl_cannot_be_written(tmp_path):
    """A real file-size limit on the daemon (RLIMIT_FSIZE; CPython ignores SIGXFSZ, so writes get
    EFBIG) that events.jsonl has already reached: `daemon_start` and `daemon_stop` cannot be written.
    The daemon reports both on stderr and exits 0, no traceback, no fragment; with room again the
    next start logs both events."""
    import resource

    import yaml

    from tests.conftest import run_cli, tiny_config_dict

    trainer_yaml = tmp_path / "tiny.yaml"
    trainer_yaml.write_text(yaml.safe_dump(tiny_config_dict()))
    cfg_path = tmp_path / "daemon.yaml"
    cfg_path.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer_yaml),
                                        "phase": {"schedule": "off"}}))
    events = EventLog(tmp_path / "ws" / "events.jsonl")
    events.append("pad", "pad-00000", pad="z" * 200_000)               # bigger than any other daemon file
    size = events.path.stat().st_size

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, size + 50))

    start = ["start", "--foreground", "--daemon-config", str(cfg_path), "--max-cycles", "0"]
    full = subprocess.run([sys.executable, "-m", "loop.cli.main", *start], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=limit_file_size, timeout=120)
    assert full.returncode == 0 and "Traceback" not in full.stderr, full.stderr[-3000:]
    held_back = [line for line in full.stderr.splitlines() if line.startswith("llmloop degraded")]
    assert len(held_back) == 2 and all('"errno": "EFBIG"' in line for line in held_back), full.stderr[-3000:]
    assert events.path.stat().st_size == size and [e["kind"] for e in events] == ["pad"]
    again = run_cli(*start, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [e["kind"] for e in events] == ["pad", "daemon_start", "daemon_stop"]
