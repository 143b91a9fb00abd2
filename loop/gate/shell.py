"""The shell parsing the command policy relies on: a `run_command` line as shlex words and
operators, split into simple commands, and GNU-style arguments split into operands and options.
Nothing here judges a command; loop/gate/policy.py does."""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_PUNCT = "();<>|&\n"
SEPARATORS = frozenset({";", "&&", "||", "|", "&", "|&"})
WRITE_REDIRECTS = frozenset({">", ">>", "&>", "&>>", ">|", ">&", "<>"})
READ_REDIRECTS = frozenset({"<", "<&"})
_FD_NUMBER = re.compile(r"(^|[\s;&|])\d+(?=[<>])")   # `2>x` -> `>x`: which fd is written does not matter


@dataclass
class Segment:
    """One simple command between separators. `before`/`after` are the joining operators."""

    words: list[str]
    redirects: list[tuple[str, str]]
    before: str | None = None
    after: str | None = None


def tokenize(command: str) -> list[str]:
    """shlex words and operator runs; newlines are operators. No comments: a `#` hides nothing."""
    lexer = shlex.shlex(_FD_NUMBER.sub(r"\1", command), posix=True, punctuation_chars=_PUNCT)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _classify(token: str) -> str:
    """'word', 'sep', 'redirect', or the refusal reason for an operator the policy will not follow."""
    if not token or not set(token) <= set(_PUNCT):
        return "word"
    if "(" in token or ")" in token:
        return f"subshell or process substitution: {token!r}"
    if "<<" in token:
        return f"here-document or here-string: {token!r}"
    if token in WRITE_REDIRECTS or token in READ_REDIRECTS:
        return "redirect"
    if set(token) <= set(";&|\n") and (token.replace("\n", "") or ";") in SEPARATORS:
        return "sep"
    return f"unrecognised shell operator: {token!r}"


def split_segments(tokens: list[str]) -> tuple[list[Segment], list[str]]:
    segments, reasons = [], []
    current = Segment([], [])
    i = 0
    while i < len(tokens):
        token, kind = tokens[i], _classify(tokens[i])
        if kind == "word":
            current.words.append(token)
        elif kind == "sep":
            current.after = token.replace("\n", "") or ";"
            segments.append(current)
            current = Segment([], [], before=current.after)
        elif kind == "redirect":
            if i + 1 < len(tokens) and _classify(tokens[i + 1]) == "word":
                current.redirects.append((token, tokens[i + 1]))
                i += 1
            else:
                reasons.append(f"redirection without a target: {token!r}")
        else:
            reasons.append(kind)
        i += 1
    segments.append(current)
    return [s for s in segments if s.words or s.redirects], reasons


def split_operands(args: Sequence[str], short_values: str = "",
                   long_values: Iterable[str] = ()) -> tuple[list[str], list[tuple[str, str]]]:
    """Split GNU-style arguments into operands and (option, value) pairs for value-taking options."""
    long_values = set(long_values)
    operands: list[str] = []
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands += args[i + 1:]
            break
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            if key in long_values:
                if not eq and i + 1 < len(args):
                    value, i = args[i + 1], i + 1
                options.append((key, value))
        elif arg.startswith("-") and len(arg) > 1:
            for j, flag in enumerate(arg[1:], 1):
                if flag in short_values:
                    value = arg[j + 1:]
                    if not value and i + 1 < len(args):
                        value, i = args[i + 1], i + 1
                    options.append(("-" + flag, value))
                    break
        else:
            operands.append(arg)
        i += 1
    return operands, options
