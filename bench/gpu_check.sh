#!/usr/bin/env bash
# The GPU path in one go, for the first machine with CUDA: the trainer with AMP and channels_last,
# a sandboxed run that sees only its slot's GPU, two runs on two GPUs (when there are two), and the
# trainer against a bare torch loop on the GPU. Prints one table and writes bench/RESULTS.md
# (section gpu_check). On a machine without CUDA it prints "no CUDA" and exits 0.
#   bench/gpu_check.sh              # the real check (needs CUDA)
#   bench/gpu_check.sh --cpu-dry-run  # the same steps on the CPU, tiny: proves the script runs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
cd "$root"
if [ "${1:-}" != "--cpu-dry-run" ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA"
  exit 0
fi
exec "$py" bench/gpu_check.py "$@"
