"""Commands that only read files or move a link stay light: `llmloop archive verify | list` hash
files and read CSV, `rollback` and `promote --reject | --show` move GEN_HEAD or read the proposal,
so none may import torch (about 4 s) through the promotion pipeline's modules."""
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


def test_rollback_and_reject_move_gen_head_without_importing_torch(tmp_path):
    from loop.archive.headswitch import cutover
    from loop.archive.proposal import Proposal, ProposalHashes

    paths = ModelPaths(tmp_path / "ws")
    for gen in (1, 2, 3):
        run = tmp_path / f"run-{gen}"
        run.mkdir()
        (run / "model.safetensors").write_bytes(os.urandom(4096))
        add_archive_entry(paths, run, f"m-G00{gen}-a", gen, promoted=gen < 3)
    cutover(paths, "m-G002-a")
    done, modules = run_importtime("rollback", "--workspace", str(paths.workspace))
    assert done.returncode == 0, done.stderr[-2000:]
    assert paths.head_name() == "m-G001-a" and "m-G002-a -> m-G001-a" in done.stdout
    assert heavy(modules) == []
    proposal = Proposal(current_head="m-G001-a", proposed_head="m-G003-a", reason="test", improvement=0.1,
                        score=0.6, head_score=0.5, metrics=None, gates={}, timestamp="2026-12-06T00:00:00Z",
                        hashes=ProposalHashes(model="0" * 64, manifest="0" * 64, hashes_csv="0" * 64))
    paths.proposal.write_text(proposal.model_dump_json())
    for args in (("promote", "--show"), ("promote", "--reject")):
        done, modules = run_importtime(*args, "--workspace", str(paths.workspace))
        assert done.returncode == 0 and "m-G003-a" in done.stdout, done.stderr[-2000:]
        assert heavy(modules) == [], args
    assert not paths.proposal.exists() and paths.head_name() == "m-G001-a"


def test_the_check_sees_torch_where_it_is_imported(workspace):
    """The same check on a command that does need torch (approve loads the models) finds it: the
    tests above can fail."""
    done, modules = run_importtime("promote", "--approve", "--workspace", str(workspace.workspace))
    assert "no pending proposal" in done.stderr + done.stdout
    assert "torch" in heavy(modules)


def test_status_imports_neither_torch_nor_openai_nor_scipy(tmp_path):
    """`llmloop status` (every operator script's first call, `status.sh` in a loop) reads the
    workspace's files: no torch, no LLM client (openai is imported where a request is made), no
    scipy (imported where the noise rule tests)."""
    done, modules = run_importtime("status", "--workspace", str(tmp_path / "ws"))
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "loop.daemon.status" in modules, "the check must see the command's own module"
    assert heavy(modules) == [] and not {"openai", "scipy"} & {m.split(".")[0] for m in modules}, \
        sorted(m for m in modules if m.split(".")[0] in ("openai", "scipy", *HEAVY))[:10]


def test_the_slot_plan_on_a_machine_without_a_gpu_driver_imports_no_torch():
    """A daemon plans its device slots at start-up; where no GPU driver shows itself there is no GPU
    to count, so torch (2 CPU-s, 300 MB in a daemon that may never judge a run) stays unimported."""
    from loop.run.slots import GPU_DRIVER_MARKERS

    if any(os.path.exists(m) for m in GPU_DRIVER_MARKERS):
        pytest.skip("this machine has a GPU driver: torch counts its GPUs")
    code = "import sys; from loop.run.slots import plan_slots; s = plan_slots('auto', None); " \
           "print(len(s), s[0].gpu, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(max(1, os.cpu_count() // 4)), "None", "False"]
