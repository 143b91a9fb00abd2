#!/usr/bin/env bash
# Store the LLM endpoint and API key (0600 file). Flags: --base-url URL --model NAME --key-stdin --key-env NAME
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$root/.venv/bin/llmloop" login "$@"
