#!/usr/bin/env bash
# Make (or reuse) the repo's .venv with everything llmloop needs, torch included.
# Idempotent: a stamp of pyproject.toml's hash skips the work when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.llmloop-stamp"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -c1-16)"

# Debian packages the project needs beside Python, installed where this user can (root or
# password-less sudo, apt); otherwise say how, and go on. apt_install COMMAND PACKAGE WHY IF_MISSING
apt_install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "[setup] installing $2 ($3)" >&2
    $sudo apt-get install -y -q "$2" >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$2" >/dev/null 2>&1; } ||
      echo "[setup] could not install $2; $4" >&2
  else
    echo "[setup] $2 ($1) is missing: install it (apt-get install $2); $4" >&2
  fi
}
# bubblewrap is the OS sandbox around every run (config `sandbox: required` by default).
apt_install bwrap bubblewrap "the run sandbox" "runs need it unless the config says sandbox: optional"
# Debian's chromium renders the dashboard in the tests (tests/test_dashboard.py, headless).
apt_install chromium chromium "the dashboard's browser tests" "the dashboard's browser tests will skip"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/llmloop" ]; then
  exit 0
fi

py="${LLMLOOP_PYTHON:-python3}"
echo "[setup] preparing $venv (first use or dependencies changed; torch makes this take minutes)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# torch and torchvision must come as a matched pair; pick the pair this platform has wheels for.
case "$(uname -m)" in
  aarch64|arm64) torch_pair=("torch==2.9.1" "torchvision==0.24.1") ;;
  *)             torch_pair=("torch==2.14.1" "torchvision==0.29.1") ;;
esac
if ! "$venv/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  "${pip[@]}" install "${torch_pair[@]}"
fi
"${pip[@]}" install -e "$root[dev,cluster,tracking]"
echo "$want" > "$stamp"
echo "[setup] ready: $venv" >&2
