"""A failed run's signature: what broke, where, and whose fault it is, so the loop can tell one
failure seen twice from two different ones, and a broken machine from a bad configuration.

  exc_type   the exception that ended the run (from its last traceback, the trainer's own
             `error:` line and exit code, or the supervisor: timed out, stalled, killed)
  message    its message with paths, numbers and ids normalised (two runs in two folders that
             fail the same way share one message)
  frame      the innermost frame it came from, `file.py:function` (line numbers move with edits)
  category   infrastructure (sandbox, permission, memory, disk, a missing file or package, killed)
             | configuration (the run's settings) | budget (a cap the run reached) | unknown
  key        a short hash of the four: equal keys are the same failure
"""
from __future__ import annotations

import hashlib
import re
import signal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from loop.errors import BudgetExceeded, ConfigError, DomainError, UnsupportedModelError

Category = Literal["infrastructure", "configuration", "budget", "unknown"]
TAIL_BYTES = 20_000              # the end of a log holds the traceback that ended the run

# the trainer's exit codes (loop/errors.py) when it printed `error: <message>` instead of a traceback
EXIT_TYPES = {int(error.exit_code): error.__name__
              for error in (ConfigError, UnsupportedModelError, BudgetExceeded, DomainError)}
INFRA_TYPES = {"PermissionError", "MemoryError", "OSError", "IOError", "FileNotFoundError", "NotADirectoryError",
               "IsADirectoryError", "ConnectionError", "BrokenPipeError", "ConnectionResetError", "TimeoutError",
               "ModuleNotFoundError", "ImportError", "OutOfMemoryError", "SandboxError", "Killed", "Stalled",
               "StaleOrphan"}
INFRA_MESSAGE = re.compile(r"out of memory|cannot allocate memory|no space left|shared memory|semlock|"
                           r"dataloader worker|bus error|permission denied|cuda error|nccl|"
                           r"no such file|not a folder|does not exist|unreadable|cannot read|read-only file system",
                           re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+, in (\S+)', re.MULTILINE)
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Exceeded|Warning))(?::\s?(.*))?$")
_NORMALISE = (
    (re.compile(r"c\d{5}-[0-9a-f]{6}"), "<trace>"),                     # cycle trace ids in run folders
    (re.compile(r"(?:[A-Za-z]:)?(?:/[^\s'\":,()\[\]]+)+"), "<path>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b[0-9a-f]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![A-Za-wyz_])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),   # 64x256 too, not resnet10t
)


class FailureSignature(BaseModel):
    """What ended a failed run, normalised; `key` is equal for the same failure."""

    key: str
    category: Category
    exc_type: str
    message: str = ""
    frame: str = ""

    def text(self) -> str:
        """One line for the storyline, status and the Builder: 'PermissionError: ... @ f.py:g [key]'."""
        where = f" @ {self.frame}" if self.frame else ""
        return f"{self.exc_type}" + (f": {self.message}" if self.message else "") + f"{where} [{self.key}]"


def normalise(message: str) -> str:
    text = " ".join(message.split())
    for pattern, mark in _NORMALISE:
        text = pattern.sub(mark, text)
    return text[:200]


def last_traceback(log_text: str) -> tuple[str, str, str] | None:
    """(exception type, message, innermost frame) of the last Python traceback in a log."""
    start = log_text.rfind(_TRACEBACK)
    if start < 0:
        return None
    block = log_text[start + len(_TRACEBACK):]
    frames = _FRAME.findall(block)
    for line in block.splitlines():
        if line and not line[0].isspace():
            found = _EXC_LINE.match(line.strip())
            if found:
                frame = f"{Path(frames[-1][0]).name}:{frames[-1][1]}" if frames else ""
                return found.group(1).rsplit(".", 1)[-1], found.group(2) or "", frame
    return None


def trainer_error(log_text: str) -> str | None:
    """The message of the trainer's own last `error: ...` line (a LoopError, no traceback)."""
    lines = [ln[len("error: "):] for ln in log_text.splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else None


def signal_text(exit_code: int | None) -> str:
    """'by SIGKILL' for -9 (Popen) or 137 (a shell's 128 + 9); 'no exit code' when none was written."""
    if exit_code is None:
        return "no exit code"
    number = -exit_code if exit_code < 0 else exit_code - 128
    try:
        return f"by {signal.Signals(number).name}"
    except ValueError:
        return f"exit {exit_code}"


def categorise(exc_type: str, message: str) -> Category:
    if exc_type == "BudgetExceeded" or exc_type == "TimedOut":
        return "budget"
    if exc_type in INFRA_TYPES or INFRA_MESSAGE.search(message):
        return "infrastructure"
    return "configuration" if exc_type else "unknown"


def signature_of(status: str, exit_code: int | None, log_text: str, error: str | None = None
                 ) -> FailureSignature | None:
    """The signature of a run that ended with `status` (None for ok, running or stopped runs)."""
    if status in ("ok", "running", "interrupted"):
        return None
    found = last_traceback(log_text)
    if status == "timed_out":
        exc_type, message, frame = "TimedOut", "walltime limit reached", ""
    elif status in ("stalled", "stale_orphan"):
        exc_type, message, frame = ("Stalled" if status == "stalled" else "StaleOrphan"), error or "", ""
    elif found is not None:
        exc_type, message, frame = found
    elif (text := trainer_error(log_text)) is not None:
        exc_type, message, frame = EXIT_TYPES.get(exit_code or 0, "Error"), text, "loop.trainer"
    elif (bwrap := next((ln for ln in reversed(log_text.splitlines()) if ln.startswith("bwrap: ")), None)):
        exc_type, message, frame = "SandboxError", bwrap[len("bwrap: "):], "bwrap"
    elif exit_code is None or exit_code < 0 or exit_code >= 128:
        exc_type, message, frame = "Killed", signal_text(exit_code), ""
    else:
        exc_type, message, frame = "", f"exit {exit_code}", ""
    message = normalise(message)
    category = categorise(exc_type, message)
    key = hashlib.sha256(f"{category}|{exc_type}|{message}|{frame}".encode()).hexdigest()[:8]
    return FailureSignature(key=key, category=category, exc_type=exc_type or "Failed", message=message, frame=frame)
