"""The daemon's side of tracking: after its start and after every cycle, the trackers catch up with
the workspace (TensorBoard links, MLflow runs); at its stop, the parent run ends.

Best-effort by construction: every sync is wrapped, so a tracker that is down, misconfigured or not
installed never stops a cycle. Its first failure is one `tracking_degraded` event (the reason with
credentials stripped); retries wait `retry_seconds`, doubling up to `max_retry_seconds`, and say
nothing more until one succeeds (`tracking_restored`). What could not be logged meanwhile is still
in the workspace files, so the first sync that succeeds logs it (sources.py)."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loop.archive.paths import ModelPaths
from loop.config import DaemonConfig
from loop.journal.events import EventLog
from loop.tracking.ledger import Ledger, LoggedRun
from loop.tracking.mlflow_sink import MlflowSink
from loop.tracking.plots import curves_png
from loop.tracking.records import flatten, public
from loop.tracking.sources import pending_runs, promotion_states
from loop.tracking.tensorboard_links import board_root, link_runs

PARENT_METRIC = "val_accuracy"        # on the parent run: every training's score at step = its cycle


@dataclass
class Health:
    """One tracker's outages: the first failure is reported, retries back off, success ends it."""

    retry_seconds: float
    max_retry_seconds: float
    failures: int = 0
    retry_at: float = 0.0
    down_since: float | None = None

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> tuple[bool, float]:
        """(first failure of this outage, seconds until the next try)."""
        first = self.down_since is None
        if first:
            self.down_since = now
        wait = min(self.max_retry_seconds, self.retry_seconds * 2 ** self.failures)
        self.failures += 1
        self.retry_at = now + wait
        return first, wait

    def succeeded(self, now: float) -> float | None:
        """Seconds the outage lasted, or None when there was none."""
        down, self.down_since, self.failures, self.retry_at = self.down_since, None, 0, 0.0
        return None if down is None else now - down


class Tracker:
    """The configured trackers of one daemon start (none configured: every call does nothing)."""

    def __init__(self, cfg: DaemonConfig, ws_root: Path, events: EventLog, secrets: list[str] | None = None,
                 say: Callable[[str], None] = print):
        self.cfg, self.ws_root, self.events, self.say = cfg.tracking, Path(ws_root), events, say
        self.secrets = tuple(secrets or ())
        self.sink = MlflowSink(cfg.tracking.mlflow, cfg.root) if cfg.tracking.mlflow else None
        self.daemon_params = flatten(cfg.model_dump(mode="json"))
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.start_id = f"{self.started}-{os.getpid()}"         # one parent run per daemon start
        self.resume_cycle = 0
        self.health = {name: Health(self.cfg.retry_seconds, self.cfg.max_retry_seconds)
                       for name in ("mlflow", "tensorboard")}

    # ---- the daemon's three calls ----
    def start(self, resume_cycle: int) -> None:
        self.resume_cycle = resume_cycle
        self.sync(f"start-{resume_cycle:05d}")

    def sync(self, trace: str, stopping: bool = False) -> None:
        """Catch up with the workspace; never raises."""
        if self.cfg.tensorboard:
            self._attempt("tensorboard", str(board_root(self.ws_root)), trace, lambda: link_runs(self.ws_root))
        if self.sink is not None:
            self._attempt("mlflow", self.sink.target, trace, lambda: self._sync_mlflow(stopping))

    def stop(self, trace: str) -> None:
        """A last sync, and the parent run ended. A tracker still backing off is not waited for (a stop
        stays quick): its parent run ends as KILLED at the next start, which logs what is missing."""
        self.sync(trace, stopping=True)

    # ---- MLflow ----
    def _sync_mlflow(self, stopping: bool) -> int:
        sink = self.sink
        sink.connect()
        ledger = Ledger.load(self.ws_root, sink.target)
        parent = self._parent(ledger)
        logged = 0
        with tempfile.TemporaryDirectory(prefix="llmloop-tracking-") as scratch:
            for run in pending_runs(self.ws_root, {key: r.entry for key, r in ledger.runs.items()}):
                plot = curves_png(run.name, run.curve, Path(scratch) / "curves.png")
                run_id = sink.log_run(run, parent, plot, self.secrets)
                ledger.runs[run.key] = LoggedRun(run_id=run_id, entry=run.entry,
                                                 promotion=run.tags.get("llmloop.promotion"))
                ledger.save(self.ws_root)                  # after each: a failure part-way keeps the others
                if run.kind == "training" and run.cycle is not None:
                    sink.log_point(parent, PARENT_METRIC, run.summary.get("val_accuracy_final", 0.0), run.cycle)
                logged += 1
        self._refresh_promotions(ledger)
        if stopping and parent in ledger.open_parents:
            sink.end_run(parent, "FINISHED")
            ledger.open_parents.remove(parent)
        ledger.save(self.ws_root)
        return logged

    def _parent(self, ledger: Ledger) -> str:
        """This start's parent run; made on the first sync that reaches the store. Parents an earlier
        start left running (it crashed, or the store was down at its stop) end as KILLED."""
        parent = ledger.parents.get(self.start_id)
        if parent is not None:
            return parent
        for stale in ledger.open_parents:
            self.sink.end_run(stale, "KILLED")
        tags = {"llmloop.kind": "daemon", "llmloop.workspace": str(self.ws_root), "llmloop.pid": str(os.getpid()),
                "llmloop.host": socket.gethostname(), "llmloop.resume_cycle": str(self.resume_cycle)}
        params = {k: public(v, self.secrets) for k, v in self.daemon_params.items()}
        parent = self.sink.open_parent(f"daemon {self.started}", params, tags)
        ledger.parents[self.start_id], ledger.open_parents = parent, [parent]
        ledger.save(self.ws_root)
        return parent

    def _refresh_promotions(self, ledger: Ledger) -> None:
        """A candidate's promotion state moves on after it was logged (proposed, approved, retired)."""
        states = promotion_states(ModelPaths(self.ws_root))
        for logged in ledger.runs.values():
            state = states.get(logged.entry) if logged.entry else None
            if state is not None and state != logged.promotion:
                self.sink.set_tags(logged.run_id, {"llmloop.promotion": state})
                logged.promotion = state

    # ---- outages ----
    def _attempt(self, name: str, target: str, trace: str, call: Callable[[], object]) -> None:
        health, now = self.health[name], time.monotonic()
        if not health.due(now):
            return
        try:
            result = call()
        except Exception as exc:                 # anything: a tracker never stops a cycle
            first, wait = health.failed(now)
            if first:
                reason = public(f"{type(exc).__name__}: {exc}", self.secrets)[:1000]
                self._event("tracking_degraded", trace, tracker=name, target=target, reason=reason,
                            retry_in_seconds=round(wait, 1))
                self.say(f"tracking: {name} unavailable ({reason[:200]}); the loop carries on, retrying "
                         f"in {wait:.0f}s")
            return
        down = health.succeeded(now)
        if down is not None:
            self._event("tracking_restored", trace, tracker=name, target=target, down_seconds=round(down, 1),
                        logged=result if isinstance(result, int) else len(result or []))
            self.say(f"tracking: {name} is back after {down:.0f}s")

    def _event(self, kind: str, trace: str, **fields) -> None:
        try:
            self.events.append(kind, trace, **fields)
        except OSError:                          # a full disk is the daemon's own degraded path
            pass
