"""Notes (workpad, shared TODO, mentor notes, storyline) and the append-only event log."""
from __future__ import annotations

import json

from loop.journal.events import EventLog
from loop.journal.notes import (
    add_todos,
    append_storyline,
    append_workpad,
    read_todos,
    resolve_todos,
    tail_text,
    todo_cap,
    todo_summary,
)


def test_workpad_sections_get_their_entries(tmp_path):
    pad = tmp_path / "workpad.md"
    append_workpad(pad, "## Notes", "first note", 1)
    append_workpad(pad, "## Data Exploration", "classes are balanced", 1)
    append_workpad(pad, "## Notes", "second note", 2)
    append_workpad(pad, "## Notes", "   ", 3)                       # empty: nothing written
    text = pad.read_text()
    notes = text[text.index("## Notes"):text.index("## Data Exploration")]
    assert "- [cycle 1] first note" in notes and "- [cycle 2] second note" in notes
    assert "- [cycle 1] classes are balanced" in text[text.index("## Data Exploration"):]
    assert "cycle 3" not in text


def test_todo_ids_resolve_duplicates_and_caps(tmp_path):
    todo = tmp_path / "shared_todo.md"
    added, refused = add_todos(todo, ["Try label smoothing 0.1", "Check per-class errors", "third"], "B", 1, 2)
    assert added == ["T0001", "T0002"] and len(refused) == 1 and "cap 2" in refused[0]
    added, refused = add_todos(todo, ["try label smoothing 0.1!"], "B", 2, 2)
    assert added == [] and "duplicate" in refused[0]
    assert resolve_todos(todo, ["t0001", "T0099"], 3) == ["T0001"]
    todos = read_todos(todo)
    assert todos[0].done and "resolved cycle 3" in todos[0].meta and not todos[1].done


def test_todo_caps_tighten_with_backlog(tmp_path):
    assert todo_cap(2, 0) == 2 and todo_cap(2, 8) == 1 and todo_cap(2, 15) == 0 and todo_cap(1, 9) == 1
    todo = tmp_path / "shared_todo.md"
    for i in range(15):
        add_todos(todo, [f"distinct item number {i} about topic{i}"], "B", i, 2)
    added, refused = add_todos(todo, ["a brand new idea"], "B", 20, 2)
    assert added == [] and "cap 0" in refused[0]


def test_todo_summary_oldest_and_newest_deduped(tmp_path):
    todo = tmp_path / "shared_todo.md"
    for i in range(10):
        add_todos(todo, [f"item {i} about subject{i}"], "B", i, 2)
    resolve_todos(todo, ["T0001"], 11)
    count, lines = todo_summary(todo, each_end=2)
    assert count == 9 and [ln.split(":")[0] for ln in lines] == ["T0002", "T0003", "T0009", "T0010"]
    count, lines = todo_summary(todo, each_end=10)
    assert len(lines) == 9                                   # no item twice


def test_tail_text_reads_the_end(tmp_path):
    path = tmp_path / "x.md"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = tail_text(path, 50)
    assert tail.endswith("line 999") and "line 1\n" not in tail and len(tail) <= 50
    assert tail.splitlines()[0].startswith("line ")


def test_storyline_appends_one_line_per_call(tmp_path):
    path = tmp_path / "storyline.md"
    append_storyline(path, "- c00001 a")
    append_storyline(path, "- c00002 b")
    assert path.read_text().splitlines()[-2:] == ["- c00001 a", "- c00002 b"]


def test_events_append_tail_and_torn_line(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for i in range(300):
        log.append("cycle" if i % 3 else "llm", f"c{i:05d}", n=i)
    assert all("cycle_trace_id" in r for r in log)
    assert [r["n"] for r in log.tail(3)] == [297, 298, 299]
    assert [r["n"] for r in log.tail(2, kind="llm")] == [294, 297]
    with open(log.path, "a") as fh:                     # a crash mid-append
        fh.write('{"kind": "cycle", "cycle_trace_id": "c0')
    assert sum(1 for _ in log) == 300                    # the torn line is skipped on read
    assert log.repair_tail() is True and log.repair_tail() is False
    log.append("cycle", "c00300", n=300)
    lines = log.path.read_text().splitlines()
    assert len(lines) == 301 and json.loads(lines[-1])["n"] == 300


def test_workspace_ensure_creates_the_shared_todo_once_and_never_overwrites(tmp_path):
    """The file the README points to exists from the start (heading, empty queue), even after a
    night with no TODO; preparing the workspace again never replaces a queue."""
    from loop.journal.notes import write_todos
    from loop.util.workspace import Workspace

    ws = Workspace(tmp_path / "ws").ensure()
    reference = tmp_path / "empty_queue.md"
    write_todos(reference, [])                             # what the notes module writes for no items
    assert ws.todo.read_text(encoding="utf-8") == reference.read_text(encoding="utf-8")
    assert ws.todo.read_text(encoding="utf-8").startswith("# Shared TODO\n")
    assert read_todos(ws.todo) == [] and todo_summary(ws.todo) == (0, [])
    assert [p.name for p in ws.notes.iterdir()] == ["shared_todo.md"]      # no temp file left behind
    added, _ = add_todos(ws.todo, ["Check the confusion between 3 and 8"], "B", 1, 2)
    assert added == ["T0001"]                              # the queue starts at T0001 under the heading
    queue = ws.todo.read_text(encoding="utf-8")
    ws.ensure()
    Workspace(ws.root).ensure()
    assert ws.todo.read_text(encoding="utf-8") == queue    # idempotent: the queue is kept as it is
    hand_written = "my own notes, not in the queue format\n"
    ws.todo.write_text(hand_written)
    ws.ensure()
    assert ws.todo.read_text() == hand_written             # never overwritten, whatever it holds
