"""Auto-repair, the retry command: read and rewrite an option's values in the failed command, a
shell string or an argv list, and give back the same type. A string is edited in place where the
option is written plainly, so the rest of the line (quoting, `&&`, redirects) stays as written.
"""
from __future__ import annotations

import re
import shlex
from typing import Callable, Sequence, Union

Command = Union[str, list[str]]

_SHELL_SYNTAX = set("|&;<>()$`")


def command_tokens(command: Command) -> list[str]:
    """The command's argv (a string is split as the shell would)."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def option_values(tokens: Sequence[str], option: str) -> list[str]:
    """Every value given to `option`, as `option VALUE` or `option=VALUE`, in order."""
    values = []
    for i, tok in enumerate(tokens):
        if tok == option and i + 1 < len(tokens):
            values.append(tokens[i + 1])
        elif tok.startswith(option + "="):
            values.append(tok[len(option) + 1:])
    return values


def rewrite_option(command: Command, option: str, match: Callable[[str], bool], new: str) -> Command | None:
    """Replace each value of `option` that `match`es with `new`; same type back (None: unsafe for a string)."""
    if isinstance(command, list):
        return _rewrite_tokens(command, option, match, new)
    tokens = shlex.split(command)
    olds = {v for v in option_values(tokens, option) if match(v)}
    text = command
    for old in olds:
        text, count = _replace_textually(text, option, old, new)
        if count == 0:
            # Written in a form the pattern misses (e.g. backslash escapes): re-join, unless that
            # would quote away shell syntax such as `&&` or a redirect.
            if _SHELL_SYNTAX & set(command):
                return None
            return shlex.join(_rewrite_tokens(tokens, option, match, new))
    return text


def _rewrite_tokens(tokens: Sequence[str], option: str, match: Callable[[str], bool], new: str) -> list[str]:
    out = list(tokens)
    for i, tok in enumerate(out):
        if tok == option and i + 1 < len(out) and match(out[i + 1]):
            out[i + 1] = new
        elif tok.startswith(option + "=") and match(tok[len(option) + 1:]):
            out[i] = f"{option}={new}"
    return out


def _replace_textually(text: str, option: str, old: str, new: str) -> tuple[str, int]:
    """Swap `option old` / `option=old` / `option "old"` in a shell string, leaving the rest as written."""
    pattern = re.compile(rf"(?<!\S)({re.escape(option)}(?:=|\s+))(['\"]?){re.escape(old)}\2(?!\S)")
    return pattern.subn(lambda m: m.group(1) + shlex.quote(new), text)
