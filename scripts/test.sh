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
# Bytecode once for the many fresh processes the tests start (trainers, daemons, PHASE), and kept
# for pytest's rewritten test modules too (4 CPU-s a worker on the next run) where the shell says not to.
"$root/.venv/bin/python" -m compileall -q -j 2 loop tests bench >/dev/null
unset PYTHONDONTWRITEBYTECODE
# One worker more than the cores unless the caller picks (-n 0 for one process): a test waits for a
# tenth of its time (processes starting, a daemon's timer, a Ray head coming back), and the extra
# worker fills those waits (two cores: 572 s on three workers, 619 s on two; bench/RESULTS.md).
# Tests that share a cluster, a clock or a tally are grouped onto one worker (xdist_group); the
# longest start first (tests/_order.py).
workers=$(( $(nproc) + 1 )); (( workers <= 8 )) || workers=8     # each worker holds torch: half a GB
case " $* " in *" -n "*|*" -n="*|*" -p no:xdist "*) xdist=() ;; *) xdist=(-n "$workers" --dist loadgroup --no-loadscope-reorder) ;; esac
exec "$root/.venv/bin/python" -m pytest "${xdist[@]}" "$@"
