#!/usr/bin/env bash
# Run the loop as a systemd service with its PHASE timer: install [--dry-run] [--system] | status | uninstall
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" service "$@"
