"""The human-readable coordination files (the seed's "Worker Housekeeping"):

  workpad.md       Builder-owned: `## Notes` and `## Data Exploration`, entries appended per cycle
  shared_todo.md   one queue for both roles: ids, resolve by id, caps that tighten as the open
                   backlog grows, near-duplicates refused
  mentor_notes.md  Mentor-owned (written by the loop from the Mentor's review)
  storyline.md     one line per cycle, append-only

Rewritten files are written atomically; storyline and mentor notes are only appended to.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loop.util import fsutil
from loop.util.fsutil import atomic_write_text, read_regular_bytes
from loop.util.workspace import TODO_HEADING

WORKPAD_SECTIONS = ("## Notes", "## Data Exploration")
_TODO_LINE = re.compile(r"^- \[(?P<done>[ x])\] (?P<id>T\d{4}) \((?P<meta>[^)]*)\) (?P<text>.*)$")


def tail_text(path: Path, max_chars: int) -> str:
    """The end of a text file, cut at a line start, at most `max_chars` long; a link (a run's log is
    the run's to replace) or anything but a regular file reads as empty."""
    try:
        size = os.stat(path, follow_symlinks=False).st_size
        text = read_regular_bytes(path, tail=max_chars).decode("utf-8", errors="replace")
    except OSError:
        return ""
    if size > max_chars and "\n" in text:
        text = text[text.index("\n") + 1:]
    return text.strip()


# -------------------------------------------------------------- workpad ----

def append_workpad(path: Path, section: str, text: str, cycle: int) -> None:
    text = " ".join(text.split())
    if not text:
        return
    content = (path.read_text(encoding="utf-8") if path.exists()
               else "# Workpad\n\n" + "\n\n".join(WORKPAD_SECTIONS) + "\n")
    if section not in content:
        content = content.rstrip() + f"\n\n{section}\n"
    start = content.index(section) + len(section)
    nxt = min((content.index(s, start) for s in WORKPAD_SECTIONS if s != section and s in content[start:]),
              default=len(content))
    body = content[start:nxt].rstrip()
    content = content[:start] + body + f"\n- [cycle {cycle}] {text}\n\n" + content[nxt:].lstrip()
    atomic_write_text(path, content.rstrip() + "\n")


# ----------------------------------------------------------- shared TODO ----

@dataclass
class Todo:
    id: str
    text: str
    meta: str
    done: bool


def read_todos(path: Path) -> list[Todo]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _TODO_LINE.match(line)
        if m:
            out.append(Todo(m["id"], m["text"], m["meta"], m["done"] == "x"))
    return out


def write_todos(path: Path, todos: list[Todo]) -> None:
    lines = list(TODO_HEADING)
    lines += [f"- [{'x' if t.done else ' '}] {t.id} ({t.meta}) {t.text}" for t in todos]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def is_duplicate(text: str, existing: list[Todo], threshold: float = 0.7) -> bool:
    words = _words(text)
    for t in existing:
        other = _words(t.text)
        if words and other and len(words & other) / len(words | other) >= threshold:
            return True
    return False


def todo_cap(base_cap: int, open_count: int) -> int:
    """New TODOs allowed this cycle: the role's cap, tightened as the open backlog grows."""
    if open_count >= 15:
        return 0
    if open_count >= 8:
        return min(base_cap, 1)
    return base_cap


def add_todos(path: Path, items: list[str], author: str, cycle: int, base_cap: int) -> tuple[list[str], list[str]]:
    """Append new items within the cap; returns (added ids, refused texts with why)."""
    todos = read_todos(path)
    open_items = [t for t in todos if not t.done]
    cap = todo_cap(base_cap, len(open_items))
    added, refused = [], []
    for text in items:
        text = " ".join(str(text).split())[:300]
        if not text:
            continue
        if len(added) >= cap:
            refused.append(f"{text!r}: cap {cap} reached (open backlog {len(open_items)})")
        elif is_duplicate(text, open_items):
            refused.append(f"{text!r}: duplicate of an open item")
        else:
            new = Todo(f"T{len(todos) + 1:04d}", text, f"cycle {cycle}, {author}", False)
            todos.append(new)
            open_items.append(new)
            added.append(new.id)
    if added:
        write_todos(path, todos)
    return added, refused


def resolve_todos(path: Path, ids: list[str], cycle: int) -> list[str]:
    todos = read_todos(path)
    wanted = {str(i).strip().upper() for i in ids}
    done = []
    for t in todos:
        if t.id in wanted and not t.done:
            t.done = True
            t.meta += f", resolved cycle {cycle}"
            done.append(t.id)
    if done:
        write_todos(path, todos)
    return done


def todo_summary(path: Path, each_end: int = 3) -> tuple[int, list[str]]:
    """(open count from the whole file, the oldest and newest open items, deduplicated)."""
    open_items = [t for t in read_todos(path) if not t.done]
    picked = open_items[:each_end] + open_items[-each_end:]
    seen, lines = set(), []
    for t in picked:
        if t.id not in seen:
            seen.add(t.id)
            lines.append(f"{t.id}: {t.text}")
    return len(open_items), lines


# ------------------------------------------------- mentor notes, storyline ----

def append_line(path: Path, text: str, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = "" if path.exists() and path.stat().st_size else header + "\n\n"   # also after a failed first append
    fsutil.append_line(path, lead + text.rstrip("\n") + "\n")   # one write: a full disk leaves no fragment


def append_storyline(path: Path, line: str) -> None:
    append_line(path, line, "# Storyline\n\nOne line per cycle: decision -> gate -> outcome.")


def append_mentor_notes(path: Path, cycle: int, trace: str, name: str, verdict: str, question: str,
                        notes: str) -> None:
    text = f"## cycle {cycle} [{trace}] {name}: {verdict}\n"
    if question:
        text += f"- question: {question}\n"
    if notes:
        text += f"- notes: {' '.join(notes.split())}\n"
    append_line(path, text, "# Mentor notes")
