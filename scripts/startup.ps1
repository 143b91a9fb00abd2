# Start the loop in the background (-StartInNewWindow: attached, in a new window).
# -Dashboard [-DashboardPort P]: also serve the dashboard on 127.0.0.1:8765 in the background (its URL
# and token file are printed); stop_llm_daemon leaves it up, `llmloop dashboard --stop` stops it
param([switch]$StartInNewWindow, [double]$RunHours, [double]$FinishupMinutes, [int]$FinishupFinalTrainingRounds = 1,
      [int]$FinishupTopK = 10, [string]$FinishupNote = "", [switch]$Dashboard, [int]$DashboardPort)
. "$PSScriptRoot/_common.ps1"
$a = @(); if ($RunHours) { $a += "--run-hours", $RunHours, "--finishup-final-training-rounds", $FinishupFinalTrainingRounds, "--finishup-top-k", $FinishupTopK, "--finishup-note", $FinishupNote }
if ($FinishupMinutes) { $a += "--finishup-minutes", $FinishupMinutes }
if ($Dashboard) { $a += "--dashboard" }; if ($DashboardPort) { $a += "--dashboard-port", $DashboardPort }
if ($StartInNewWindow) { Start-Process $llmloop -ArgumentList (@("start", "--foreground") + $a); exit 0 }
& $llmloop start @a; exit $LASTEXITCODE
