#!/usr/bin/env bash
# Make .venv with everything llmloop needs (torch, timm, albumentations, ...) and install bubblewrap,
# the run sandbox, where this user can. Safe to re-run.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
"$root/.venv/bin/python" -c "import torch, timm, albumentations; print(f'torch {torch.__version__}, timm {timm.__version__}, albumentations {albumentations.__version__}: ready')"
if command -v bwrap >/dev/null 2>&1; then echo "bubblewrap $(bwrap --version | cut -d' ' -f2): the run sandbox is available"; else echo "bubblewrap missing: runs need it unless the config says sandbox: optional"; fi
