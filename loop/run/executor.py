"""Which executor runs go through. The contract (`Executor`) and the watch loop that uses it are in
loop/run/supervise.py; the daemon's runs and the evolution window's candidates all go through one,
and nothing above it knows which it has:

  local  a supervised subprocess in the run sandbox on this machine, on a device slot of the
         workspace's pool (loop/run/local_executor.py, loop/run/slots.py)
  ray    the same sandboxed command as a task on a Ray cluster (loop/run/ray_executor.py); Ray's own
         resources (`num_gpus_per_run`, `num_cpus_per_run`) place it

Every run ends the same way for the code above: an exit code in `<run_dir>/exit_code`, the log in
`<run_dir>/run.log` and the trainer's folder in `<run_dir>/out`, on this host.
"""
from __future__ import annotations

from pathlib import Path

from loop.run.local_executor import LocalExecutor
from loop.run.slots import pool_for
from loop.run.supervise import Executor


def executor_for(cfg, repo_root: Path, ws_root: Path, sandbox=None) -> Executor:
    """The configured executor (`executor.kind`), with the workspace's slot pool for local runs. A
    Ray cluster must answer now (loop/run/ray_link.py): else RayUnavailable, within a minute."""
    if cfg.executor.kind == "ray":
        from loop.run.ray_executor import RayExecutor  # only when configured

        executor = RayExecutor(cfg.executor, repo_root, ws_root, sandbox,
                               local=lambda: LocalExecutor(repo_root, sandbox, pool_for(cfg, ws_root)),
                               wait_seconds=min(cfg.default_monitor_seconds, cfg.max_monitor_seconds))
        executor.connect()
        return executor
    return LocalExecutor(repo_root, sandbox, pool_for(cfg, ws_root))


def check_executor(cfg) -> None:
    """The quick start-up check, before anything else starts: a Ray GCS must accept a connection."""
    if cfg.executor.kind == "ray":
        from loop.run.ray_link import check_reachable

        check_reachable(cfg.executor)
