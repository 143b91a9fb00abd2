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

Ray is an optional extra (`pip install -e .[cluster]`); `executor.kind: ray` without it is a config
error that says so.
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
from pathlib import Path

from loop.errors import ConfigError, LoopError
from loop.run.plan import RunPlan, child_env
from loop.run.supervise import ActiveRun, prepare_run

PLACEMENT_POLL_S = 1.0       # how often a run waiting for room on the cluster checks for a stop
INSTALL_HINT = "pip install -e '.[cluster]' (or pip install 'ray==2.60.0')"


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"executor.kind: ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from None
    return ray


class RunActor:
    """Lives on a worker for one run: starts it, answers polls, kills it, hands its folder back."""

    def __init__(self):
        self.proc = None
        self.scratch = None
        self.tag = ""

    def start(self, command: list[str], env: dict, cwd: str, run_dir: str, log_path: str, tag: str,
              shared: bool) -> dict:
        import os
        import socket
        import subprocess
        import tempfile

        self.tag = tag
        if not shared:              # a worker-local folder stands in for the workspace's run folder
            self.scratch = tempfile.mkdtemp(prefix="llmloop-run-")
            command = [a.replace(run_dir, self.scratch) for a in command]
            env = {k: v.replace(run_dir, self.scratch) for k, v in env.items()}
            log_path = log_path.replace(run_dir, self.scratch)
            for sub in (".home", ".tmp"):
                os.makedirs(os.path.join(self.scratch, sub), exist_ok=True)
            owner = [a.split("=", 1)[1] for a in command if a.startswith(("--reuid=", "--regid="))]
            if len(owner) == 2:      # the sandbox drops to this user: the scratch folder is its to write
                for root, _dirs, _files in os.walk(self.scratch):
                    os.chown(root, int(owner[0]), int(owner[1]))
        for key in ("CUDA_VISIBLE_DEVICES",):        # the GPUs Ray gave this actor
            if key in os.environ:
                env[key] = os.environ[key]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        import psutil

        return {"pid": self.proc.pid, "create_time": psutil.Process(self.proc.pid).create_time(),
                "host": socket.gethostname()}

    def poll(self):
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        from loop.run.kill import RUN_TAG, kill_tree

        if self.proc is not None:
            kill_tree(self.proc.pid, popen=self.proc, tag=self.tag or None, tag_key=RUN_TAG)

    def fetch(self) -> tuple[bytes, str]:
        """The scratch run folder as a gzip tar and its sha256 (nothing when storage is shared)."""
        if self.scratch is None:
            return b"", ""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(self.scratch, arcname=".")
        data = buf.getvalue()
        return data, hashlib.sha256(data).hexdigest()


