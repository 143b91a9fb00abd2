"""One exception family for llmloop. Messages name the file, key, limit or rule involved."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class LoopError(Exception):
    """Base of every error llmloop raises on purpose."""

    exit_code = 1


class ConfigError(LoopError):
    """A config file is missing, unparsable, or has a wrong/unknown key."""

    exit_code = 2


class UnsupportedModelError(LoopError):
    """A model name timm does not know. Auto-repair keys on the message text."""

    exit_code = 3

    def __init__(self, name: str):
        super().__init__(f"Unsupported model.name: {name}")
        self.name = name


class BudgetExceeded(LoopError):
    """A run broke one of its budget caps; it is a hard fail."""

    exit_code = 4

    def __init__(self, cap: str, limit: float, used: float, note: str = ""):
        super().__init__(f"budget exceeded: {cap} (limit {limit:g}, used {used:g})" + (f"; {note}" if note else ""))
        self.cap, self.limit, self.used = cap, limit, used


class DomainError(LoopError):
    """A task is not a SpicaDomain, or its data cannot be loaded."""

    exit_code = 5


class PolicyRefused(LoopError):
    """The command policy refused a command; the message names the rule."""

    exit_code = 6


class ArchiveTampered(LoopError):
    """An archived file no longer matches its recorded hash."""

    exit_code = 7


class SandboxUnavailable(LoopError):
    """`sandbox: required` and bubblewrap is missing or cannot start a sandbox here."""

    exit_code = 13


def exits_with_code(command: Callable[..., int]) -> Callable[..., int]:
    """The one CLI error wrapper: a LoopError from `command` becomes `error: <message>` on stderr and
    the error's exit code (2 config, 3 unsupported model, 4 budget, 5 domain, ...)."""
    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except LoopError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    return run
