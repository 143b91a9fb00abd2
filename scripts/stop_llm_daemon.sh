#!/usr/bin/env bash
# Ask the daemon to finish its current cycle and exit; waits up to --wait SECONDS (default 300).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [ $# -eq 0 ]; then set -- --wait 300; fi
exec "$root/.venv/bin/llmloop" stop "$@"
