#!/usr/bin/env bash
# The test suite, after the linters. First use builds .venv (scripts/setup_env.sh); later uses reuse it.
# Extra arguments go to pytest: scripts/test.sh -m "not slow and not faults" is the fast tier.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
# Lint first (a second or two): ruff's small rule set, then the layer contract (pyproject.toml).
"$root/.venv/bin/ruff" check loop tests bench scripts
"$root/.venv/bin/lint-imports" --no-cache
# Bytecode once for the many fresh processes the tests start (trainers, daemons, PHASE).
"$root/.venv/bin/python" -m compileall -q -j 2 loop tests bench >/dev/null
# Two workers unless the caller picks (-n 0 for one process); tests that share a cluster, a clock
# or a tally are grouped onto one worker (xdist_group); the longest start first (tests/_order.py).
case " $* " in *" -n "*|*" -n="*|*" -p no:xdist "*) xdist=() ;; *) xdist=(-n 2 --dist loadgroup --no-loadscope-reorder) ;; esac
exec "$root/.venv/bin/python" -m pytest "${xdist[@]}" "$@"
