"""The one way llmloop talks to an LLM: an OpenAI-compatible chat endpoint that must answer JSON.

`LLMClient.complete_json` sends a system + user prompt and returns a validated pydantic model:

* structured output is negotiated: json_schema, else json_object, else a plain "JSON only" prompt
  (role.structured_output="auto"); the mode that worked is remembered for later calls;
* transient failures (timeouts, dropped connections, 429, 5xx) are retried by tenacity with
  jittered exponential backoff, honouring a server's Retry-After; the SDK's own retries are off;
* a reply that is not valid JSON for the model gets exactly one repair request;
* anything else becomes `LLMUnavailable`, and no log line, event or message carries the API key;
* a circuit breaker per client (loop/agents/breaker.py) counts each failed call once: after
  `circuit_breaker_failures` in a row, calls raise `LLMCircuitOpen` without a request until
  `circuit_breaker_cooldown_seconds` have passed (events `llm_circuit_open` / `llm_circuit_closed`).

HTTP requests per call are bounded: see `max_requests_per_call`.

API keys come from the role's environment variable, else the credentials file `llmloop login` writes.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import openai
from openai import (APIConnectionError, APIStatusError, APITimeoutError, BadRequestError,
                    InternalServerError, RateLimitError)
from pydantic import BaseModel
from tenacity import (RetryCallState, Retrying, retry_if_exception, retry_if_exception_type,
                      stop_after_attempt, wait_exponential, wait_random)
from tenacity.wait import wait_base

from loop.agents.breaker import CircuitBreaker
from loop.agents.schema import json_schema, parse_model
from loop.config import LLMRole
from loop.errors import ConfigError, LoopError
from loop.fsutil import atomic_write_text
from loop.secrets import redact

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5          # first retry waits about this long, doubling after each failure
BACKOFF_MAX_S = 20.0
RETRY_AFTER_CAP_S = 30.0      # a server asking for longer still gets retried after this
ERROR_TEXT_LIMIT = 300        # characters of an error kept in events and messages

MODES = ("json_schema", "json_object", "off")   # the fallback order under "auto"
# A 400 that mentions one of these is read as "this endpoint cannot do that response_format".
_FORMAT_REFUSALS = ("response_format", "json_schema", "json_object", "not supported", "unsupported")

JSON_ONLY_HINT = ("\n\nReply with exactly one JSON object and nothing else (no prose, no code fences). "
                  "It must match this JSON schema:\n{schema}")
REPAIR_PROMPT = ("Your previous reply could not be used: {error}\n"
                 "Reply with only the corrected JSON object matching the {name} schema, nothing else.")

EventSink = Callable[[dict], None]


class LLMUnavailable(LoopError):
    """The endpoint could not produce a valid reply; the message never contains the API key."""


class LLMCircuitOpen(LLMUnavailable):
    """Refused without a request: the role's circuit is open for `retry_in_seconds` more."""

    def __init__(self, message: str, retry_in_seconds: float) -> None:
        super().__init__(message)
        self.retry_in_seconds = retry_in_seconds


class MalformedResponse(Exception):
    """A 200 whose body is not a chat completion (bad JSON, wrong shape): retried like a dropped reply."""


def max_requests_per_call(role: LLMRole) -> int:
    """The most HTTP requests one `complete_json` can send. Each structured-output mode a chat tries
    costs at most `max_attempts` requests; the ask walks forward through the modes and the one repair
    goes on from the mode the ask ended in, so together they try at most two modes more than fallbacks."""
    fallbacks = len(MODES) - 1 if role.structured_output == "auto" else 0
    return role.max_attempts * (2 + fallbacks)


# ------------------------------------------------------------ credentials ----

def resolve_api_key(role: LLMRole, credentials_file: str | Path) -> str | None:
    """The key from `role.api_key_env` in the environment, else from the credentials file."""
    from_env = os.environ.get(role.api_key_env, "").strip()
    if from_env:
        return from_env
    try:
        data = json.loads(Path(credentials_file).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(role.api_key_env) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def write_credentials(path: str | Path, env_name: str, api_key: str) -> None:
    """Merge `env_name: api_key` into the JSON credentials file, written atomically with mode 0600."""
    path = Path(path).expanduser()
    data = _read_credentials(path)
    data[env_name] = api_key
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)      # mkdir's mode is filtered by the umask
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", mode=0o600)


