"""When an LLM request is worth sending again: transient errors, Retry-After, and what a reply
must look like to count as one (tenacity policies, composed by the client)."""
from __future__ import annotations

from typing import Any

from openai import APIConnectionError, APIStatusError, APITimeoutError, InternalServerError, RateLimitError
from tenacity import RetryCallState, retry_if_exception, retry_if_exception_type
from tenacity.wait import wait_base

RETRY_AFTER_CAP_S = 30.0      # a server asking for longer still gets retried after this


class MalformedResponse(Exception):
    """A 200 whose body is not a chat completion (bad JSON, wrong shape): retried like a dropped reply."""


def _transient_status(exc: BaseException) -> bool:
    return isinstance(exc, APIStatusError) and (exc.status_code >= 500 or exc.status_code == 429)


TRANSIENT_ERRORS = (APITimeoutError, APIConnectionError, RateLimitError, InternalServerError, MalformedResponse)
RETRY_TRANSIENT = retry_if_exception_type(TRANSIENT_ERRORS) | retry_if_exception(_transient_status)


def reply_text(response: Any) -> str:
    """The first choice's text ("" when there is no choice); a reply of any other shape is malformed."""
    if not hasattr(response, "choices"):         # the SDK hands back a non-JSON body as str
        raise MalformedResponse(f"reply is a {type(response).__name__}, not a chat completion")
    choices = response.choices
    if not choices:
        return ""
    message = getattr(choices[0], "message", None) if isinstance(choices, list) else None
    content = getattr(message, "content", None)
    if message is None or not isinstance(content, (str, type(None))):
        raise MalformedResponse("reply has no choices[0].message with text content")
    return content or ""


def is_transient(exc: BaseException) -> bool:
    """The same test as RETRY_TRANSIENT, for an exception already raised."""
    return isinstance(exc, TRANSIENT_ERRORS) or _transient_status(exc)


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """A status error's Retry-After header in seconds (HTTP dates are ignored), else None."""
    if not isinstance(exc, APIStatusError):
        return None
    try:
        seconds = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


class wait_retry_after(wait_base):
    """Wait what the server asked for (capped; default RETRY_AFTER_CAP_S), else what `fallback` says."""

    def __init__(self, fallback: wait_base, cap: float | None = None) -> None:
        self.fallback, self.cap = fallback, cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc)
        if asked is None:
            return self.fallback(retry_state)
        return min(asked, RETRY_AFTER_CAP_S if self.cap is None else self.cap)


