"""A real HTTP receiver on 127.0.0.1 for apprise's json:// notifications: it records every POST
(path, headers, JSON body). It can start down, its port bound but not listening (a connection is
refused, as from a receiver that is off), and come up later on the same port."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, up: bool = True):
        self.received: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", errors="replace")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"raw": raw}
                owner.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()                  # the port is ours from now on; refused until up()
        self.port = self.server.server_address[1]
        self.thread: threading.Thread | None = None
        if up:
            self.up()

    def up(self) -> None:
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "notify", userinfo: str = "") -> str:
        return f"json://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{path}"

    def events(self) -> list[str]:
        """The notify event of each message received, in order (from the `event: X` line of its body)."""
        found = [re.search(r"event: (\w+)", m["body"].get("message", "")) for m in self.received]
        return [f.group(1) if f else "?" for f in found]

    def messages(self, event: str) -> list[dict]:
        return [m["body"] for m, e in zip(self.received, self.events()) if e == event]
