"""Structured-output negotiation: which `response_format` an endpoint takes, and remembering it.

Modes, in the order `structured_output: auto` tries them:

    json_schema         {"type": "json_schema", ...}: OpenAI, vLLM, Ollama, LM Studio
    json_object_schema  {"type": "json_object", "schema": ...}: llama-cpp-python's server, which
                        turns the schema into a grammar, so even a 270M model answers schema-valid JSON
    json_object         {"type": "json_object"}: JSON mode, the schema only in the prompt
    off                 no response_format: a plain prompt, parsed and repaired

A refusal of the *format* is recognised whatever its status (400, 422, 500 ...) or wording, as long
as the error names the format; it is never retried as a transient error, and the next mode is tried
at once. The mode that worked is kept per endpoint and model in the workspace (`ModeStore`), so a
restart does not renegotiate.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from loop.agents.schema import json_schema
from loop.util.fsutil import atomic_write_text

if TYPE_CHECKING:                      # openai is imported where a request is made: `llmloop status`, `stop`,
    from openai import APIStatusError  # `watch` read the stored mode (ModeStore) and start 0.6 s sooner

MODES = ("json_schema", "json_object_schema", "json_object", "off")

# Words that make an error a refusal of the response_format rather than of the request as a whole.
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar")
# Statuses that never mean "this format": auth, not found, rate limit. Anything else may.
_NOT_FORMAT_STATUSES = (401, 403, 404, 408, 409, 429)

JSON_ONLY_HINT = ("\n\nReply with exactly one JSON object and nothing else (no prose, no code fences). "
                  "It must match this JSON schema:\n{schema}")


class FormatRefused(Exception):
    """The endpoint refused this mode's response_format: move on to the next mode, do not retry."""

    def __init__(self, mode: str, error: APIStatusError) -> None:
        super().__init__(f"{mode} refused (HTTP {error.status_code})")
        self.mode, self.error = mode, error


def is_format_refusal(mode: str, exc: BaseException) -> bool:
    """True when `exc` is the endpoint saying it cannot do `mode`'s response_format."""
    from openai import APIStatusError

    if mode == "off" or not isinstance(exc, APIStatusError) or exc.status_code in _NOT_FORMAT_STATUSES:
        return False
    text = f"{exc} {exc.body}".lower()
    return any(word in text for word in _FORMAT_WORDS)


def response_format(mode: str, model_cls: type[BaseModel]) -> dict | None:
    """The request's `response_format` for `mode` (None for `off`)."""
    schema = json_schema(model_cls)
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": model_cls.__name__, "schema": schema,
                                                       "strict": False}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def system_prompt(mode: str, system: str, model_cls: type[BaseModel]) -> str:
    """json_schema carries the schema in the request; every other mode also gets it in the prompt
    (a grammar constrains the syntax, but the model still needs to know what the fields mean)."""
    if mode == "json_schema":
        return system
    return system + JSON_ONLY_HINT.format(schema=json.dumps(json_schema(model_cls)))


def modes_from(start: str | None) -> tuple[str, ...]:
    """The modes `auto` tries, from `start` (the remembered one) on."""
    return MODES[MODES.index(start):] if start in MODES else MODES


class ModeStore:
    """The negotiated mode per endpoint and model, in one small JSON file in the workspace."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def key(base_url: str, model: str) -> str:
        return f"{base_url.rstrip('/')}|{model}"

    def read_all(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, base_url: str, model: str) -> str | None:
        entry = self.read_all().get(self.key(base_url, model))
        mode = entry.get("mode") if isinstance(entry, dict) else None
        return mode if mode in MODES else None

    def put(self, base_url: str, model: str, mode: str) -> None:
        data = self.read_all()
        data[self.key(base_url, model)] = {"mode": mode, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
