"""The Ray executor: each run is a detached, named Ray actor on the cluster that starts the very
command the local executor would (the exit-file wrapper around the sandboxed trainer), so the
worker runs it in the same sandbox, and the daemon sees the same run folder afterwards.

- Placement: Ray's own resources, `num_cpus_per_run` and `num_gpus_per_run` (Ray sets the actor's
  CUDA_VISIBLE_DEVICES; the run inherits it and its thread share).
- Names: `llmloop-<workspace owner>-<run tag>` in the config's namespace. A daemon restart finds its
  run by that name and re-adopts it; any other actor of this workspace no state names is killed
  (`cancel_strays`): no orphans on the cluster.
- Limits: the daemon's monitor kills a run past its walltime (the actor kills the run's process
  tree, then the actor itself goes); the trainer's own budget stops it too.
- The run folder: with `shared_storage: true` (the default) workers write the workspace path
  directly. Without it the run goes to a scratch folder on the worker (every mention of the run
  folder in its command is rewritten), and when it ends the folder comes back as a gzip tar whose
  sha256 is checked before it is unpacked into the workspace; stall detection needs the log, so it
  is off for such runs (the walltime still holds).
- The cluster out of reach (loop/run/ray_link.py): at start an error; mid-night one
  `executor_degraded` event, then a new run waits for the cluster (at most one monitor window, so
  no cycle blocks past it) or, with `when_unavailable: local`, runs on this machine through the
  local executor; a run already on the cluster is followed from its folder (its exit file) until
  the cluster answers again (`executor_restored`).

Ray is an optional extra (`pip install -e .[cluster]`); `executor.kind: ray` without it is a config
error that says so.
"""
from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import time
from pathlib import Path
from typing import Callable

from loop.errors import ConfigError, LoopError
from loop.journal.events import EventLog
from loop.run.kill import RUN_TAG, kill_tree
from loop.run.local_executor import LocalExecutor
from loop.run.plan import RunPlan, child_env
from loop.run.ray_link import FETCH_CALL_TIMEOUT_S, RayCallError, RayLink, RayUnavailable
from loop.run.supervise import ActiveRun, is_alive, kill_run, prepare_run, record_placement

PLACEMENT_POLL_S = 1.0       # how often a run waiting for room (or for the cluster) checks for a stop
STRAYS_TIMEOUT_S = 120.0     # cancelling a restart's leftovers: one bounded Ray call per actor
INSTALL_HINT = "pip install -e '.[cluster]' (or pip install 'ray==2.60.0')"


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"executor.kind: ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from None
    return ray


