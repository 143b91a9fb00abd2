"""What must pass before anything runs: the quality gate on a Decision (quality.py) and the command
policy on a `run_command` (policy.py), the shell line parsed by shell.py, never trusted; the policy's
path checks live in paths.py and its per-program argument rules in programs.py."""
