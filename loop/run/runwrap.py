"""`python -m loop.run.runwrap EXIT_FILE -- ARGV...`: runs ARGV and writes its exit code to EXIT_FILE.

Runs are started in their own session so they survive a daemon crash; the exit file lets a
restarted daemon judge a run it did not start (it cannot wait() on a process that is not its child).
"""
import subprocess
import sys

from loop.util.fsutil import atomic_write_text


def main() -> int:
    exit_file, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        print("usage: python -m loop.run.runwrap EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    try:
        code = subprocess.call(argv)
    except OSError as exc:
        print(f"cannot start {argv[0]}: {exc}", file=sys.stderr)
        code = 127
    atomic_write_text(exit_file, f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
