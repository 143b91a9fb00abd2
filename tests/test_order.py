"""The suite's own scheduling: long tests first across workers, a group kept together."""
from __future__ import annotations

from types import SimpleNamespace

from tests._order import longest_first


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