def _read_credentials(path: Path) -> dict[str, Any]:
    """The existing file's mapping ({} when absent); a corrupt one is refused, not overwritten."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the credentials file ({type(exc).__name__}); "
                          "fix or delete it, then log in again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the credentials file must hold a JSON object")
    return data


# ---------------------------------------------------------------- results ----

@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0

    def add(self, other: "Usage") -> "Usage":
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.calls += other.calls
        return self


@dataclass
class LLMResult:
    parsed: BaseModel
    raw: str
    usage: Usage
    attempts: int        # HTTP attempts, retries and the repair included
    repaired: bool       # True when the repair request produced `parsed`
    mode: str            # the structured-output mode of the call that produced `raw`


@dataclass
class _Tally:
    """What one `complete_json` spent, across retries, format fallbacks and the repair."""

    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    mode: str = ""


# ------------------------------------------------------------------ retry ----

def _transient_status(exc: BaseException) -> bool:
    return isinstance(exc, APIStatusError) and (exc.status_code >= 500 or exc.status_code == 429)


TRANSIENT_ERRORS = (APITimeoutError, APIConnectionError, RateLimitError, InternalServerError, MalformedResponse)
RETRY_TRANSIENT = retry_if_exception_type(TRANSIENT_ERRORS) | retry_if_exception(_transient_status)


def _reply_text(response: Any) -> str:
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


# ----------------------------------------------------------------- client ----

class LLMClient:
    """One role's endpoint. `complete_json` is the only call the loop needs."""

    def __init__(self, role: LLMRole, role_name: str, api_key: str | None,
                 on_event: EventSink | None = None, *,
                 backoff_base: float = BACKOFF_BASE_S, backoff_max: float = BACKOFF_MAX_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.role, self.role_name = role, role_name
        self._api_key = api_key
        self._on_event = on_event
        # Jitter spreads the retries of both roles (and of other clients) hitting one endpoint.
        backoff = wait_exponential(multiplier=backoff_base, max=backoff_max) + wait_random(0, backoff_base)
        self._wait = wait_retry_after(backoff)
        # max_retries=0: tenacity owns retries, so each attempt is counted, logged and redacted here.
        self._client = openai.OpenAI(base_url=role.base_url, api_key=api_key or "no-key",
                                     timeout=role.timeout_seconds, max_retries=0)
        # The structured-output mode in use; under "auto", None until a call has found one that works.
        self.mode: str | None = None if role.structured_output == "auto" else role.structured_output
        self.total_usage = Usage()        # over the client's lifetime, for budgets and status
        self.circuit = CircuitBreaker(role.circuit_breaker_failures, role.circuit_breaker_cooldown_seconds, clock)

    # ---- public ----

    def complete_json(self, system: str, user: str, model_cls: type[BaseModel]) -> LLMResult:
        """Ask for one `model_cls` as JSON; one repair request if the reply does not validate.
        Raises `LLMCircuitOpen` (no request sent) while the circuit is open, else `LLMUnavailable`."""
        if not self.circuit.allow():
            raise self._circuit_refusal()
        try:
            result = self._ask_with_repair(system, user, model_cls)
        except Exception as exc:       # retries exhausted, refused, or invalid after the repair
            self._circuit_failed(exc)
            raise
        self._circuit_succeeded()
        return result

    def unavailable_for_seconds(self) -> float:
        """How long calls will still be refused without a request (0 unless the circuit is open)."""
        return self.circuit.seconds_until_retry()

    # ---- the ask and its one repair ----

    def _ask_with_repair(self, system: str, user: str, model_cls: type[BaseModel]) -> LLMResult:
        tally = _Tally()
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
        for mode in self._modes_to_try():
            messages = [{"role": "system", "content": self._system_for(mode, system, model_cls)},
                        *conversation]
            try:
                content = self._create(messages, mode, model_cls, tally)
            except BadRequestError as exc:
                if not self._may_fall_back(mode, exc):
                    raise self._unavailable(f"request refused: {exc}") from None
                self._note("llm_format_fallback", f"{mode} refused, trying the next mode: {exc}")
                continue
            if self.role.structured_output == "auto":
                self.mode = mode          # later calls start from what worked
            tally.mode = mode
            return content
        raise AssertionError("unreachable: 'off' never falls back")

    def _modes_to_try(self) -> tuple[str, ...]:
        if self.role.structured_output != "auto":
            return (self.role.structured_output,)
        return MODES[MODES.index(self.mode or MODES[0]):]

    def _may_fall_back(self, mode: str, exc: BadRequestError) -> bool:
        text = f"{exc} {exc.body}".lower()
        return (self.role.structured_output == "auto" and mode != MODES[-1]
                and any(hint in text for hint in _FORMAT_REFUSALS))

    @staticmethod
    def _system_for(mode: str, system: str, model_cls: type[BaseModel]) -> str:
        # json_schema carries the schema itself; the other modes only get it through the prompt.
        if mode == "json_schema":
            return system
        return system + JSON_ONLY_HINT.format(schema=json.dumps(json_schema(model_cls)))

    @staticmethod
    def _response_format(mode: str, model_cls: type[BaseModel]) -> dict | None:
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {
                "name": model_cls.__name__, "schema": json_schema(model_cls), "strict": False}}
        if mode == "json_object":
            return {"type": "json_object"}
        return None

    # ---- one HTTP call, retried ----

    def _create(self, messages: list[dict], mode: str, model_cls: type[BaseModel],
                tally: _Tally) -> str:
        """POST one chat completion (transient failures retried); returns the reply text."""
        kwargs = self._request_kwargs(messages, mode, model_cls)

        def attempt() -> tuple[Any, str]:
            tally.attempts += 1
            try:
                response = self._client.chat.completions.create(**kwargs)
            except ValueError as exc:       # the SDK's JSON decode of a 200 body
                raise MalformedResponse(f"reply body is not JSON: {exc}") from None
            return response, _reply_text(response)

        retrying = Retrying(stop=stop_after_attempt(self.role.max_attempts), wait=self._wait,
                            retry=RETRY_TRANSIENT, before_sleep=self._before_sleep, reraise=True)
        try:
            response, text = retrying(attempt)
        except BadRequestError:
            raise                          # _chat decides whether it is a format refusal
        except (openai.OpenAIError, MalformedResponse) as exc:
            raise self._unavailable(self._failure_text(exc)) from None
        self._count_usage(response, tally)
        return text

    def _request_kwargs(self, messages: list[dict], mode: str, model_cls: type[BaseModel]) -> dict:
        kwargs: dict[str, Any] = {"model": self.role.model, "messages": messages}
        response_format = self._response_format(mode, model_cls)
        if response_format is not None:
            kwargs["response_format"] = response_format
        # Only sent when set: many compatible endpoints reject parameters they do not know.
        if self.role.reasoning_effort is not None:
            kwargs["reasoning_effort"] = self.role.reasoning_effort
        if self.role.temperature is not None:
            kwargs["temperature"] = self.role.temperature
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

    def _count_usage(self, response: Any, tally: _Tally) -> None:
        got = getattr(response, "usage", None)
        usage = Usage(prompt_tokens=getattr(got, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(got, "completion_tokens", 0) or 0,
                      total_tokens=getattr(got, "total_tokens", 0) or 0, calls=1)
        tally.usage.add(usage)
        self.total_usage.add(usage)

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
             on_event: EventSink | None = None) -> LLMClient | None:
    """The role's client, or None when it has no base_url (the offline policy plays it)."""
    if role.base_url is None:
        return None
    return LLMClient(role, role_name, resolve_api_key(role, credentials_file), on_event)
