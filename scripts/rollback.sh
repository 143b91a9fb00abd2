#!/usr/bin/env bash
# Move GEN_HEAD back to the previous promoted generation, or --to NAME (--target-gen NAME too).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" rollback "$@"
