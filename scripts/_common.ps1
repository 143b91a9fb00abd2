# Dot-sourced by the operator scripts: find the repo, make sure .venv exists, run llmloop from it.
$ErrorActionPreference = "Stop"
$root = Split-Path -Parent $PSScriptRoot
& bash "$root/scripts/setup_env.sh"
Set-Location $root
$llmloop = if (Test-Path "$root/.venv/Scripts/llmloop.exe") { "$root/.venv/Scripts/llmloop.exe" } else { "$root/.venv/bin/llmloop" }
