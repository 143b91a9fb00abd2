# The status, refreshed in place.
param([double]$IntervalSeconds = 10, [switch]$Once)
. "$PSScriptRoot/_common.ps1"
$a = @("--interval-seconds", $IntervalSeconds); if ($Once) { $a += "--once" }
& $llmloop watch @a; exit $LASTEXITCODE
