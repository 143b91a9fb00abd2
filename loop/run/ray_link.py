"""The daemon's line to a Ray cluster. The Ray driver lives in a child process
(loop/run/ray_driver.py), never in the daemon: Ray's core worker ends its own process once the GCS
has been gone for 60 s, and a driver call can retry for minutes; a child can be killed and started
again while the daemon goes on.

- Start-up check: the address is resolved as Ray resolves it (auto: RAY_ADDRESS, then the cluster
  `ray start` recorded) and probed with a plain TCP connect (`PROBE_TIMEOUT_S`); the driver then has
  `executor.connect_timeout_seconds` to join. Either failing is `RayUnavailable`, naming the address
  and the fix: an error within a minute, never a hang.
- Calls: one request at a time, each with a timeout. One that times out, a driver that died, or an
  error while the GCS port refuses connections marks the link down: the driver is killed, and a new
  one is tried in the background after `retry_seconds`, doubling up to `max_retry_seconds`.
- Reports: `on_event("executor_degraded", ...)` once when an outage starts, `executor_restored`
  when a new driver has joined.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from loop.errors import ExitCode, LoopError
from loop.run.ray_driver import FETCH_TIMEOUT_S, RAY_TIMEOUT_S

PROBE_TIMEOUT_S = 3.0        # a TCP connect to the GCS port: refused at once when no head listens
CALL_TIMEOUT_S = 2 * RAY_TIMEOUT_S + 5     # one request; the driver's own Ray calls time out first
FETCH_CALL_TIMEOUT_S = FETCH_TIMEOUT_S + CALL_TIMEOUT_S
PACKAGE_PARENT = Path(__file__).resolve().parents[2]     # the driver imports this very package
FIX = ("start a head with `ray start --head --node-ip-address 127.0.0.1 --port 6379` (then executor.address: "
       "127.0.0.1:6379), set executor.address to a running cluster's GCS address, or use executor.kind: local")


class RayUnavailable(LoopError):
    """The Ray cluster cannot be reached (at start: nothing runs; mid-night: the executor degrades)."""

    exit_code = ExitCode.RAY_UNAVAILABLE


class RayCallError(Exception):
    """A request the driver answered with an error while the cluster itself still answers."""


def explain(address: str, detail: str) -> str:
    return f"the Ray cluster at {address} (executor.address) cannot be reached: {detail.rstrip('.')}. Fix: {FIX}"


def resolve(address: str) -> tuple[str, int]:
    """The host and port Ray itself connects to for `address` (a ray:// address: its client server)."""
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].split("/")[0].rpartition(":")
        return (host, int(port)) if sep else (port, 10001)
    from ray._private.services import canonicalize_bootstrap_address

    try:
        canonical = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise RayUnavailable(explain(address, str(exc))) from None
    if canonical is None:
        raise RayUnavailable(explain(address, "no running cluster is named (address: local starts none here)"))
    host, _, port = canonical.rpartition(":")
    return host.strip("[]"), int(port)


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def check_reachable(cfg) -> None:
    """The quick half of the start-up check (no driver): raises RayUnavailable when no GCS listens."""
    host, port = resolve(cfg.address)
    refused = probe(host, port)
    if refused:
        raise RayUnavailable(explain(cfg.address, f"nothing answers at {host}:{port} ({refused})"))


