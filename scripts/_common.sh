# Sourced by the operator scripts: find the repo, make sure .venv exists, run llmloop from it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
llmloop() { "$root/.venv/bin/llmloop" "$@"; }
