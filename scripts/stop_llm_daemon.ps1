# Ask the daemon to finish its current cycle and exit; waits up to -Wait seconds (default 300).
param([double]$Wait = 300)
. "$PSScriptRoot/_common.ps1"
& $llmloop stop --wait $Wait; exit $LASTEXITCODE
