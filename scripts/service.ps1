# Run the loop as a systemd service with its PHASE timer: install [--dry-run] [--system] | status | uninstall
# (Linux only: pwsh on Linux reaches systemd; Windows has no systemd, and llmloop says so: use startup.ps1)
param([Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest)
. "$PSScriptRoot/_common.ps1"
& $llmloop service @Rest; exit $LASTEXITCODE
