"""What runs inside Ray: the driver process the daemon talks to (`python -m loop.run.ray_driver`,
started by loop/run/ray_link.py) and the actor that holds one run on a worker (`RunActor`).

The driver answers one request at a time over the socket it was given: (op, args) in, ("ok",
value) or ("err", message) out. Every Ray call it makes has a timeout (`RAY_TIMEOUT_S`; GCS
requests such as get_actor through RAY_gcs_server_request_timeout_seconds, which the link sets), so
an answer always comes; the link kills a driver that is silent for longer. When the daemon goes
its end of the socket closes, and the driver exits at its next read.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile

RAY_TIMEOUT_S = 5            # every ray.get / ray.wait the driver makes on the daemon's behalf
FETCH_TIMEOUT_S = 300        # a run folder coming back as a tar (storage not shared)


class RunActor:
    """Lives on a worker for one run: starts it, answers polls, kills it, hands its folder back."""

    def __init__(self):
        self.proc = None
        self.scratch = None
        self.tag = ""

    def start(self, command: list[str], env: dict, cwd: str, run_dir: str, log_path: str, tag: str,
              shared: bool) -> dict:
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


class Driver:
    """The daemon's requests, as Ray calls (each bounded); actors are found by name."""

    def __init__(self, ray, namespace: str):
        self.ray, self.namespace = ray, namespace
        self.actor_cls = ray.remote(RunActor)
        self.handles: dict = {}          # name -> actor handle
        self.pending: dict = {}          # name -> the start() ref of an actor not placed yet

    def create(self, name: str, num_cpus: float, num_gpus: float, start_args: list) -> None:
        actor = self.actor_cls.options(name=name, namespace=self.namespace, lifetime="detached", num_cpus=num_cpus,
                                       num_gpus=num_gpus, get_if_exists=False).remote()
        self.handles[name] = actor
        self.pending[name] = actor.start.remote(*start_args)

    def placed(self, name: str, wait_s: float) -> dict | None:
        """The started run's pid, create time and host once the cluster placed it; None until then."""
        ref = self.pending[name]
        if not self.ray.wait([ref], timeout=wait_s)[0]:
            return None
        del self.pending[name]
        return self.ray.get(ref, timeout=RAY_TIMEOUT_S)

    def poll(self, name: str) -> str:
        """running | exited | gone (no such actor, or it died). Raises while the actor cannot be
        reached: the link then asks whether the cluster itself still answers."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        actor = self._handle(name)
        if actor is None:
            return "gone"
        try:
            code = self.ray.get(actor.poll.remote(), timeout=RAY_TIMEOUT_S)
        except ActorUnavailableError:
            raise
        except RayActorError:
            self.handles.pop(name, None)
            return "gone"
        return "running" if code is None else "exited"

    def kill(self, name: str) -> bool:
        """Kill the run's process tree through its actor; False when there is no actor."""
        actor = self._handle(name)
        if actor is None:
            return False
        try:
            self.ray.get(actor.kill.remote(), timeout=RAY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 (the actor died with it: nothing left to kill)
            pass
        return True

    def fetch(self, name: str) -> tuple[bytes, str]:
        actor = self._handle(name)
        return (b"", "") if actor is None else self.ray.get(actor.fetch.remote(), timeout=FETCH_TIMEOUT_S)

    def end(self, name: str) -> None:
        """The actor goes (a pending placement too)."""
        actor = self._handle(name)
        self.handles.pop(name, None)
        self.pending.pop(name, None)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def strays(self, prefix: str, keep: list[str]) -> list[str]:
        """Kill every actor of this namespace named `prefix*` but not in `keep`; their names."""
        cancelled = []
        for entry in self.ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"] if isinstance(entry, dict) else entry
            namespace = entry.get("namespace") if isinstance(entry, dict) else self.namespace
            if namespace == self.namespace and name.startswith(prefix) and name not in keep:
                self.kill(name)
                try:
                    self.end(name)
                    cancelled.append(name)
                except ValueError:
                    continue
        return cancelled

    def _handle(self, name: str):
        if name not in self.handles:
            try:
                self.handles[name] = self.ray.get_actor(name, namespace=self.namespace)
            except ValueError:           # no such actor: it ended and was collected, or the cluster lost it
                return None
        return self.handles[name]


def main(argv: list[str]) -> int:
    """`python -m loop.run.ray_driver FD SETTINGS_JSON`: join the cluster, then serve the daemon."""
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[1]))
    settings = json.loads(argv[2])
    try:
        import ray

        ray.init(address=settings["address"], namespace=settings["namespace"],
                 runtime_env=settings.get("runtime_env") or None, log_to_driver=False, logging_level="WARNING")
        driver = Driver(ray, settings["namespace"])
    except Exception as exc:  # noqa: BLE001 (any failure to join is the link's to report)
        conn.send(("err", f"{type(exc).__name__}: {exc}"[:2000]))
        return 1
    conn.send(("ok", None))
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):      # the daemon went: so does its driver
            return 0
        try:
            reply = ("ok", getattr(driver, op)(*args))
        except Exception as exc:  # noqa: BLE001 (every failure goes back as an answer)
            reply = ("err", f"{type(exc).__name__}: {exc}"[:2000])
        try:
            conn.send(reply)
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
