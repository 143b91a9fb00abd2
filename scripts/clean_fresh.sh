#!/usr/bin/env bash
# Wipe the workspace for a fresh start (the daemon must be stopped). Flags: --keep-login --keep-data-link
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" reset --yes "$@"
