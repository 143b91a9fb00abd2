"""The one way llmloop talks to an LLM: an OpenAI-compatible chat endpoint that must answer JSON.

`LLMClient.complete_json` sends a system + user prompt and returns a validated pydantic model:

* structured output is negotiated (loop/agents/formats.py): json_schema, json_object with a schema
  (grammar-constrained on llama.cpp), plain json_object, then a plain prompt; a refusal of the format
  is recognised whatever its status and moves on at once; the mode that worked is kept per endpoint
  and model in the workspace;
* transient failures (timeouts, dropped connections, 429, 5xx) are retried by tenacity with
  jittered exponential backoff, honouring a server's Retry-After; the SDK's own retries are off;
* a reply that is not valid JSON for the model gets exactly one repair request;
* every HTTP request is counted (loop/agents/usage.py): tokens from `usage` or estimated, cost from
  the price table, charged to the shared spend cap, which refuses calls once spent;
* anything else becomes `LLMUnavailable` (carrying what the failed call spent), and no log line,
  event or message carries the API key;
* a circuit breaker per client (loop/agents/breaker.py) counts each failed call once: after
  `circuit_breaker_failures` in a row, calls raise `LLMCircuitOpen` without a request until
  `circuit_breaker_cooldown_seconds` have passed (events `llm_circuit_open` / `llm_circuit_closed`).

HTTP requests per call are bounded: see `max_requests_per_call`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import openai
from openai import APIConnectionError, APITimeoutError
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_exponential, wait_random

from loop.agents.breaker import CircuitBreaker
from loop.agents.credentials import resolve_api_key
from loop.agents.formats import (
    MODES,
    FormatRefused,
    ModeStore,
    is_format_refusal,
    modes_from,
    response_format,
    system_prompt,
)
from loop.agents.retry import RETRY_TRANSIENT, MalformedResponse, is_transient, reply_text, wait_retry_after
from loop.agents.schema import parse_model
from loop.agents.usage import ModelPrice, SpendCap, Usage, request_usage
from loop.config import LLMRole
from loop.errors import LoopError
from loop.util.secrets import redact

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5          # first retry waits about this long, doubling after each failure
BACKOFF_MAX_S = 20.0
ERROR_TEXT_LIMIT = 300        # characters of an error kept in events and messages

REPAIR_PROMPT = ("Your previous reply could not be used: {error}\n"
                 "Reply with only the corrected JSON object matching the {name} schema, nothing else.")

EventSink = Callable[[dict], None]


class LLMUnavailable(LoopError):
    """The endpoint could not produce a valid reply; the message never contains the API key.
    `usage` is what the failed call spent (requests that got no usable reply included)."""

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage or Usage()


class LLMCircuitOpen(LLMUnavailable):
    """Refused without a request: the role's circuit is open for `retry_in_seconds` more."""

    def __init__(self, message: str, retry_in_seconds: float) -> None:
        super().__init__(message)
        self.retry_in_seconds = retry_in_seconds


class LLMBudgetSpent(LLMUnavailable):
    """Refused without a request: the daemon's LLM budget (`llm_budget`) is spent."""


def max_requests_per_call(role: LLMRole) -> int:
    """The most HTTP requests one `complete_json` can send. Each structured-output mode a chat tries
    costs at most `max_attempts` requests (transient retries, then the refusal); the ask walks forward
    through the modes and the repair goes on from the mode the ask ended in."""
    fallbacks = len(MODES) - 1 if role.structured_output == "auto" else 0
    return role.max_attempts * (2 + fallbacks)


# ---------------------------------------------------------------- results ----

@dataclass
class LLMResult:
    parsed: BaseModel
    raw: str
    usage: Usage
    attempts: int        # HTTP attempts, retries and the repair included
    repaired: bool       # True when the repair request produced `parsed`
    mode: str            # the structured-output mode of the call that produced `raw`
    seconds: float = 0.0  # wall time of the whole call


@dataclass
class _Tally:
    """What one `complete_json` spent, across retries, format fallbacks and the repair."""

    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    mode: str = ""


