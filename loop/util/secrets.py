"""Keep credentials out of logs, events and error messages.

`redact` masks known secret values and the usual key shapes (sk-..., Bearer tokens, api_key=...,
Authorization headers); `known_secrets` lists secret-looking environment values to pass to it.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

MASK = "[REDACTED]"
MIN_SECRET_LEN = 6            # shorter values would mask ordinary words
SECRET_NAME_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Environment names never passed to a run (a little wider than the words whose values are redacted).
SECRET_NAME_MARKERS = (*SECRET_NAME_WORDS, "CREDENTIAL")


def looks_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_NAME_MARKERS)

# (pattern, replacement); a group 1 keeps the label so the text still says what was masked.
# Authorization runs first so "Authorization: Bearer x" collapses to one mask.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S), MASK),
    (re.compile(r"""(authorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+""", re.I), rf"\1{MASK}"),
    (re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), rf"\1{MASK}"),
    (re.compile(r"""(api[_-]?key["':= ]+)[^\s"',;&}]+""", re.I), rf"\1{MASK}"),
    (re.compile(r"sk-[A-Za-z0-9_-]{12,}"), MASK),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret value (len >= 6) and every key-shaped token masked."""
    text = str(text)
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def workspace_secrets(ws_root) -> list[str]:
    """Secrets that live in the workspace: the dashboard's action token (a new one per start, so read
    again each cycle)."""
    from pathlib import Path

    try:
        token = (Path(ws_root) / "logs" / "dashboard.token").read_text().strip()
    except OSError:
        return []
    return [token] if len(token) >= MIN_SECRET_LEN else []


def known_secrets() -> list[str]:
    """Values of environment variables whose name says they hold a secret."""
    return [value for name, value in os.environ.items()
            if any(word in name.upper() for word in SECRET_NAME_WORDS) and len(value) >= MIN_SECRET_LEN]
