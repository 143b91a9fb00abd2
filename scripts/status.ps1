# One-shot status (-Json for one JSON object).
param([switch]$Json)
. "$PSScriptRoot/_common.ps1"
$a = @(); if ($Json) { $a += "--json" }
& $llmloop status @a; exit $LASTEXITCODE
