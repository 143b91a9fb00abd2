#!/usr/bin/env bash
# Start the loop in the background. Flags: --start-in-new-window --run-hours H --finishup-minutes M
#   --finishup-final-training-rounds N --finishup-top-k K --finishup-note TEXT (and llmloop start's own)
#   --dashboard [--dashboard-port P]: also serve the dashboard on 127.0.0.1:8765 in the background (its URL
#   and token file are printed); stop_llm_daemon leaves it up, `llmloop dashboard --stop` stops it
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
args=()
new_window=0
for a in "$@"; do
  if [ "$a" = "--start-in-new-window" ]; then new_window=1; else args+=("$a"); fi
done
if [ "$new_window" = 1 ] && [ -n "${TMUX:-}" ]; then
  exec tmux new-window -n llmloop "$root/.venv/bin/llmloop start --foreground ${args[*]:-}"
fi
exec "$root/.venv/bin/llmloop" start ${args[@]+"${args[@]}"}