# ----------------------------------------------------------------- client ----

class LLMClient:
    """One role's endpoint. `complete_json` is the only call the loop needs."""

    def __init__(self, role: LLMRole, role_name: str, api_key: str | None,
                 on_event: EventSink | None = None, *, price: ModelPrice | None = None,
                 spend_cap: SpendCap | None = None, mode_store: ModeStore | None = None,
                 backoff_base: float = BACKOFF_BASE_S, backoff_max: float = BACKOFF_MAX_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.role, self.role_name = role, role_name
        self._api_key = api_key
        self._on_event = on_event
        self.price, self.spend_cap, self.mode_store = price, spend_cap, mode_store
        # Jitter spreads the retries of both roles (and of other clients) hitting one endpoint.
        backoff = wait_exponential(multiplier=backoff_base, max=backoff_max) + wait_random(0, backoff_base)
        self._wait = wait_retry_after(backoff)
        self._sleep = sleep               # between retries; injectable so tests check waits, not wall time
        # max_retries=0: tenacity owns retries, so each attempt is counted, logged and redacted here.
        self._client = openai.OpenAI(base_url=role.base_url, api_key=api_key or "no-key",
                                     timeout=role.timeout_seconds, max_retries=0)
        # The structured-output mode in use; under "auto", the remembered one, or None until a call
        # has found one that works.
        self.mode: str | None = role.structured_output
        if role.structured_output == "auto":
            self.mode = mode_store.get(role.base_url, role.model) if mode_store else None
        self.total_usage = Usage()        # over the client's lifetime, for budgets and status
        self.circuit = CircuitBreaker(role.circuit_breaker_failures, role.circuit_breaker_cooldown_seconds, clock)

    # ---- public ----

    def complete_json(self, system: str, user: str, model_cls: type[BaseModel]) -> LLMResult:
        """Ask for one `model_cls` as JSON; one repair request if the reply does not validate.
        Raises `LLMCircuitOpen` or `LLMBudgetSpent` (no request sent), else `LLMUnavailable`."""
        if not self.circuit.allow():
            raise self._circuit_refusal()
        spent = self.spend_cap.exhausted() if self.spend_cap else None
        if spent:
            raise LLMBudgetSpent(f"llm {self.role_name}: {spent}; no request sent")
        tally, started = _Tally(), time.monotonic()
        try:
            result = self._ask_with_repair(system, user, model_cls, tally)
        except Exception as exc:       # retries exhausted, refused, or invalid after the repair
            if isinstance(exc, LLMUnavailable):
                exc.usage = tally.usage
            self._circuit_failed(exc)
            raise
        self._circuit_succeeded()
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def unavailable_for_seconds(self) -> float:
        """How long calls will still be refused without a request (0 unless the circuit is open)."""
        return self.circuit.seconds_until_retry()

    # ---- the ask and its one repair ----

    def _ask_with_repair(self, system: str, user: str, model_cls: type[BaseModel], tally: _Tally) -> LLMResult:
        conversation = [{"role": "user", "content": user}]
        raw = self._chat(system, conversation, model_cls, tally)
        try:
            return self._result(parse_model(model_cls, raw), raw, tally, repaired=False)
        except ValueError as exc:
            problem = str(exc)
        self._note("llm_repair", f"reply invalid, asking once for a repair: {problem}")
        conversation += [{"role": "assistant", "content": raw},
                         {"role": "user", "content": REPAIR_PROMPT.format(error=problem,
                                                                          name=model_cls.__name__)}]
        raw = self._chat(system, conversation, model_cls, tally)
        try:
            return self._result(parse_model(model_cls, raw), raw, tally, repaired=True)
        except ValueError as exc:
            raise self._unavailable(f"invalid reply after one repair: {exc}") from None

    # ---- structured-output negotiation ----

    def _chat(self, system: str, conversation: list[dict], model_cls: type[BaseModel],
              tally: _Tally) -> str:
        """One completed call's text, trying each structured-output mode the endpoint may take."""
        auto = self.role.structured_output == "auto"
        refused: list[str] = []
        for mode in (modes_from(self.mode) if auto else (self.role.structured_output,)):
            messages = [{"role": "system", "content": system_prompt(mode, system, model_cls)}, *conversation]
            try:
                content = self._create(messages, mode, model_cls, tally)
            except FormatRefused as refusal:
                if not auto:
                    raise self._unavailable(
                        f"the endpoint refuses structured_output {mode}: {self._short(refusal.error)}; "
                        "set structured_output: auto to negotiate a mode it takes") from None
                self._note("llm_format_fallback", f"{mode} refused, trying the next mode: {self._short(refusal.error)}")
                refused.append(mode)
                continue
            if auto and mode != self.mode:
                self._remember(mode, refused)
            tally.mode = mode
            return content
        raise AssertionError("unreachable: 'off' is never refused as a format")

    def _remember(self, mode: str, refused: list[str]) -> None:
        """Later calls, and later daemons through the store, start from the mode that worked."""
        self.mode = mode
        if refused:
            self._emit({"kind": "llm_format_negotiated", "role": self.role_name, "mode": mode,
                        "refused": refused, "model": self.role.model})
        if self.mode_store is not None:
            try:
                self.mode_store.put(self.role.base_url, self.role.model, mode)
            except OSError as exc:       # a full disk costs the next start one negotiation, no more
                log.warning("llm %s: could not remember mode %s: %s", self.role_name, mode, exc)

    # ---- one HTTP call, retried ----

    def _create(self, messages: list[dict], mode: str, model_cls: type[BaseModel],
                tally: _Tally) -> str:
        """POST one chat completion (transient failures retried); returns the reply text. Every
        attempt is counted; a refused format raises FormatRefused after one request."""
        kwargs = self._request_kwargs(messages, mode, model_cls)
        prompt_text = "\n".join(str(m["content"]) for m in messages)

        def attempt() -> str:
            tally.attempts += 1
            try:
                response = self._client.chat.completions.create(**kwargs)
                text = reply_text(response)
            except ValueError as exc:       # the SDK's JSON decode of a 200 body
                self._charge(request_usage(None, prompt_text, None, self.price, failed=True), tally)
                raise MalformedResponse(f"reply body is not JSON: {exc}") from None
            except Exception as exc:
                reached = not isinstance(exc, APIConnectionError) or isinstance(exc, APITimeoutError)
                self._charge(request_usage(None, prompt_text, None, self.price, failed=True,
                                           reached_server=reached), tally)
                if is_format_refusal(mode, exc):
                    raise FormatRefused(mode, exc) from None
                raise
            self._charge(request_usage(getattr(response, "usage", None), prompt_text, text, self.price,
                                       failed=False), tally)
            return text

        retrying = Retrying(stop=stop_after_attempt(self.role.max_attempts), wait=self._wait, sleep=self._sleep,
                            retry=RETRY_TRANSIENT, before_sleep=self._before_sleep, reraise=True)
        try:
            return retrying(attempt)
        except FormatRefused:
            raise                          # _chat moves on to the next mode
        except (openai.OpenAIError, MalformedResponse) as exc:
            raise self._unavailable(self._failure_text(exc)) from None

    def _charge(self, usage: Usage, tally: _Tally) -> None:
        tally.usage.add(usage)
        self.total_usage.add(usage)
        if self.spend_cap is not None:
            self.spend_cap.charge(usage)

    def _request_kwargs(self, messages: list[dict], mode: str, model_cls: type[BaseModel]) -> dict:
        kwargs: dict[str, Any] = {"model": self.role.model, "messages": messages}
        fmt = response_format(mode, model_cls)
        if fmt is not None:
            kwargs["response_format"] = fmt
        # Only sent when set: many compatible endpoints reject parameters they do not know.
        if self.role.reasoning_effort is not None:
            kwargs["reasoning_effort"] = self.role.reasoning_effort
        if self.role.temperature is not None:
            kwargs["temperature"] = self.role.temperature
        if self.role.max_output_tokens is not None:
            kwargs["max_tokens"] = self.role.max_output_tokens
        return kwargs

    def _failure_text(self, exc: BaseException) -> str:
        if is_transient(exc):
            return (f"{self.role.model} at {self.role.base_url} failed {self.role.max_attempts} "
                    f"attempt(s); last error: {self._short(exc)}")
        return f"{self.role.model} at {self.role.base_url}: {self._short(exc)}"

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        error = self._short(exc)
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0   # tenacity >= 8.2
        log.warning("llm %s: attempt %d/%d failed (%s); retrying in %.2fs", self.role_name,
                    retry_state.attempt_number, self.role.max_attempts, error, wait)
        self._emit({"kind": "llm_retry", "role": self.role_name, "attempt": retry_state.attempt_number,
                    "error": error, "wait_s": round(wait, 3)})

    # ---- the circuit: one failure per failed call, whatever it spent ----

    def _circuit_refusal(self) -> LLMCircuitOpen:
        wait = self.circuit.seconds_until_retry()
        return LLMCircuitOpen(self._redact(
            f"llm {self.role_name}: circuit open after {self.circuit.consecutive_failures} failed call(s) "
            f"in a row; no request sent; next try in {wait:.1f}s"), wait)

    def _circuit_failed(self, exc: BaseException) -> None:
        if self.circuit.record_failure() != "open":
            return
        failures, cooldown = self.circuit.consecutive_failures, self.circuit.cooldown_seconds
        log.warning("llm %s: circuit open after %d failed call(s) in a row; no requests for %.1fs",
                    self.role_name, failures, cooldown)
        self._emit({"kind": "llm_circuit_open", "role": self.role_name, "failures": failures,
                    "cooldown_s": cooldown, "error": self._short(exc)})

    def _circuit_succeeded(self) -> None:
        failures = self.circuit.consecutive_failures
        if self.circuit.record_success() != "closed":
            return
        log.warning("llm %s: circuit closed (trial call succeeded)", self.role_name)
        self._emit({"kind": "llm_circuit_closed", "role": self.role_name, "failures": failures,
                    "cooldown_s": self.circuit.cooldown_seconds})

    # ---- output that leaves this module: always redacted ----

    def _result(self, parsed: BaseModel, raw: str, tally: _Tally, *, repaired: bool) -> LLMResult:
        return LLMResult(parsed=parsed, raw=raw, usage=tally.usage, attempts=tally.attempts,
                         repaired=repaired, mode=tally.mode)

    def _redact(self, text: str) -> str:
        return redact(text, [self._api_key] if self._api_key else [])

    def _short(self, exc: BaseException | None) -> str:
        # Redact before cutting, so a cut can never leave part of a key behind.
        text = f"{type(exc).__name__}: {exc}"
        cause = exc.__cause__ if exc is not None else None
        if cause is not None:     # "Connection error." alone does not say what went wrong
            text += f" ({type(cause).__name__}: {cause})"
        text = self._redact(text)
        return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + "..."

    def _unavailable(self, text: str) -> LLMUnavailable:
        return LLMUnavailable(self._redact(f"llm {self.role_name}: {text}"))

    def _note(self, kind: str, text: str) -> None:
        text = self._redact(text)
        log.warning("llm %s: %s", self.role_name, text)
        self._emit({"kind": kind, "role": self.role_name, "error": text[:ERROR_TEXT_LIMIT]})

    def _emit(self, event: dict) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:   # a broken event sink must not cost the cycle its decision
            log.exception("llm %s: event sink failed", self.role_name)


def for_role(role: LLMRole, role_name: str, credentials_file: str | Path,
             on_event: EventSink | None = None, *, price: ModelPrice | None = None,
             spend_cap: SpendCap | None = None, mode_store: ModeStore | None = None) -> LLMClient | None:
    """The role's client, or None when it has no base_url (the offline policy plays it)."""
    if role.base_url is None:
        return None
    return LLMClient(role, role_name, resolve_api_key(role, credentials_file), on_event,
                     price=price, spend_cap=spend_cap, mode_store=mode_store)
