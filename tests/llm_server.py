"""A real OpenAI-compatible chat-completions server for tests, driven by a script of steps.

Each POST to /v1/chat/completions (or /chat/completions) pops one step:

    {"content": "<assistant text>"}             200 chat.completion (optional "usage" override)
    {"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"}
    {"status": 500} / {"status": 400, "error": "response_format json_schema is not supported"}
    {"delay": 1.0, ...rest of the step}          sleep first (to trigger client timeouts)
    {"drop": True}                               close the socket without any response
    {"truncated": True}                          200 headers, then half the body, then close

An empty script answers 500 "script exhausted". Every request is recorded in `server.requests`
as {"path", "headers", "body"} (headers lower-cased, body parsed JSON).
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PATHS = ("/v1/chat/completions", "/chat/completions")
DEFAULT_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def completion_body(content: str, usage: dict | None = None) -> dict[str, Any]:
    """A minimal but complete `chat.completion` object."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
        "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": dict(usage or DEFAULT_USAGE),
    }


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
        if step.get("truncated"):
            body = json.dumps(completion_body('{"action": "wait"}')).encode()
            self._send_head(200, len(body), {})
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        status = step.get("status", 200)
        if status == 200:
            self._send_json(200, completion_body(step["content"], step.get("usage")), step.get("headers"))
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
    """Scripted server on 127.0.0.1:<free port>, served from a daemon thread."""

    def __init__(self) -> None:
        self.steps: deque[dict] = deque()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
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
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append({"path": path, "headers": {k.lower(): v for k, v in headers.items()},
                                  "body": body})
            return self.steps.popleft() if self.steps else {"status": 500, "error": "script exhausted"}

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
