"""loop/util/exiting.py ends a process as `sys.exit` does, less the collector's last walk: the exit
code, atexit handlers and flushed streams are the same (the time it saves is in bench/startup.py)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import atexit, sys
from loop.util.exiting import exit_process
atexit.register(lambda: print("atexit ran", flush=False))
sys.stdout.write("buffered line\\n")
sys.stderr.write("to stderr\\n")
exit_process(int(sys.argv[1]))
"""


def test_the_exit_code_atexit_handlers_and_buffered_output_are_those_of_sys_exit():
    for code in (0, 3):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(code)], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
        assert out.returncode == code
        assert out.stdout == "buffered line\natexit ran\n" and out.stderr == "to stderr\n"


def test_the_entry_points_end_through_it():
    """`python -m loop.trainer`, `python -m loop.cli`, `python -m loop.cli.main`, PHASE and the
    `llmloop` console script: the processes that import torch."""
    import tomllib

    for module in ("loop/trainer/__main__.py", "loop/phase/__main__.py"):
        assert "exit_process(main())" in (REPO / module).read_text(), module
    assert "exit_process(main())" in (REPO / "loop/cli/main.py").read_text()           # entry()
    assert "    entry()" in (REPO / "loop/cli/main.py").read_text()                    # python -m loop.cli.main
    assert (REPO / "loop/cli/__main__.py").read_text().rstrip().endswith("\nentry()")  # python -m loop.cli
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llmloop"] == "loop.cli.main:entry"
