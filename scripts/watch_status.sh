#!/usr/bin/env bash
# The status, refreshed in place. Flags: --interval-seconds N --once
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" watch "$@"