def unpack(data: bytes, digest: str, run_dir: Path) -> None:
    """Unpack a run folder sent back by a worker, after checking its hash; no member may leave it."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise LoopError(f"{run_dir}: the run folder sent back by the Ray worker does not match its sha256")
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(run_dir, filter="data")       # the data filter refuses absolute paths and ../


class RayExecutor:
    """Runs as detached named actors on a Ray cluster (see the module docstring)."""

    kind = "ray"

    def __init__(self, cfg, repo_root: Path, ws_root: Path, sandbox=None):
        self.cfg = cfg
        self.repo_root = Path(repo_root)
        self.sandbox = sandbox
        self.pool = None                         # Ray's resources place runs, not the local slot pool
        self.owner = re.sub(r"[^A-Za-z0-9]+", "-", getattr(sandbox, "owner", "") or Path(ws_root).name)
        self._actor_cls = None

    # ---- connection ----
    def ray(self):
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.cfg.address, namespace=self.cfg.namespace, runtime_env=self.cfg.runtime_env or None,
                     log_to_driver=False, logging_level="WARNING")
        if self._actor_cls is None:
            self._actor_cls = ray.remote(RunActor)
        return ray

    def name_of(self, run_tag: str) -> str:
        return f"llmloop-{self.owner}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", run_tag)

    def actor(self, run: ActiveRun):
        try:
            return self.ray().get_actor(run.task or self.name_of(run.run_tag), namespace=self.cfg.namespace)
        except ValueError:           # no such actor: it ended and was collected, or the cluster lost it
            return None

    # ---- the interface ----
    def submit(self, plan: RunPlan, cycle: int, retry_of: str | None = None, should_stop=lambda: False,
               on_wait=None, wait: bool = True) -> ActiveRun | None:
        ray = self.ray()
        prepared = prepare_run(plan.label, plan.trace_id, plan.argv, plan.run_dir, self.repo_root,
                               child_env(self.repo_root), self.sandbox,
                               {"OMP_NUM_THREADS": str(max(1, int(self.cfg.num_cpus_per_run)))})
        name = self.name_of(prepared.run_tag)
        actor = self._actor_cls.options(name=name, namespace=self.cfg.namespace, lifetime="detached",
                                        num_cpus=self.cfg.num_cpus_per_run, num_gpus=self.cfg.num_gpus_per_run,
                                        get_if_exists=False).remote()
        ref = actor.start.remote(prepared.command, prepared.env, str(self.repo_root), str(plan.run_dir),
                                 str(prepared.log_path), prepared.run_tag, self.cfg.shared_storage)
        # The actor starts once the cluster has room for it: wait for that (or not, or until a stop)
        # rather than block the daemon on a full cluster.
        waited = False
        while not ray.wait([ref], timeout=PLACEMENT_POLL_S)[0]:
            if not wait or should_stop():
                ray.kill(actor, no_restart=True)
                return None
            if not waited and on_wait is not None:
                on_wait()
            waited = True
        started = ray.get(ref)
        device = f"{'cuda' if self.cfg.num_gpus_per_run else 'cpu'}@{started['host']}"
        run = ActiveRun(label=plan.label, trace_id=plan.trace_id, kind=plan.kind, argv=plan.argv,
                         run_dir=str(plan.run_dir), log_path=str(prepared.log_path), exit_file=str(prepared.exit_file),
                         pid=started["pid"], create_time=started["create_time"], started_at=time.time(),
                         cycle_started=cycle, config_path=plan.config_path, retry_of=retry_of,
                         walltime_limit_seconds=plan.walltime_limit_seconds,
                         stall_seconds=plan.stall_seconds if self.cfg.shared_storage else None,
                         run_tag=prepared.run_tag, executor=self.kind, device=device, task=name,
                         sandbox="bubblewrap" if self.sandbox is not None and self.sandbox.active else "none")
        from loop.run.executor import record_placement

        record_placement(run)
        return run

    def alive(self, run: ActiveRun) -> bool:
        actor = self.actor(run)
        if actor is None:
            return False
        try:
            return self.ray().get(actor.poll.remote(), timeout=30) is None
        except Exception:  # noqa: BLE001 (RayActorError, a lost node: the run is not running)
            return False

    def kill(self, run: ActiveRun) -> None:
        actor = self.actor(run)
        if actor is None:
            return
        try:
            self.ray().get(actor.kill.remote(), timeout=30)
        except Exception:  # noqa: BLE001 (the actor died with it: nothing left to kill)
            pass
        self.collect(run)

    def collect(self, run: ActiveRun) -> None:
        """Bring the run folder home (when storage is not shared), then end the actor."""
        actor = self.actor(run)
        if actor is None:
            return
        ray = self.ray()
        try:
            data, digest = ray.get(actor.fetch.remote(), timeout=300)
            if data:
                unpack(data, digest, Path(run.run_dir))
        finally:
            ray.kill(actor, no_restart=True)

    def adopt(self, run: ActiveRun) -> bool:
        return self.alive(run)

    def cancel_strays(self, keep: set[str]) -> list[str]:
        """Kill this workspace's actors that no state names (a run tag in `keep` is kept)."""
        ray = self.ray()
        keep_names = {self.name_of(tag) for tag in keep}
        prefix = f"llmloop-{self.owner}-"
        cancelled = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"] if isinstance(entry, dict) else entry
            namespace = entry.get("namespace") if isinstance(entry, dict) else self.cfg.namespace
            if namespace == self.cfg.namespace and name.startswith(prefix) and name not in keep_names:
                try:
                    actor = ray.get_actor(name, namespace=namespace)
                    ray.get(actor.kill.remote(), timeout=30)
                except Exception:  # noqa: BLE001 (already dying: ray.kill below finishes it)
                    pass
                try:
                    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
                    cancelled.append(name)
                except ValueError:
                    continue
        return cancelled

    def describe(self, run: ActiveRun) -> str:
        return f"{run.device} via ray"
