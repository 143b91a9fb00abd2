"""`python -m loop.run.runwrap EXIT_FILE [--walltime S] [--limit NAME=N ...] [--cap NAME=N ...] -- ARGV...`:
runs ARGV and writes its exit code to EXIT_FILE.

Runs are started in their own session so they survive a daemon crash; the exit file lets a
restarted daemon judge a run it did not start (it cannot wait() on a process that is not its child).
The walltime is enforced here, beside the run, not by the daemon's thread (which a run could keep
busy): past it the run's tree is killed and the exit file says `124 walltime`. `--limit` sets an
rlimit on the run (fsize bytes, nofile, nproc, core), inherited by everything it starts. `--cap` puts
the run in a control group of its own (memory bytes, tasks, cpus; loop/run/cgroup.py) where the
machine allows one: its first process joins before exec, what is left is killed at the end, and a
run the memory cap killed says so in its log and exit file (`137 oom`).
"""
import os
import resource
import subprocess
import sys

import psutil

from loop.errors import ExitCode
from loop.run.cgroup import Caps, Group, make
from loop.util.fsutil import atomic_write_text

LIMITS = {"fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
          "core": resource.RLIMIT_CORE}
WALLTIME_CODE = ExitCode.WALLTIME


CAPS = {"memory": ("memory_bytes", int), "tasks": ("tasks", int), "cpus": ("cpus", float)}


def parse(args: list[str]) -> tuple[str, float | None, dict[int, int], Caps, list[str]]:
    exit_file, rest = args[0], args[1:]
    walltime, limits, caps = None, {}, {}
    while rest and rest[0] != "--":
        flag, value, rest = rest[0], rest[1], rest[2:]
        name, _, number = value.partition("=")
        if flag == "--walltime":
            walltime = float(value)
        elif flag == "--limit":
            limits[LIMITS[name]] = int(number)
        elif flag == "--cap":
            field, kind = CAPS[name]
            caps[field] = kind(number)
        else:
            raise ValueError(flag)
    if not rest or rest[0] != "--" or len(rest) < 2:
        raise ValueError("no command")
    return exit_file, walltime, limits, Caps(**caps), rest[1:]


def before_exec(limits: dict[int, int], group: Group | None):
    """In the child, between fork and exec: join the run's cgroup, set its rlimits."""
    def prepare() -> None:
        if group is not None:
            group.join_self()
        for which, value in limits.items():
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    return prepare


def kill_descendants(pid: int) -> None:
    """SIGKILL every process under `pid`; one that ends meanwhile is already what we want."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def main() -> int:
    try:
        exit_file, walltime, limits, caps, argv = parse(sys.argv[1:])
    except (ValueError, IndexError, KeyError):
        print("usage: python -m loop.run.runwrap EXIT_FILE [--walltime S] [--limit fsize=N] [--cap memory=N] "
              "-- ARGV...", file=sys.stderr)
        return 2
    note, group = "", None
    if caps.wanted():
        group, why = make(f"run-{os.getpid()}", caps)
        if group is None:
            print(f"runwrap: no cgroup for this run ({why}); its rlimits hold", file=sys.stderr, flush=True)
    try:
        proc = subprocess.Popen(argv, preexec_fn=before_exec(limits, group) if limits or group else None)
        try:
            code = proc.wait(timeout=walltime)
        except subprocess.TimeoutExpired:
            # in the sandbox the child is bwrap: its PID namespace, every process of the run, goes with
            # it; without one, its descendants are killed first
            kill_descendants(proc.pid)
            proc.kill()
            proc.wait()
            code, note = WALLTIME_CODE, " walltime"
            print(f"runwrap: walltime of {walltime:g}s reached: the run was killed", file=sys.stderr, flush=True)
    except OSError as exc:
        print(f"cannot start {argv[0]}: {exc}", file=sys.stderr)
        code = ExitCode.NOT_STARTED
    finally:
        if group is not None:
            if group.oom_killed() and not note:
                note = " oom"
                print(f"runwrap: the run reached its memory cap of {caps.memory_bytes / (1 << 30):.2f} GB "
                      "(sandbox_memory_gb) and was killed", file=sys.stderr, flush=True)
            group.remove()
    atomic_write_text(exit_file, f"{int(code)}{note}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
