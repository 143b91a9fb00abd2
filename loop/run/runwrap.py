"""`python -m loop.run.runwrap EXIT_FILE [--walltime S] [--limit NAME=N ...] -- ARGV...`: runs ARGV
and writes its exit code to EXIT_FILE.

Runs are started in their own session so they survive a daemon crash; the exit file lets a
restarted daemon judge a run it did not start (it cannot wait() on a process that is not its child).
The walltime is enforced here, beside the run, not by the daemon's thread (which a run could keep
busy): past it the run's tree is killed and the exit file says `124 walltime`. `--limit` sets an
rlimit on the run (fsize bytes, nofile, nproc, core), inherited by everything it starts.
"""
import resource
import subprocess
import sys

import psutil

from loop.util.fsutil import atomic_write_text

LIMITS = {"fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
          "core": resource.RLIMIT_CORE}
WALLTIME_CODE = 124


def parse(args: list[str]) -> tuple[str, float | None, dict[int, int], list[str]]:
    exit_file, rest = args[0], args[1:]
    walltime, limits = None, {}
    while rest and rest[0] != "--":
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--walltime":
            walltime = float(value)
        elif flag == "--limit":
            name, _, number = value.partition("=")
            limits[LIMITS[name]] = int(number)
        else:
            raise ValueError(flag)
    if not rest or rest[0] != "--" or len(rest) < 2:
        raise ValueError("no command")
    return exit_file, walltime, limits, rest[1:]


def apply_limits(limits: dict[int, int]):
    def set_them() -> None:
        for which, value in limits.items():
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    return set_them


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
        exit_file, walltime, limits, argv = parse(sys.argv[1:])
    except (ValueError, IndexError, KeyError):
        print("usage: python -m loop.run.runwrap EXIT_FILE [--walltime S] [--limit fsize=N] -- ARGV...",
              file=sys.stderr)
        return 2
    note = ""
    try:
        proc = subprocess.Popen(argv, preexec_fn=apply_limits(limits) if limits else None)
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
        code = 127
    atomic_write_text(exit_file, f"{code}{note}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
