"""`llmloop policy check -- CMD` (and `llmloop sandbox run --policy`): the command policy's verdict,
printed."""
from __future__ import annotations

from pathlib import Path

from loop.config import DaemonConfig
from loop.gate.policy import PolicyVerdict, check_configured


def policy_check(command: str, cfg: DaemonConfig, workspace: Path) -> int:
    """`llmloop policy check -- CMD`: print the verdict; 0 when allowed, 1 when refused."""
    verdict = check_configured(command, cfg, workspace)
    print(format_verdict(command, verdict))
    return 0 if verdict.allowed else 1


def format_verdict(command: str, verdict: PolicyVerdict) -> str:
    if verdict.allowed:
        return f"ALLOWED: {command}"
    return "\n".join([f"REFUSED: {command}", *(f"- {reason}" for reason in verdict.reasons)])