class RayLink:
    """The daemon's line to its Ray driver process (see the module docstring)."""

    def __init__(self, cfg, log_path: Path | None = None,
                 on_event: Callable[[str, dict], None] | None = None):
        self.cfg, self.log_path = cfg, log_path
        self.on_event = on_event or (lambda kind, fields: None)
        self.reason = ""
        self._calls = threading.Lock()           # one request at a time on the socket
        self._state = threading.Lock()
        self._conn: Connection | None = None
        self._proc: subprocess.Popen | None = None
        self._opened = self._closed = False
        self._down_since: float | None = None    # monotonic start of the outage (None: up)
        self._failures, self._retry_at = 0, 0.0
        self._reconnecting: threading.Thread | None = None

    # ---- up or down ----
    def connect(self) -> None:
        """The start-up check: connected within the configured time, or RayUnavailable."""
        conn, proc = self._open()
        with self._state:
            self._conn, self._proc, self._opened = conn, proc, True

    def available(self) -> bool:
        """Up? While down, a reconnect is started in the background when one is due (never waited for)."""
        if not self._opened:
            self.connect()
        restored = None
        with self._state:
            if self._closed:
                return False
            if self._conn is not None and self._down_since is not None:
                restored, self._down_since, self._failures = time.monotonic() - self._down_since, None, 0
            elif self._conn is None and self._reconnecting is None and time.monotonic() >= self._retry_at:
                self._reconnecting = threading.Thread(target=self._reconnect, name="ray-link-reconnect", daemon=True)
                self._reconnecting.start()
            up = self._conn is not None
        if restored is not None:
            self.on_event("executor_restored", {"address": self.cfg.address, "down_seconds": round(restored, 1)})
        return up

    def call(self, op: str, *args, timeout: float = CALL_TIMEOUT_S):
        """The driver's answer to `op`; RayUnavailable when the link is (or goes) down, RayCallError
        when the request failed but the cluster still answers."""
        if not self.available():
            raise RayUnavailable(explain(self.cfg.address, self.reason))
        with self._calls:
            conn, failure = self._conn, None
            try:
                if conn is None:
                    raise EOFError("the link went down")
                conn.send((op, args))
                if not conn.poll(timeout):
                    raise TimeoutError(f"no answer to `{op}` within {timeout:.0f}s")
                status, value = conn.recv()
            except (OSError, EOFError, TimeoutError) as exc:
                failure = f"the Ray driver stopped answering ({type(exc).__name__}: {exc})"
        if failure is None and status == "err":
            refused = probe(*resolve(self.cfg.address))
            if refused is None:
                raise RayCallError(value)
            failure = f"{value}; the GCS refuses connections ({refused})"
        if failure is not None:
            self._lost(failure)
            raise RayUnavailable(explain(self.cfg.address, failure))
        return value

    def check(self) -> None:
        """A TCP probe of the GCS: a lost head is noticed at once, not after a call's timeout."""
        refused = probe(*resolve(self.cfg.address))
        if refused:
            self._lost(f"the GCS refuses connections ({refused})")
            raise RayUnavailable(explain(self.cfg.address, self.reason))

    def close(self) -> None:
        """End the driver (the daemon is done with the cluster; its actors live on)."""
        with self._state:
            self._closed = True
            conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        _end(conn, proc, grace=5.0)

    # ---- helpers ----
    def _lost(self, reason: str) -> None:
        with self._state:
            conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
            first = self._down_since is None and not self._closed
            if self._down_since is None:
                self._down_since = time.monotonic()
            wait = self._backoff()
            self.reason = reason
        _end(conn, proc)                 # killed, not asked: it may be stuck inside Ray
        if first:
            self.on_event("executor_degraded", {"address": self.cfg.address, "reason": reason[:1000],
                                                "when_unavailable": self.cfg.when_unavailable,
                                                "retry_in_seconds": round(wait, 1)})

    def _backoff(self) -> float:
        wait = min(self.cfg.max_retry_seconds, self.cfg.retry_seconds * 2 ** self._failures)
        self._failures += 1
        self._retry_at = time.monotonic() + wait
        return wait

    def _reconnect(self) -> None:
        try:
            conn, proc = self._open()
        except Exception as exc:  # noqa: BLE001 (still down: try again later)
            with self._state:
                self._backoff()
                self.reason, self._reconnecting = str(exc), None
            return
        with self._state:
            keep = not self._closed
            if keep:
                self._conn, self._proc = conn, proc
            self._reconnecting = None
        if not keep:
            _end(conn, proc)

    def _open(self) -> tuple[Connection, subprocess.Popen]:
        """Probe the GCS, start a driver, wait (bounded) for it to join."""
        check_reachable(self.cfg)
        ours, theirs = socket.socketpair()
        settings = {"address": self.cfg.address, "namespace": self.cfg.namespace, "runtime_env": self.cfg.runtime_env}
        env = dict(os.environ, RAY_gcs_server_request_timeout_seconds=str(RAY_TIMEOUT_S),
                   PYTHONPATH=os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p))
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            # cwd: Ray puts the driver's folder on its workers' path, so they import RunActor from it
            proc = subprocess.Popen([sys.executable, "-m", "loop.run.ray_driver", str(theirs.fileno()),
                                     json.dumps(settings)], pass_fds=(theirs.fileno(),), cwd=PACKAGE_PARENT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)     # a Ctrl-C meant for the daemon is not its
        finally:
            theirs.close()
            if log is not subprocess.DEVNULL:
                log.close()
        conn = Connection(ours.detach())
        where = f" (its log: {self.log_path})" if self.log_path else ""
        try:
            if not conn.poll(self.cfg.connect_timeout_seconds):
                raise RayUnavailable(explain(self.cfg.address, f"the Ray driver did not join within "
                                                               f"{self.cfg.connect_timeout_seconds:.0f}s{where}"))
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                status, value = "err", f"the Ray driver exited (code {proc.poll()}){where}"
            if status != "ok":
                raise RayUnavailable(explain(self.cfg.address, value))
        except BaseException:
            _end(conn, proc)
            raise
        return conn, proc


def _end(conn: Connection | None, proc: subprocess.Popen | None, grace: float = 0.0) -> None:
    """Close our end; the driver exits at its next read (given `grace` seconds), else it is killed."""
    if conn is not None:
        try:
            conn.close()
        except OSError:
            pass
    if proc is None:
        return
    if grace:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
