#!/usr/bin/env bash
# Finish-up mode. Flags: --minutes-left M --run-hours H --final-training-rounds N --top-k K --note TEXT
#   --activate-in-minutes N --activate-at-utc 2026-02-18T22:00:00Z --force-report-now --show --cancel
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" finishup "$@"
