"""Failure signatures (loop/run/failure.py): the same failure in two run folders is one signature,
different failures are two, and a broken machine is told apart from a bad configuration."""
from __future__ import annotations

from loop.run.failure import signature_of

SEMLOCK = """\
2026-12-06 08:29:38 train resnet10t on image_folder: 4536 train / 1080 val images
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/work/main/loop/trainer/train.py", line 304, in _train
    for images_u8, labels, index in loader:
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/multiprocessing/synchronize.py", line {line}, in __init__
    sl = self._semlock = _multiprocessing.SemLock(
                         ^^^^^^^^^^^^^^^^^^^^^^^^^
PermissionError: [Errno 13] Permission denied
"""
SHAPES = """\
Traceback (most recent call last):
  File "/ws/runs/mutate-c4-c00004-1a2b3c/out/x.py", line 12, in forward
    return self.fc(x)
RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x{n} and 512x10)
"""


def test_one_failure_in_two_folders_is_one_signature_and_it_is_infrastructure():
    a = signature_of("failed", 1, SEMLOCK.format(line=57))
    b = signature_of("failed", 1, "other noise before\n" + SEMLOCK.format(line=61))
    assert a is not None and a.key == b.key
    assert a.category == "infrastructure"
    assert a.exc_type == "PermissionError" and a.frame == "synchronize.py:__init__"
    assert "SemLock" not in a.message and "Errno <n>" in a.message


def test_a_bad_configuration_is_told_apart_and_numbers_paths_are_normalised():
    a = signature_of("failed", 1, SHAPES.format(n=256))
    b = signature_of("failed", 1, SHAPES.format(n=1024))
    assert a.key == b.key and a.category == "configuration"
    assert a.exc_type == "RuntimeError" and a.frame == "x.py:forward"
    assert a.key != signature_of("failed", 1, SEMLOCK.format(line=57)).key


def test_trainer_errors_kills_and_caps_each_get_their_kind():
    model = signature_of("failed", 3, "error: Unsupported model.name: resnet999\n")
    assert (model.exc_type, model.category) == ("UnsupportedModelError", "configuration")
    killed = signature_of("killed", None, "progress 20/70\n")
    assert (killed.exc_type, killed.category) == ("Killed", "infrastructure")
    assert signature_of("failed", -9, "").message == "by SIGKILL"
    assert signature_of("failed", 137, "").message == "by SIGKILL"
    capped = signature_of("timed_out", None, "progress 60/70\n")
    assert capped.category == "budget"
    budget = signature_of("failed", 4, "error: budget exceeded: max_steps (limit 100, used 101)\n")
    assert budget.category == "budget"
    sandbox = signature_of("failed", 1, "bwrap: Can't bind mount /x on /y: No such file or directory\n")
    assert (sandbox.exc_type, sandbox.category) == ("SandboxError", "infrastructure")
    assert signature_of("ok", 0, "") is None and signature_of("interrupted", None, SHAPES) is None
