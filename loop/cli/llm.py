"""`llmloop llm probe`: before a night's run, ask each role's endpoint for one real decision and say
which structured-output mode it takes, how long a call takes, and whether the reply validates.

The probe sends the same prompt a cycle would (the mission, the rules, the context of this
workspace), negotiates the mode from the first one on, and stores what worked, so the daemon
starts from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from loop.agents import offline, prompts
from loop.agents.context import build_context
from loop.agents.formats import ModeStore
from loop.agents.llm import LLMUnavailable, for_role
from loop.agents.offline import PolicyInput
from loop.agents.schema import Decision, Review
from loop.config import DaemonConfig, LLMRole
from loop.errors import LoopError
from loop.journal.history import HistoryReader
from loop.util.workspace import Workspace


@dataclass
class ProbeResult:
    role: str
    endpoint: str          # "offline policy" when the role has no base_url
    model: str
    mode: str = ""         # the structured-output mode that answered
    seconds: float = 0.0
    valid: bool = False    # the reply validated against the role's contract
    gate: str = ""         # the quality gate's verdict on a Builder decision
    requests: int = 0
    tokens: int = 0
    estimated: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.endpoint == "offline policy" or self.valid


def probe_roles(cfg: DaemonConfig, ws: Workspace, roles: dict[str, LLMRole], repo_root: Path) -> list[ProbeResult]:
    """One probe call per role; an offline role is reported as such without a request."""
    context = build_context(ws, 1, HistoryReader(ws.runs_index).read(), [], None, None).render()
    store = ModeStore(ws.llm_modes)
    return [probe_role(cfg, name, role, context, store, repo_root) for name, role in roles.items()]


def probe_role(cfg: DaemonConfig, name: str, role: LLMRole, context: str, store: ModeStore,
               repo_root: Path) -> ProbeResult:
    result = ProbeResult(role=name, endpoint=role.base_url or "offline policy", model=role.model)
    client = for_role(role, name, cfg.credentials_file, price=cfg.llm_prices.get(role.model), mode_store=store)
    if client is None:
        return result
    client.mode = None if role.structured_output == "auto" else role.structured_output   # renegotiate
    try:
        if name == "builder":
            system, user = prompts.builder_prompt(cfg, repo_root, context)
            reply = client.complete_json(system, user, Decision)
            result.gate = gate_verdict(reply.parsed)
        else:
            sample = offline.builder_decision(PolicyInput(1, [], [], {}), seed=cfg.offline_seed)
            system, user = prompts.mentor_prompt(cfg, repo_root, context, sample.model_dump_json(), "probe")
            reply = client.complete_json(system, user, Review)
    except (LLMUnavailable, LoopError) as exc:
        result.error = str(exc)
        usage = getattr(exc, "usage", None)
    else:
        result.mode, result.seconds, result.valid = reply.mode, reply.seconds, True
        usage = reply.usage
    if usage is not None:
        result.requests, result.tokens, result.estimated = usage.calls, usage.total_tokens, usage.estimated
    return result


def gate_verdict(decision: Decision) -> str:
    from loop.gate.quality import quality_gate

    verdict = quality_gate(decision)
    return "passed" if verdict.ok else "refused: " + "; ".join(verdict.reasons)


def render(results: list[ProbeResult]) -> str:
    lines = []
    for r in results:
        if r.endpoint == "offline policy":
            lines.append(f"{r.role}: offline policy (no endpoint configured; no request sent)")
            continue
        head = f"{r.role}: {r.model} at {r.endpoint}"
        tokens = f"{r.requests} request(s), {r.tokens} tokens{' (estimated)' if r.estimated else ''}"
        if r.valid:
            gate = f"; quality gate {r.gate}" if r.gate else ""
            lines.append(f"{head}\n  mode {r.mode}; {r.seconds:.2f}s; reply valid{gate}; {tokens}")
        else:
            lines.append(f"{head}\n  FAILED: {r.error}\n  {tokens}")
    return "\n".join(lines)


def as_json(results: list[ProbeResult]) -> list[dict]:
    return [asdict(r) | {"ok": r.ok} for r in results]
