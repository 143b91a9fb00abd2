"""No import circle in loop/, lazy imports inside functions and TYPE_CHECKING blocks included (grimp
reads every import statement, wherever it sits). The executor and the Ray executor once imported each
other; the data report and its summary did too."""
from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")      # installed with import-linter (the dev extra)


def circles(graph, prefix: str) -> list[list[str]]:
    """For each import a -> b with `a` under `prefix`: the way back from b to a, when there is one."""
    found = []
    for a in sorted(m for m in graph.modules if m == prefix or m.startswith(prefix + ".")):
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back:
                found.append([a, *back])
    return found


def test_no_module_of_loop_imports_itself_back():
    graph = grimp.build_graph("loop", include_external_packages=False, cache_dir=None)
    assert circles(graph, "loop") == []


def test_the_check_sees_a_circle_made_of_lazy_imports(tmp_path, monkeypatch):
    """The check finds a circle closed by an import inside a function (so it can fail)."""
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from circ.a import g  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circ", include_external_packages=False, cache_dir=None)
    assert circles(graph, "circ") == [["circ.a", "circ.b", "circ.a"], ["circ.b", "circ.a", "circ.b"]]
