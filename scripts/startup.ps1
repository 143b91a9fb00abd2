# Start the loop in the background (-StartInNewWindow: attached, in a new window).
param([switch]$StartInNewWindow, [double]$RunHours, [double]$FinishupMinutes, [int]$FinishupFinalTrainingRounds = 1,
      [int]$FinishupTopK = 10, [string]$FinishupNote = "")
. "$PSScriptRoot/_common.ps1"
$a = @(); if ($RunHours) { $a += "--run-hours", $RunHours, "--finishup-final-training-rounds", $FinishupFinalTrainingRounds, "--finishup-top-k", $FinishupTopK, "--finishup-note", $FinishupNote }
if ($FinishupMinutes) { $a += "--finishup-minutes", $FinishupMinutes }
if ($StartInNewWindow) { Start-Process $llmloop -ArgumentList (@("start", "--foreground") + $a); exit 0 }
& $llmloop start @a; exit $LASTEXITCODE
