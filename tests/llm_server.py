"""A real OpenAI-compatible chat-completions server for tests, driven by a script of steps.

Each POST to /v1/chat/completions (or /chat/completions) pops one step:

    {"content": "<assistant text>"}             200 chat.completion (optional "usage" override;
                                                 "usage": None sends no usage, as some servers do)
    {"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"}
    {"status": 500} / {"status": 400, "error": "response_format json_schema is not supported"}
    {"delay": 1.0, ...rest of the step}          sleep first (to trigger client timeouts)
    {"drop": True}                               close the socket without any response
    {"reset": True}                              close the socket with a TCP reset (RST)
    {"truncated": True}                          200 headers, then half the body, then close
    {"malformed": True}                          200 with a complete body that is not valid JSON
    {"status": 500, "body": {...}}               any status with this exact JSON body (real servers'
                                                 refusal shapes: see REFUSALS)

An empty script answers 500 "script exhausted", unless the server has a `FaultPlan`: then a
seeded draw per request injects one fault (429 with Retry-After, 500, reset, a delay past the
client's timeout, a malformed or truncated body, or reply text that is not JSON) at the plan's
rate, and answers `plan.content` otherwise. Every request is recorded in `server.requests` as
{"path", "headers", "body", "fault", "at"} (headers lower-cased, body parsed JSON, fault the
injected kind or None, at the time.monotonic() of arrival); long campaigns drain it with
`take_requests()` as they go.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PATHS = ("/v1/chat/completions", "/chat/completions")
DEFAULT_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


# Refusals of a response_format as real servers send them (status, body). The llama-cpp-python one
# is what its 0.3.x server answered to json_schema (bench/llama_server.py --probe shows it live).
REFUSALS = {
    "llama_cpp_500": {"status": 500, "body": {"error": {
        "message": "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input "
                   "should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': "
                   "\"'text' or 'json_object'\"}}]", "type": "internal_server_error"}}},
    "fastapi_422": {"status": 422, "body": {"detail": [{
        "type": "literal_error", "loc": ["body", "response_format", "type"],
        "msg": "Input should be 'text' or 'json_object'", "input": "json_schema"}]}},
    "openai_400": {"status": 400, "body": {"error": {
        "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
        "type": "invalid_request_error", "param": "response_format", "code": None}}},
    "grammar_500": {"status": 500, "body": {"error": {
        "message": "failed to parse grammar from the JSON schema", "type": "server_error"}}},
}


# ------------------------------------------------------------ fault plan ----

FAULT_KINDS = ("rate_limit", "server_error", "reset", "timeout", "malformed_body", "truncated", "bad_content")
MALFORMED_BODY = b'{"id": "chatcmpl-test", "object": "chat.completion", "choices": [{"index": 0,'


@dataclass
class FaultPlan:
    """Seeded faults: each request gets one of `kinds` with probability `rate`, else `content`."""

    rate: float = 0.3
    seed: int = 0
    content: str = '{"action": "wait", "rationale": "nothing to do", "run_label": "w1"}'
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: str = "0"            # the 429's Retry-After header
    delay_s: float = 0.5              # the timeout fault's delay: set it past the client's timeout
    injected: Counter = field(default_factory=Counter)    # kind -> count, as drawn

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self._rng = random.Random(self.seed)

    def draw(self) -> tuple[dict, str | None]:
        """The next request's step and the fault kind it injects (None for a good reply)."""
        if self._rng.random() >= self.rate:
            return {"content": self.content}, None
        kind = self._rng.choice(self.kinds)
        self.injected[kind] += 1
        return self._step(kind), kind

    def _step(self, kind: str) -> dict:
        return {
            "rate_limit": {"status": 429, "headers": {"Retry-After": self.retry_after}, "error": "injected 429"},
            "server_error": {"status": 500, "error": "injected 500"},
            "reset": {"reset": True},
            "timeout": {"delay": self.delay_s, "content": self.content},
            "malformed_body": {"malformed": True},
            "truncated": {"truncated": True},
            "bad_content": {"content": 'Sure! {"action": "wait", "rationale": '},
        }[kind]


def completion_body(content: str, usage: dict | None = DEFAULT_USAGE) -> dict[str, Any]:
    """A minimal but complete `chat.completion` object (without `usage` when usage is None)."""
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
        "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    return body


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path not in PATHS:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        step = self.server.owner.record_and_pop(self.path, dict(self.headers), raw)
        if step.get("delay"):
            time.sleep(step["delay"])
        if step.get("drop"):
            self.close_connection = True      # nothing written: the client sees a dropped socket
            return
        if step.get("reset"):
            # SO_LINGER 0 makes close() send RST instead of FIN: the client sees "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if step.get("malformed"):
            self._send_head(200, len(MALFORMED_BODY), {})
            self.wfile.write(MALFORMED_BODY)
            return
        if step.get("truncated"):
            body = json.dumps(completion_body('{"action": "wait"}')).encode()
            self._send_head(200, len(body), {})
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        status = step.get("status", 200)
        if "body" in step:
            self._send_json(status, step["body"], step.get("headers"))
        elif status == 200:
            self._send_json(200, completion_body(step["content"], step.get("usage", DEFAULT_USAGE)),
                            step.get("headers"))
        else:
            error = {"message": step.get("error", f"scripted {status}"), "type": "test_error"}
            self._send_json(status, {"error": error}, step.get("headers"))

    def _send_head(self, status: int, length: int, headers: dict | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        try:
            self._send_head(status, len(body), headers)
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the client gave up (timeout test): nothing to do


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: "LLMServer"


class LLMServer:
    """Scripted server on 127.0.0.1:<free port> (or `port`, to come back where it was), served from
    a daemon thread."""

    def __init__(self, faults: FaultPlan | None = None, port: int = 0) -> None:
        self.steps: deque[dict] = deque()
        self.requests: list[dict] = []
        self.faults = faults                  # answers requests once the script is empty
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        # A short poll interval keeps shutdown (every test's teardown) fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *steps: dict) -> None:
        with self._lock:
            self.steps.extend(steps)

    def record_and_pop(self, path: str, headers: dict, raw: bytes) -> dict:
        body = self._parse_body(raw)
        with self._lock:
            step, fault = self._next_step()
            self.requests.append({"path": path, "headers": {k.lower(): v for k, v in headers.items()},
                                  "body": body, "fault": fault, "at": time.monotonic()})
            return step

    def take_requests(self) -> list[dict]:
        """The requests recorded so far, removed from `requests` (for campaigns that count as they go)."""
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def _next_step(self) -> tuple[dict, str | None]:
        if self.steps:
            return self.steps.popleft(), None
        if self.faults is not None:
            return self.faults.draw()
        return {"status": 500, "error": "script exhausted"}, None

    @staticmethod
    def _parse_body(raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return raw.decode("utf-8", "replace")

    def __enter__(self) -> "LLMServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def llm_server():
    with LLMServer() as server:
        yield server
