"""What LLM calls cost: tokens per request (counted or estimated), money from a price table, and
the spend cap that stops calls once reached.

Every HTTP request is counted, failed, retried and repaired ones included. A reply's `usage` is
used when the server sends it; otherwise the tokens are estimated (about 4 characters a token) and
the call is marked as estimated, so a person paying per token never sees a silent zero.
"""
from __future__ import annotations

from typing import Callable

from pydantic import BaseModel

from loop.config import ModelPrice

CHARS_PER_TOKEN = 4          # the usual rule of thumb for English and JSON with BPE tokenizers


def estimate_tokens(text: str) -> int:
    """About how many tokens `text` is (never 0 for non-empty text)."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


class Usage(BaseModel):
    """Tokens and money spent by some LLM requests (one request, a call, a cycle, a role, a night)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0                # HTTP requests sent
    failed_calls: int = 0         # requests that got no usable reply (errors, refusals, timeouts)
    estimated_calls: int = 0      # requests whose tokens were estimated: the server sent no `usage`
    cost: float = 0.0             # in the price table's currency; 0 when the model has no price

    def add(self, other: "Usage") -> "Usage":
        """Add `other` into this one (in place) and return self."""
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def minus(self, other: "Usage") -> "Usage":
        """A new Usage: this one less `other` (what was spent since `other` was copied)."""
        return Usage(**{name: getattr(self, name) - getattr(other, name) for name in type(self).model_fields})

    @property
    def estimated(self) -> bool:
        return self.estimated_calls > 0

    def describe(self) -> str:
        """One line for status and reports: '1234 tokens (5 calls, 2 estimated), $0.0012'."""
        notes = [f"{self.calls} calls"]
        if self.failed_calls:
            notes.append(f"{self.failed_calls} failed")
        if self.estimated_calls:
            notes.append(f"{self.estimated_calls} estimated")
        text = f"{self.total_tokens} tokens ({', '.join(notes)})"
        return text + (f", cost {self.cost:.4f}" if self.cost else "")


def request_usage(reply_usage: object | None, prompt_text: str, reply_text: str | None,
                  price: ModelPrice | None, *, failed: bool, reached_server: bool = True) -> Usage:
    """The Usage of one HTTP request. `reply_usage` is the reply's `usage` object (None when absent);
    without it the tokens are estimated from the text sent and received. A request that never
    reached the server (connection refused) is a failed call with no tokens."""
    prompt = getattr(reply_usage, "prompt_tokens", None) if reply_usage is not None else None
    completion = getattr(reply_usage, "completion_tokens", None) if reply_usage is not None else None
    estimated = prompt is None and reached_server
    if prompt is None:
        prompt = estimate_tokens(prompt_text) if reached_server else 0
        completion = estimate_tokens(reply_text or "")
    completion = completion or 0
    total = getattr(reply_usage, "total_tokens", None) if reply_usage is not None else None
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion,
                  total_tokens=total or prompt + completion, calls=1,
                  failed_calls=int(failed), estimated_calls=int(estimated))
    usage.cost = price.cost(usage.prompt_tokens, usage.completion_tokens) if price else 0.0
    return usage


class SpendCap:
    """The daemon's LLM budget (config `llm_budget`), shared by both roles' clients: once spent,
    calls are refused without a request. Counts from the daemon's start (`spent` begins empty)."""

    def __init__(self, max_cost: float | None = None, max_tokens: int | None = None,
                 on_spent: Callable[[str], None] | None = None) -> None:
        self.max_cost, self.max_tokens = max_cost, max_tokens
        self.spent = Usage()
        self._on_spent = on_spent
        self._announced = False

    def charge(self, usage: Usage) -> None:
        self.spent.add(usage)
        reason = self.exhausted()
        if reason and not self._announced:
            self._announced = True
            if self._on_spent is not None:
                self._on_spent(reason)

    def exhausted(self) -> str | None:
        """Why no more calls may be made, or None while there is budget left."""
        if self.max_tokens is not None and self.spent.total_tokens >= self.max_tokens:
            return f"LLM token budget spent: {self.spent.total_tokens} of {self.max_tokens} tokens"
        if self.max_cost is not None and self.spent.cost >= self.max_cost:
            return f"LLM cost budget spent: {self.spent.cost:.4f} of {self.max_cost:.4f}"
        return None
