#!/usr/bin/env bash
# The test suite, after the linters. First use builds .venv (scripts/setup_env.sh); later uses reuse it.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
# Lint first (a second or two): ruff's small rule set, then the layer contract (pyproject.toml).
"$root/.venv/bin/ruff" check loop tests bench scripts
"$root/.venv/bin/lint-imports" --no-cache
exec "$root/.venv/bin/python" -m pytest "$@"
