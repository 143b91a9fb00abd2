# Wipe the workspace for a fresh start (the daemon must be stopped).
param([switch]$KeepLogin, [switch]$KeepDataLink)
. "$PSScriptRoot/_common.ps1"
$a = @("--yes"); if ($KeepLogin) { $a += "--keep-login" }; if ($KeepDataLink) { $a += "--keep-data-link" }
& $llmloop reset @a; exit $LASTEXITCODE
