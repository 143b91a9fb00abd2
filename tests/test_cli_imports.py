"""Commands that only read files stay light: `llmloop archive verify | list` hash files and read
CSV, so they must not import torch (about 4 s) through the promotion pipeline's modules."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loop.archive.paths import ModelPaths
from loop.errors import ArchiveTampered
from tests.conftest import REPO, add_archive_entry

HEAVY = ("torch", "torchvision", "timm")


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output (`import time: self | cumulative | name`)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":                   # the header line
                names.add(name)
    return names


def run_importtime(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "loop.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return done, imported_modules(done.stderr)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture
def workspace(tmp_path):
    """An archive of two frozen entries (stand-in weights); the second one tampered with."""
    paths = ModelPaths(tmp_path / "ws")
    for gen, name in ((1, "m-G001-a"), (2, "m-G002-a")):
        run = tmp_path / f"run-{gen}"
        run.mkdir()
        (run / "model.safetensors").write_bytes(os.urandom(4096))
        (run / "config.json").write_text('{"name": "resnet10t", "num_classes": 10}\n')
        (run / "train_args.json").write_text('{"run": {"epochs": 1}}\n')
        (run / "train.log").write_text("epoch 1 loss 0.5\n")
        add_archive_entry(paths, run, name, gen, promoted=gen == 1)
    weights = paths.archive / "m-G002-a" / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"tampered" + weights.read_bytes()[8:])
    return paths


def test_archive_verify_does_not_import_torch(workspace):
    done, modules = run_importtime("archive", "verify", "--workspace", str(workspace.workspace))
    assert done.returncode == ArchiveTampered.exit_code, done.stderr[-2000:]
    assert "ok   m-G001-a" in done.stdout and "FAIL m-G002-a" in done.stdout      # it really hashed both
    assert "loop.archive.freeze" in modules                                     # the parse sees imports
    assert heavy(modules) == []


def test_archive_list_does_not_import_torch(workspace):
    done, modules = run_importtime("archive", "list", "--workspace", str(workspace.workspace))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "m-G001-a" in done.stdout and "m-G002-a" in done.stdout
    assert heavy(modules) == []


def test_the_check_sees_torch_where_it_is_imported(workspace):
    """The same check on a command that does need torch (the promotion pipeline) finds it: the
    two tests above can fail."""
    done, modules = run_importtime("promote", "--show", "--workspace", str(workspace.workspace))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" in heavy(modules)
