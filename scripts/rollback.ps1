# Move GEN_HEAD back to the previous promoted generation, or -TargetGen NAME.
param([string]$TargetGen = "previous")
. "$PSScriptRoot/_common.ps1"
$a = @(); if ($TargetGen -ne "previous") { $a += "--to", $TargetGen }
& $llmloop rollback @a; exit $LASTEXITCODE
