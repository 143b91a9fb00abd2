#!/usr/bin/env bash
# Make .venv with everything llmloop needs (torch, timm, albumentations, ...). Safe to re-run.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
"$root/.venv/bin/python" -c "import torch, timm, albumentations; print(f'torch {torch.__version__}, timm {timm.__version__}, albumentations {albumentations.__version__}: ready')"
