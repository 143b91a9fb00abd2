"""Longest first across xdist workers (a pytest plugin, loaded by tests/conftest.py).

Two workers take tests in collection order, so a five-minute test collected last runs alone while
the other worker idles. Sorted by the durations of the last quiet full run (tests/durations.json,
written by `scripts/test.sh --write-durations=tests/durations.json`), the long tests start first and
the short ones fill the gaps. An `xdist_group`, or a module whose tests share a module-scoped fixture,
stays together on one worker and counts as its total. One process (`-n 0`) keeps
file order, so a test is still read and debugged where it is written.

It also makes `--dist loadgroup` group at all under pytest 9.2: xdist 3.8 marks a grouped test by
appending `@group` to `item._nodeid`, but pytest 9.2 keeps a node's id in `item._id` (a `NodeId`),
so the suffix was lost and every group's tests were spread over both workers (two Ray clusters at
once, the fuzz tally split). `keep_groups_together` writes the suffix where pytest reads it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN_S = 5.0          # a test new since the file was written: somewhere in the middle
SHARED_SCOPES = ("class", "module", "package")


def group_of(item) -> str | None:
    """The test's unit of scheduling: its `xdist_group`, else its module where a test of it shares a
    module-scoped fixture (so the fixture is built once, on one worker, not once per block of its
    tests that longest-first ordering would scatter: the tracked night was built four times), else None."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return mark.kwargs.get("name") or (mark.args[0] if mark.args else None)
    return f"module-{item.path.stem}" if shares_a_fixture(item) else None


def shares_a_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(chain[-1].scope in SHARED_SCOPES for chain in defs if chain)


GROUP_SUFFIX = re.compile(r"@[A-Za-z0-9_.-]+$")    # xdist's `@group` (a parameter id may hold "@ x", never this)


def plain_id(nodeid: str) -> str:
    """A test's id without xdist's group suffix: the durations file's key."""
    return GROUP_SUFFIX.sub("", nodeid)


def keep_groups_together(items: list, groups: dict[int, str | None]) -> None:
    """Give each grouped test the `@group` id suffix xdist's loadgroup scheduler splits on."""
    for item in items:
        group = groups[id(item)]
        if group is None or item.nodeid.endswith(f"@{group}"):
            continue                      # ungrouped, or xdist's own suffix took (pytest before 9.2)
        set_id(item, f"{plain_id(item.nodeid)}@{group}")


def set_id(item, text: str) -> None:
    """pytest 9.2 keeps a node's id as a structured `_id`; before it, a plain `_nodeid`."""
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(text)
    else:
        item._nodeid = text


def units(items: list) -> dict[int, str | None]:
    """Each test's unit (`group_of`), read once: it reads the test's fixtures."""
    return {id(i): group_of(i) for i in items}


def longest_first(items: list, seconds: dict[str, float], groups: dict[int, str | None] | None = None) -> list:
    """Items sorted by their unit's expected seconds (a group's total), longest first, stable."""
    own = {id(i): seconds.get(plain_id(i.nodeid), UNKNOWN_S) for i in items}
    groups = units(items) if groups is None else groups
    totals: dict[str, float] = {}
    for i in items:
        if (g := groups[id(i)]) is not None:
            totals[g] = totals.get(g, 0.0) + own[id(i)]
    first_at = {}
    for n, i in enumerate(items):                 # a group sorts at its first member: it stays one block
        first_at.setdefault(groups[id(i)] or i.nodeid, n)

    def key(item):
        unit = groups[id(item)] or item.nodeid
        return -(totals[unit] if unit in totals else own[id(item)]), first_at[unit]
    return sorted(items, key=key)


@pytest.hookimpl(trylast=True)         # after xdist's own attempt at the suffix
def pytest_collection_modifyitems(config, items) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    groups = units(items)
    if getattr(config.option, "loadgroup", False):
        keep_groups_together(items, groups)
    if DURATIONS.exists():
        items[:] = longest_first(items, json.loads(DURATIONS.read_text()), groups)


# ------------------------------------------------- writing the durations file ----

_seen: dict[str, float] = {}


def pytest_addoption(parser) -> None:
    parser.addoption("--write-durations", metavar="PATH", default=None,
                     help="write each test's seconds (setup + call + teardown) to PATH as JSON at the end; "
                          "spell it --write-durations=PATH: pytest reads an existing PATH outside the "
                          "repo given as a separate word as a test path, before this option is known")


def pytest_runtest_logreport(report) -> None:
    key = plain_id(report.nodeid)
    _seen[key] = _seen.get(key, 0.0) + report.duration    # xdist: on the controller too


def pytest_sessionfinish(session) -> None:
    path = session.config.getoption("--write-durations")
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):
        text = json.dumps({k: round(v, 2) for k, v in sorted(_seen.items())}, indent=0)
        Path(path).write_text(text + "\n")
