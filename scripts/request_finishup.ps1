# Finish-up mode: schedule, show or cancel.
param([double]$MinutesLeft, [double]$RunHours, [int]$FinalTrainingRounds = 1, [int]$TopK = 10, [string]$Note = "",
      [double]$ActivateInMinutes, [string]$ActivateAtUtc, [switch]$ForceReportNow, [switch]$Show, [switch]$Cancel)
. "$PSScriptRoot/_common.ps1"
$a = @("--final-training-rounds", $FinalTrainingRounds, "--top-k", $TopK, "--note", $Note)
if ($MinutesLeft) { $a += "--minutes-left", $MinutesLeft }; if ($RunHours) { $a += "--run-hours", $RunHours }
if ($ActivateInMinutes) { $a += "--activate-in-minutes", $ActivateInMinutes }; if ($ActivateAtUtc) { $a += "--activate-at-utc", $ActivateAtUtc }
if ($ForceReportNow) { $a += "--force-report-now" }; if ($Show) { $a = @("--show") }; if ($Cancel) { $a = @("--cancel") }
& $llmloop finishup @a; exit $LASTEXITCODE
