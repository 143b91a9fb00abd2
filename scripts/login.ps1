# Store the LLM endpoint and API key (0600 file).
param([string]$BaseUrl, [string]$Model, [switch]$KeyStdin, [string]$KeyEnv)
. "$PSScriptRoot/_common.ps1"
$a = @(); if ($BaseUrl) { $a += "--base-url", $BaseUrl }; if ($Model) { $a += "--model", $Model }
if ($KeyStdin) { $a += "--key-stdin" }; if ($KeyEnv) { $a += "--key-env", $KeyEnv }
& $llmloop login @a; exit $LASTEXITCODE
