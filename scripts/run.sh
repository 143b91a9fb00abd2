#!/usr/bin/env bash
# The main job. First use builds .venv (scripts/setup_env.sh); later uses reuse it.
# No arguments: the research loop on the embedded default task, attached to this terminal
# (offline policy when no LLM endpoint is configured; Ctrl-C stops it after the current cycle).
# With arguments: `llmloop ARGS` (e.g. scripts/run.sh train --config config/trainer/digits.yaml).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
if [ $# -eq 0 ]; then
  exec "$root/.venv/bin/llmloop" start --foreground
fi
exec "$root/.venv/bin/llmloop" "$@"
