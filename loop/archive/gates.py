"""The five gates (evolution_scheduler.md), all of which a candidate must pass:
  1. recall      >= HEAD's recall - epsilon
  2. generalize  >= HEAD's generalize + delta (delta > 0: and outside the noise, loop/verdict/noise.py:
                 a delta met inside the noise band is a tie, not a pass)
  3. drift       <= theta
  4. violations  == 0
  5. budget      the run finished within every cap
and the composite score used for ranking: 0.4 recall + 0.4 generalize + 0.2 (1 - drift)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from loop.verdict.noise import Score, beats_by, unpack_correct

GATE_NAMES = ("recall", "generalize", "drift", "violations", "budget")


class ProbeMetrics(BaseModel):
    recall: float
    generalize: float
    generalize_count: int | None = None      # images of the delta set, and which were right: the
    generalize_correct: str = ""             # generalize gate compares candidate and HEAD image by image
    drift: float
    violations: int
    violated: list[str] = Field(default_factory=list)
    val_accuracy: float
    per_class_accuracy: dict[str, float] = Field(default_factory=dict)
    parameters: int
    latency_ms: float | None = None


class GateResult(BaseModel):
    gates: dict[str, bool]
    passed: bool
    failed: list[str]
    score: float


def generalize_score(m: ProbeMetrics) -> Score:
    return Score(m.generalize, m.generalize_count, unpack_correct(m.generalize_correct, m.generalize_count))


def composite_score(recall: float, generalize: float, drift: float) -> float:
    return round(0.4 * recall + 0.4 * generalize + 0.2 * (1.0 - drift), 6)


def head_score(head: ProbeMetrics | None) -> float | None:
    """GEN_HEAD's own score (its drift against itself is 0); None when there is no HEAD."""
    return None if head is None else composite_score(head.recall, head.generalize, 0.0)


def check_gates(cand: ProbeMetrics | None, head: ProbeMetrics | None, budget_ok: bool,
                epsilon: float, delta: float, theta: float) -> GateResult:
    """Every gate's verdict; a candidate without probes (its run failed) fails all of them."""
    if cand is None:
        gates = {name: False for name in GATE_NAMES}
        gates["budget"] = budget_ok
        return GateResult(gates=gates, passed=False, failed=[g for g, ok in gates.items() if not ok], score=0.0)
    gates = {
        "recall": head is None or cand.recall >= head.recall - epsilon,
        "generalize": head is None or beats_by(generalize_score(cand), generalize_score(head), delta)[0],
        "drift": cand.drift <= theta,
        "violations": cand.violations == 0,
        "budget": budget_ok,
    }
    failed = [g for g, ok in gates.items() if not ok]
    return GateResult(gates=gates, passed=not failed, failed=failed,
                      score=composite_score(cand.recall, cand.generalize, cand.drift))
