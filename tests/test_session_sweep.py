"""The test run's leftover sweep (tests/_session.py) kills only what names its own folder: two test
runs on one machine (pytest-26 and pytest-266) must not kill each other's daemons and runs."""
from __future__ import annotations

import subprocess
import sys

from tests._session import sweep

SLEEPER = "import sys, time; time.sleep(120)"


def test_the_sweep_kills_what_names_its_folder_and_spares_a_neighbour_with_the_same_prefix(tmp_path):
    mine, neighbour = tmp_path / "pytest-26", tmp_path / "pytest-266"
    for folder in (mine, neighbour):
        folder.mkdir()
    ours = subprocess.Popen([sys.executable, "-c", SLEEPER, str(mine / "ws" / "daemon.yaml")])
    theirs = subprocess.Popen([sys.executable, "-c", SLEEPER, str(neighbour / "ws" / "daemon.yaml")])
    try:
        killed = sweep(mine)
        assert ours.wait(timeout=30) != 0 and len(killed) == 1 and str(mine) in killed[0]
        assert theirs.poll() is None, "the sweep killed another test run's process"
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
