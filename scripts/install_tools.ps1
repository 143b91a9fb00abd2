# Make .venv with everything llmloop needs (torch, timm, albumentations, ...). Safe to re-run.
. "$PSScriptRoot/_common.ps1"
& $llmloop --help | Out-Null; Write-Host "llmloop: ready"
