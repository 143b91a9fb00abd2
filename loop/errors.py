"""One exception family for llmloop, and the one table of the exit codes its processes end with.
Messages name the file, key, limit or rule involved."""
from __future__ import annotations

import functools
import sys
from enum import IntEnum
from typing import Callable


class ExitCode(IntEnum):
    """Every exit code an llmloop process (CLI, daemon, trainer, run wrapper) ends with on purpose.
    Auto-repair and the run judge key on the trainer's (2-5); the README's table lists them."""

    OK = 0
    ERROR = 1                  # any other LoopError
    CONFIG = 2                 # a config or command line is wrong (also a service or dashboard that cannot be set up)
    UNSUPPORTED_MODEL = 3      # the trainer: a model name timm does not know
    BUDGET = 4                 # the trainer: a budget cap was broken (hard fail)
    DOMAIN = 5                 # the task is not a SpicaDomain, or its data cannot be loaded
    POLICY = 6                 # the command policy refused a command
    ARCHIVE_TAMPERED = 7       # an archived file no longer matches its recorded hash
    EVOLUTION = 8              # an evolution window cannot be planned (loop/candidates/scheduler.py)
    PROMOTION = 9              # a promotion, rollback or reject was refused (loop/archive/proposal.py)
    ALREADY_RUNNING = 11       # a daemon already holds this workspace's lock (loop/daemon/process.py)
    FINISH_UP = 12             # a finish-up request is malformed or past its deadline (loop/cycle/finishup.py)
    SANDBOX_UNAVAILABLE = 13   # `sandbox: required` and bubblewrap cannot start a sandbox here
    RAY_UNAVAILABLE = 14       # the Ray cluster cannot be reached (loop/run/ray_link.py)
    WALLTIME = 124             # the run wrapper killed a run past its walltime (as timeout(1) does)
    NOT_STARTED = 127          # the run wrapper could not start the command (as a shell says "not found")


class LoopError(Exception):
    """Base of every error llmloop raises on purpose."""

    exit_code = ExitCode.ERROR


class ConfigError(LoopError):
    """A config file is missing, unparsable, or has a wrong/unknown key."""

    exit_code = ExitCode.CONFIG


class UnsupportedModelError(LoopError):
    """A model name timm does not know. Auto-repair keys on the message text."""

    exit_code = ExitCode.UNSUPPORTED_MODEL

    def __init__(self, name: str):
        super().__init__(f"Unsupported model.name: {name}")
        self.name = name


class BudgetExceeded(LoopError):
    """A run broke one of its budget caps; it is a hard fail."""

    exit_code = ExitCode.BUDGET

    def __init__(self, cap: str, limit: float, used: float, note: str = ""):
        super().__init__(f"budget exceeded: {cap} (limit {limit:g}, used {used:g})" + (f"; {note}" if note else ""))
        self.cap, self.limit, self.used = cap, limit, used


class MetricsError(LoopError):
    """A run's metrics.json is there but unreadable or not a run's metrics; the message names the file."""


class DomainError(LoopError):
    """A task is not a SpicaDomain, or its data cannot be loaded."""

    exit_code = ExitCode.DOMAIN


class PolicyRefused(LoopError):
    """The command policy refused a command; the message names the rule."""

    exit_code = ExitCode.POLICY


class ArchiveTampered(LoopError):
    """An archived file no longer matches its recorded hash."""

    exit_code = ExitCode.ARCHIVE_TAMPERED


class SandboxUnavailable(LoopError):
    """`sandbox: required` and bubblewrap is missing or cannot start a sandbox here."""

    exit_code = ExitCode.SANDBOX_UNAVAILABLE


def exits_with_code(command: Callable[..., int]) -> Callable[..., int]:
    """The one CLI error wrapper: a LoopError from `command` becomes `error: <message>` on stderr and
    the error's exit code (`ExitCode`: 2 config, 3 unsupported model, 4 budget, 5 domain, ...)."""
    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except LoopError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    return run
