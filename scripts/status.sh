#!/usr/bin/env bash
# One-shot status (--json for one JSON object).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" status "$@"