def unpack(data: bytes, digest: str, run_dir: Path) -> None:
    """Unpack a run folder sent back by a worker, after checking its hash; no member may leave it."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise LoopError(f"{run_dir}: the run folder sent back by the Ray worker does not match its sha256")
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(run_dir, filter="data")       # the data filter refuses absolute paths and ../


class RayExecutor:
    """Runs as detached named actors on a Ray cluster (see the module docstring); keeps the
    `Executor` contract of loop/run/supervise.py."""

    kind = "ray"

    def __init__(self, cfg, repo_root: Path, ws_root: Path, sandbox=None,
                 local: Callable[[], LocalExecutor] | None = None, wait_seconds: float = 60.0,
                 say: Callable[[str], None] = print):
        import_ray()
        self.cfg = cfg
        self.repo_root = Path(repo_root)
        self.sandbox = sandbox
        self.pool = None                         # Ray's resources place runs, not the local slot pool
        self.owner = re.sub(r"[^A-Za-z0-9]+", "-", getattr(sandbox, "owner", "") or Path(ws_root).name)
        self.wait_seconds = wait_seconds         # the longest a new run waits for a lost cluster
        self.say = say
        self.events = EventLog(Path(ws_root) / "events.jsonl")
        self.link = RayLink(cfg, Path(ws_root) / "logs" / "ray_driver.log", on_event=self._event)
        self._make_local = local or self._default_local
        self._local = None
        self.abandoned: set[str] = set()         # actors whose placement the link lost: ended once it is back

    # ---- connection ----
    def connect(self) -> None:
        """The start-up check: RayUnavailable (naming the address and the fix) unless the cluster answers."""
        self.link.connect()

    def close(self) -> None:
        self.link.close()

    def name_of(self, run_tag: str) -> str:
        return f"llmloop-{self.owner}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", run_tag)

    def local(self) -> LocalExecutor:
        """The local executor runs fall back to (`when_unavailable: local`)."""
        if self._local is None:
            self._local = self._make_local()
        return self._local

    # ---- the contract ----
    def submit(self, plan: RunPlan, cycle: int, retry_of: str | None = None, should_stop=lambda: False,
               on_wait=None, wait: bool = True) -> ActiveRun | None:
        for _attempt in range(2):          # the link may go down during the submit: then wait once more
            if not self.reachable(wait, should_stop, on_wait):
                break
            try:
                return self._submit(plan, cycle, retry_of, should_stop, on_wait, wait)
            except RayUnavailable:
                continue
        if self.cfg.when_unavailable == "local":
            return self.local().submit(plan, cycle, retry_of, should_stop, on_wait, wait)
        return None

    def alive(self, run: ActiveRun) -> bool:
        if run.executor != self.kind:
            return self.local().alive(run)
        try:
            state = self.link.call("poll", self._name(run))
        except RayUnavailable:           # out of reach: judged from what this host can see
            if Path(run.exit_file).exists():
                return False
            return is_alive(run) if self._here(run) else True    # elsewhere: unknown; its walltime holds
        except RayCallError:             # the cluster answers, the actor not yet: follow on (walltime holds)
            return True
        if state == "gone":              # its actor went (a head restarted); its wrapper may live on here
            return self._here(run) and is_alive(run)
        return state == "running"

    def kill(self, run: ActiveRun) -> None:
        if run.executor != self.kind:
            return self.local().kill(run)
        try:
            found = self.link.call("kill", self._name(run))
        except (RayUnavailable, RayCallError):
            found = False
        if not found and self._here(run):    # no actor to ask: end it as the local executor would
            kill_run(run)
        self.collect(run)

    def collect(self, run: ActiveRun) -> None:
        """Bring the run folder home (when storage is not shared), then end the actor."""
        if run.executor != self.kind:
            return self.local().collect(run)
        name = self._name(run)
        try:
            data, digest = self.link.call("fetch", name, timeout=FETCH_CALL_TIMEOUT_S)
            if data:
                unpack(data, digest, Path(run.run_dir))
        except (RayUnavailable, RayCallError):
            pass                          # the folder holds what the run wrote to shared storage
        finally:
            self._end(name)
            if self._here(run):           # a wrapper killed with its worker leaves the run orphaned: none stays
                kill_tree(tag=run.run_tag, tag_key=RUN_TAG)

    def adopt(self, run: ActiveRun) -> bool:
        return self.alive(run)

    def cancel_strays(self, keep: set[str]) -> list[str]:
        """Kill this workspace's actors that no state names (a run tag in `keep` is kept)."""
        return self.link.call("strays", f"llmloop-{self.owner}-", sorted(self.name_of(t) for t in keep),
                              timeout=STRAYS_TIMEOUT_S)

    def describe(self, run: ActiveRun) -> str:
        return f"{run.device} via {run.executor}"

    # ---- helpers ----
    def reachable(self, wait: bool, should_stop, on_wait) -> bool:
        """The cluster answers now, or (mode wait) within one monitor window; reconnects back off."""
        if self.link.available():
            return True
        if not wait or self.cfg.when_unavailable == "local":
            return False
        deadline, told = time.monotonic() + self.wait_seconds, False
        while time.monotonic() < deadline and not should_stop():
            if not told and on_wait is not None:
                on_wait()
                told = True
            time.sleep(PLACEMENT_POLL_S)
            if self.link.available():
                return True
        return False

    def _submit(self, plan: RunPlan, cycle: int, retry_of: str | None, should_stop, on_wait,
                wait: bool) -> ActiveRun | None:
        prepared = prepare_run(plan.label, plan.trace_id, plan.argv, plan.run_dir, self.repo_root,
                               child_env(self.repo_root), self.sandbox,
                               {"OMP_NUM_THREADS": str(max(1, int(self.cfg.num_cpus_per_run)))}, plan.reads,
                               plan.walltime_limit_seconds)
        name = self.name_of(prepared.run_tag)
        start_args = [prepared.command, prepared.env, str(self.repo_root), str(plan.run_dir), str(prepared.log_path),
                      prepared.run_tag, self.cfg.shared_storage]
        # The actor starts once the cluster has room for it: wait for that (or not, or until a stop)
        # rather than block the daemon on a full cluster.
        waited = False
        try:
            self.link.check()             # actor creation waits on the GCS: ask it first, quickly
            self.link.call("create", name, self.cfg.num_cpus_per_run, self.cfg.num_gpus_per_run, start_args)
            while (started := self.link.call("placed", name, PLACEMENT_POLL_S)) is None:
                if not wait or should_stop():
                    self._end(name)
                    return None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
        except RayUnavailable:
            self.abandoned.add(name)      # it may still start on the cluster: ended when the link is back
            raise
        except RayCallError as exc:
            self._end(name)
            raise LoopError(f"{plan.label}: the Ray actor for this run did not start: {exc}") from None
        device = f"{'cuda' if self.cfg.num_gpus_per_run else 'cpu'}@{started['host']}"
        run = ActiveRun.started(plan, prepared, started["pid"], started["create_time"], cycle, retry_of, self.sandbox,
                                executor=self.kind, device=device, task=name,
                                stall_seconds=plan.stall_seconds if self.cfg.shared_storage else None)
        record_placement(run)
        return run

    @staticmethod
    def _here(run: ActiveRun) -> bool:
        """The run's worker is this host (device `cpu@<host>`), so its processes can be seen here."""
        return bool(run.run_tag) and run.device.partition("@")[2] == socket.gethostname()

    def _name(self, run: ActiveRun) -> str:
        return run.task or self.name_of(run.run_tag)

    def _end(self, name: str) -> None:
        try:
            self.link.call("end", name)
        except (RayUnavailable, RayCallError):
            pass                          # out of reach: it went with its cluster, or ends on reconnect

    def _default_local(self) -> LocalExecutor:
        return LocalExecutor(self.repo_root, self.sandbox)

    def _event(self, kind: str, fields: dict) -> None:
        """executor_degraded / executor_restored: into events.jsonl and the daemon's log."""
        if kind == "executor_degraded":
            then = "new runs run on this machine" if self.cfg.when_unavailable == "local" else "new runs wait for it"
            self.say(f"{time.strftime('%H:%M:%S')} executor: the Ray cluster at {self.cfg.address} is out of reach "
                     f"({fields.get('reason', '')[:200]}); {then}, retrying in {fields.get('retry_in_seconds')}s")
        else:
            self.say(f"{time.strftime('%H:%M:%S')} executor: the Ray cluster at {self.cfg.address} is back after "
                     f"{fields.get('down_seconds')}s")
            for name in sorted(self.abandoned):
                self.abandoned.discard(name)
                self._end(name)
        try:
            self.events.append(kind, f"executor-{time.strftime('%Y%m%dT%H%M%S')}", executor=self.kind, **fields)
        except OSError:
            pass                          # a full disk is the daemon's own degraded path
