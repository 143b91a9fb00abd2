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
    from loop.util.workspace import Workspace

    try:
        token = (Workspace(ws_root).logs / "dashboard.token").read_text().strip()
    except OSError:
        return []
    return [token] if len(token) >= MIN_SECRET_LEN else []


def known_secrets() -> list[str]:
    """Values of environment variables whose name says they hold a secret."""
    return [value for name, value in os.environ.items()
            if any(word in name.upper() for word in SECRET_NAME_WORDS) and len(value) >= MIN_SECRET_LEN]


# Generic webhooks (json://, form://, xml://) put their tokens in the path, which apprise's privacy
# view shows: there a path part that looks like a token (letters and digits, or long) is one.
_WEBHOOK_SCHEMES = ("json", "jsons", "form", "forms", "xml", "xmls")
_URL_SPLIT = re.compile(r"[/:@?&=#,;+]")


def url_secrets(urls: Iterable[str]) -> list[str]:
    """The secret parts of notification URLs, for `redact`: the password, every query value whose
    key says it is secret, every part apprise's own privacy view hides (tokens in the host or path:
    tgram://, discord://, slack:// ...) and token-like path parts of generic webhooks. Each raw and
    percent-decoded. Parts shorter than MIN_SECRET_LEN cannot be masked (they would mask words)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    found: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        try:
            password = parts.password
        except ValueError:
            password = None
        found |= {password or ""} | {v for k, v in parse_qsl(parts.query) if looks_secret(k)}
        found |= {v for k, _, v in (pair.partition("=") for pair in parts.query.split("&")) if looks_secret(k)}
        shown = _privacy_view(url)
        pieces = [p for p in _URL_SPLIT.split(f"{parts.netloc}/{parts.path}?{parts.query}") if p]
        found |= {p for p in pieces if shown is None or (p not in shown and unquote(p) not in shown)}
        if parts.scheme.lower() in _WEBHOOK_SCHEMES:
            found |= {p for p in parts.path.split("/") if _token_like(unquote(p))}
    found |= {unquote(s) for s in found}
    return sorted(s for s in found if len(s) >= MIN_SECRET_LEN)


def _privacy_view(url: str) -> str | None:
    """The URL as apprise shows it with privacy on (tokens and passwords masked), or None when apprise
    does not know the URL (then every part counts as secret)."""
    import apprise

    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    return None if not plugin else plugin.url(privacy=True)


def _token_like(part: str) -> bool:
    has_digit, has_alpha = any(c.isdigit() for c in part), any(c.isalpha() for c in part)
    return len(part) >= 20 or (has_digit and has_alpha and len(part) >= MIN_SECRET_LEN)


def public_url(url: str) -> str:
    """A notification URL as it may be written anywhere: apprise's privacy view, then redacted (the
    scheme alone when apprise does not know it)."""
    shown = _privacy_view(url)
    if shown is None:
        return f"{url.split('://', 1)[0]}://{MASK}"
    return redact(shown.split("?", 1)[0], url_secrets([url]))
