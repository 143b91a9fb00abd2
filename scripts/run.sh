#!/usr/bin/env bash
# The main job. First use builds .venv (scripts/setup_env.sh); later uses reuse it.
# No arguments: train on the embedded default task (digits). With arguments: `llmloop ARGS`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
if [ $# -eq 0 ]; then
  exec "$root/.venv/bin/llmloop" train --config config/trainer/digits.yaml
fi
exec "$root/.venv/bin/llmloop" "$@"
