"""The suite's own scheduling: long tests first across workers, a group kept together."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from tests._order import longest_first, plain_id
from tests.conftest import REPO


def item(nodeid: str, group: str | None = None):
    mark = SimpleNamespace(kwargs={"name": group}, args=()) if group else None
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: mark if name == "xdist_group" else None)


def test_long_tests_first_a_group_as_its_total_and_together():
    items = [item("a"), item("b"), item("r1", "ray"), item("c"), item("r2", "ray"), item("new")]
    seconds = {"a": 1.0, "b": 200.0, "r1": 30.0, "c": 40.0, "r2": 30.0}
    order = [i.nodeid for i in longest_first(items, seconds)]
    assert order == ["b", "r1", "r2", "c", "new", "a"]        # ray counts 60 s; an unknown test 5 s


def test_equal_times_keep_collection_order():
    items = [item(n) for n in "xyz"]
    assert [i.nodeid for i in longest_first(items, {})] == ["x", "y", "z"]


def test_plain_id_drops_only_a_group_suffix():
    assert plain_id("tests/t.py::test_a@ray") == "tests/t.py::test_a"
    assert plain_id("tests/t.py::test_b[requests @ https://x/y.whl-map]") == "tests/t.py::test_b[requests @ https://x/y.whl-map]"


GROUPED = """
import json, os, time
import pytest

def note(name):
    with open(os.environ["WHERE_FILE"], "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.mark.xdist_group("g")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    time.sleep(0.2)
    note(f"grouped{i}")

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    time.sleep(0.2)
    note(f"free{i}")
"""

SHARED = """
import time
import pytest
from test_grouped import note

@pytest.fixture(scope="module")
def built():
    note("built")
    return 1

@pytest.mark.parametrize("i", range(6))
def test_shares(built, i):
    time.sleep(0.2)
    note(f"shares{i}")
"""


def test_a_group_and_a_module_fixture_each_run_on_one_worker(tmp_path):
    """`--dist loadgroup` as scripts/test.sh runs it, with this plugin: a group's six tests on one
    worker, and a module-scoped fixture built once. Fails without `keep_groups_together` (pytest 9.2
    drops xdist's suffix: the group's six spread over both workers) or without the module unit (the
    six tests that share the fixture spread, and each worker builds it)."""
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    where = tmp_path / "where.jsonl"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "tests._order",
                          "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WHERE_FILE": str(where), "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [json.loads(line) for line in where.read_text().splitlines()]
    assert len(rows) == 19
    assert len({w for name, w in rows if name.startswith("grouped")}) == 1, rows
    assert [name for name, _ in rows].count("built") == 1, rows
