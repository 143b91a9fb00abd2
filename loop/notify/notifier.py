"""Delivery of notifications (loop/notify/mapping.py) through apprise, off the cycle's path.

The daemon feeds the notifier after each cycle and at start and stop (`feed` reads the event log
from where it last stopped: a read of the new lines, no send). One background thread sends from a
bounded queue (the oldest dropped first when full), so a receiver that is down or slow never stops
or slows a cycle: the first failure writes one `notify_degraded` event, the thread retries with
back-off (retry_seconds, doubling up to max_retry_seconds), and the first delivery after that
writes `notify_restored`. A URL is written only as `public_url` shows it; apprise's own log lines
are captured per send (never printed) and redacted before they reach an event or the daemon log.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from loop.config import DaemonConfig
from loop.config.sections import NOTIFY_URLS_ENV, NotifyConfig, split_urls
from loop.errors import ConfigError
from loop.journal.events import EventLog
from loop.notify.mapping import Notification, notifications
from loop.util.secrets import known_secrets, public_url, redact, url_secrets

READ_LIMIT = 4 << 20            # a feed reads at most this much new log (a first feed after a long gap)


@dataclass
class Pending:
    """A notification on its way, with the targets (indices) it has not reached yet."""

    note: Notification
    targets: set[int]
    attempts: int = 0


@dataclass
class Health:
    """Whether delivery works: when it broke, how often it failed since, what was dropped."""

    down_since: float | None = None
    failures: int = 0
    dropped: int = 0
    sent: int = 0
    history: list[str] = field(default_factory=list)


class Notifier:
    """Sends the notifications new events mean; never raises into the daemon and never waits on a send."""

    def __init__(self, cfg: NotifyConfig, urls: list[str], events: EventLog, say=print, secrets=()):
        import apprise

        self.cfg, self.events, self.say = cfg, events, say
        self.secrets = sorted({*url_secrets(urls), *secrets})
        self.shown = [public_url(u) for u in urls]
        self.targets = []
        for url in urls:
            one = apprise.Apprise()
            one.add(url)
            self.targets.append(one)
        self.selected = set(cfg.events)
        self.offset = clean_end(events.path)       # only what happens from now on is notified
        self.queue: deque[Pending] = deque()
        self.health = Health()
        self.cond = threading.Condition()
        self.closing = False
        quiet_apprise()
        self.thread = threading.Thread(target=self._work, name="llmloop-notify", daemon=True)
        self.thread.start()

    # ---- the daemon's side: read the log, queue what it means ----
    def feed(self) -> int:
        """Queue the notifications of the events appended since the last feed; returns how many."""
        try:
            records = self._new_records()
        except OSError as exc:
            self._tell(f"notifications: cannot read {self.events.path}: {exc}")
            return 0
        notes = [n for rec in records for n in notifications(rec) if n.event in self.selected]
        with self.cond:
            for note in notes:
                if len(self.queue) >= self.cfg.queue_size:
                    self.queue.popleft()
                    self.health.dropped += 1
                self.queue.append(Pending(note, set(range(len(self.targets)))))
            self.cond.notify_all()
        return len(notes)

    def _new_records(self) -> list[dict]:
        import json

        path = self.events.path
        size = path.stat().st_size if path.exists() else 0
        if size < self.offset:                  # cut short (a reset): start again at its end
            self.offset = clean_end(path)
            return []
        with open(path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(READ_LIMIT)
        whole = data[:data.rfind(b"\n") + 1]    # a line still being written waits for the next feed
        self.offset += len(whole)
        records = []
        for line in whole.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def close(self, flush_seconds: float | None = None) -> None:
        """Queue the last events, give the queue `flush_seconds` to go out, then stop the thread."""
        self.feed()
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join(self.cfg.stop_flush_seconds if flush_seconds is None else flush_seconds)
        left = len(self.queue)
        if left:
            self._tell(f"notifications: {left} not delivered at stop ({', '.join(self.shown)})")

    # ---- the thread's side: send, retry, say when it broke and when it is back ----
    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                item = self.queue[0]
            ok, reason = self._send(item)
            with self.cond:
                if ok and self.queue and self.queue[0] is item:
                    self.queue.popleft()
                if ok:
                    self.health.sent += 1
                    self._restored(item)
                    continue
                self._degraded(item, reason)
                if self.closing:
                    return                      # at a stop: one try each, no back-off
                self.cond.wait(self._backoff())

    def _send(self, item: Pending) -> tuple[bool, str]:
        import apprise

        item.attempts += 1
        reasons = []
        for index in sorted(item.targets):
            with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
                try:
                    ok = bool(self.targets[index].notify(body=self.body(item.note), title=self.title(item.note),
                                                    notify_type=item.note.level))
                except Exception as exc:        # noqa: BLE001 - a plugin's bug must not end the thread
                    ok = False
                    captured.write(f"{type(exc).__name__}: {exc}")
            if ok:
                item.targets.discard(index)
            else:
                reasons.append(f"{self.shown[index]}: {' '.join(captured.getvalue().split()) or 'not delivered'}")
        return not item.targets, redact("; ".join(reasons), self.secrets)[:500]

    def _backoff(self) -> float:
        return min(self.cfg.max_retry_seconds, self.cfg.retry_seconds * 2 ** max(0, self.health.failures - 1))

    def _degraded(self, item: Pending, reason: str) -> None:
        """Called with the lock held: one event per outage, not one per failure."""
        first = self.health.down_since is None
        self.health.failures += 1
        if not first:
            return
        self.health.down_since = time.time()
        self._event("notify_degraded", item.note.trace, reason=reason, targets=self.shown,
                    notification=item.note.event, queued=len(self.queue), retry_seconds=self._backoff())
        self._tell(f"notifications degraded: {reason}; retrying with back-off, cycles carry on")

    def _restored(self, item: Pending) -> None:
        if self.health.down_since is None:
            return
        down = round(time.time() - self.health.down_since, 1)
        self._event("notify_restored", item.note.trace, down_seconds=down, failed_attempts=self.health.failures,
                    dropped=self.health.dropped, queued=len(self.queue), notification=item.note.event,
                    targets=self.shown)
        self._tell(f"notifications restored after {down:.0f}s ({self.health.failures} failed attempts, "
                   f"{self.health.dropped} dropped)")
        self.health.down_since, self.health.failures, self.health.dropped = None, 0, 0

    def _event(self, kind: str, trace: str, **fields) -> None:
        try:
            self.events.append(kind, trace or "notify", **fields)
        except OSError as exc:                  # a full disk: the daemon's degraded path says so
            self._tell(f"{kind} not written to the event log: {exc}")

    def _tell(self, line: str) -> None:
        try:
            self.say(redact(f"{time.strftime('%H:%M:%S')} {line}", self.secrets))
        except (OSError, ValueError):
            pass

    # ---- what a message says ----
    def title(self, note: Notification) -> str:
        return f"[llmloop {HOST}] {note.title}"

    def body(self, note: Notification) -> str:
        where = f"event: {note.event} · trace {note.trace} · workspace {self.events.path.parent}"
        return redact(f"{note.body}\n\n{where}", self.secrets)


HOST = socket.gethostname()


def clean_end(path: Path) -> int:
    """The offset just past the last whole line of `path`: a torn tail is not read, and the daemon's
    repair_tail cuts exactly there."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = fh.seek(max(0, size - (1 << 16)))
            tail = fh.read()
    except OSError:
        return 0
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else (0 if start == 0 else size)


def quiet_apprise() -> None:
    """apprise's log lines never reach the daemon's log (they may hold a URL's parts); each send
    captures them for its own, redacted, reason."""
    log = logging.getLogger("apprise")
    log.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())


def for_daemon(cfg: DaemonConfig, events: EventLog, say=print) -> Notifier | None:
    """The daemon's notifier, or None when no URL is configured. A URL apprise does not know is a
    ConfigError naming where it came from (and only its scheme)."""
    named = [(f"notify.urls[{i}]", url) for i, url in enumerate(cfg.notify.urls)]
    from_env = split_urls(os.environ.get(NOTIFY_URLS_ENV, ""))
    named += [(f"{NOTIFY_URLS_ENV} (item {i + 1})", url) for i, url in enumerate(from_env)]
    if not named:
        return None
    import apprise  # only when something is sent: its import costs a daemon start about 0.1 s

    for where, url in named:
        if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
            scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
            raise ConfigError(f"{where}: apprise knows no service for a {scheme}:// URL; see "
                              "https://appriseit.com/services/ for the URL forms")
    return Notifier(cfg.notify, cfg.notify.all_urls(), events, say, known_secrets())
