"""GRAFTING (loop/archive/grafting.py): each strategy's alpha ramp, step by step, on its own and
through `graft` on small hand-made logits, and `select_strategy`, configured and `auto`."""
from __future__ import annotations

import pytest
import torch

from loop.archive.grafting import STRATEGIES, Adaptive, DriftControlled, Momentum, Strategy, graft, select_strategy
from loop.archive.lifecycle import GRAFT_STRATEGIES

# Four samples, two classes. GEN_HEAD says class 0 with margins m; the candidate says class 1 with
# margin 1. The blend `(1 - a) * head + a * cand` flips sample i to class 1 once a > m / (1 + m):
# at a = 0.048, 0.130, 0.231, 0.333. So with steps=10 (alpha 0.1, 0.2, ...) one more sample flips
# at each of the first four ramp points: the disagreement with HEAD rises by 0.25 a step, and the
# accuracy rises (labels 1: the candidate is right) or falls (labels 0: HEAD is right) by 0.25.
MARGINS = torch.tensor([0.05, 0.15, 0.30, 0.50])
HEAD = torch.stack([MARGINS, torch.zeros(4)], 1)
CAND = torch.tensor([[0.0, 1.0]] * 4)
CAND_RIGHT = torch.ones(4, dtype=torch.long)
HEAD_RIGHT = torch.zeros(4, dtype=torch.long)


def ramp(impl, metrics_per_step: list[dict]) -> list[float]:
    alpha, out = 0.0, []
    for step, metrics in enumerate(metrics_per_step, start=1):
        alpha = impl.next_alpha(step, alpha, metrics)
        out.append(round(alpha, 6))
    return out


def test_the_four_strategies_are_the_lifecycle_names():
    assert set(STRATEGIES) == set(GRAFT_STRATEGIES) == {"linear", "drift_controlled", "momentum", "adaptive"}
    assert STRATEGIES["linear"] is Strategy and STRATEGIES["drift_controlled"] is DriftControlled
    assert STRATEGIES["momentum"] is Momentum and STRATEGIES["adaptive"] is Adaptive


# ------------------------------------------------------------ the ramps alone ----

def test_linear_is_step_over_steps_whatever_the_metrics():
    noisy = [{"performance_delta": d, "drift_jump": 1.0} for d in (0.5, -0.5, 0.0, 0.3, -0.1)]
    assert ramp(Strategy(4), noisy) == [0.25, 0.5, 0.75, 1.0, 1.0]          # capped at 1


def test_drift_controlled_holds_for_pause_steps_after_a_jump():
    quiet = {"drift_jump": 0.0}
    assert ramp(DriftControlled(4), [quiet] * 4) == [0.25, 0.5, 0.75, 1.0]  # linear while calm
    # a jump above the threshold at step 2: alpha held there for `pause` (2) steps, then the ramp goes on
    jumps = [quiet, {"drift_jump": 0.2}, quiet, quiet, quiet, quiet]
    assert ramp(DriftControlled(4, drift_threshold=0.05, pause=2), jumps) == [0.25, 0.25, 0.25, 0.5, 0.75, 1.0]
    assert ramp(DriftControlled(4, pause=3), jumps) == [0.25, 0.25, 0.25, 0.25, 0.5, 0.75]
    # at or under the threshold is not a jump
    assert ramp(DriftControlled(4, drift_threshold=0.2), jumps[:4]) == [0.25, 0.5, 0.75, 1.0]


def test_momentum_speeds_up_on_gains_and_ignores_losses():
    assert ramp(Momentum(10), [{"performance_delta": -0.3}] * 3) == [0.1, 0.2, 0.3]   # losses: linear
    # velocity = 0.5 * velocity + gain; alpha += 1/steps + velocity
    gains = [{"performance_delta": 0.1}, {"performance_delta": 0.0}, {"performance_delta": 0.0}]
    assert ramp(Momentum(10), gains) == pytest.approx([0.2, 0.35, 0.475])
    assert ramp(Momentum(10, factor=0.0), gains) == pytest.approx([0.2, 0.3, 0.4])     # no carry-over


def test_adaptive_stretches_on_dips_and_shrinks_on_gains():
    assert ramp(Adaptive(4), [{}] * 4) == [0.25, 0.5, 0.75, 1.0]
    assert ramp(Adaptive(4), [{"performance_delta": 0.1}] * 2) == [0.5, 1.0]           # half the ramp
    assert ramp(Adaptive(4), [{"performance_delta": -0.1}] * 3) == [0.125, 0.25, 0.375]  # twice the ramp


# ------------------------------------------------- graft on hand-made logits ----

def test_graft_linear():
    result = graft(HEAD, CAND, CAND_RIGHT, "linear", steps=10, drift_threshold=0.05, tolerance=0.05)
    assert result.ok and result.strategy == "linear" and result.reason == "alpha reached 1.0 in 10 steps"
    assert result.alphas == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert result.accuracies == [0.25, 0.5, 0.75] + [1.0] * 7 and result.head_accuracy == 0.0


def test_graft_drift_controlled_pauses_on_each_jump_in_disagreement():
    # the disagreement with HEAD rises 0.25 per ramp point (> 0.05): after each rise alpha is held
    # two steps, so the ramp takes 16 steps instead of 10
    result = graft(HEAD, CAND, CAND_RIGHT, "drift_controlled", steps=10, drift_threshold=0.05, tolerance=0.05)
    assert result.ok and result.reason == "alpha reached 1.0 in 16 steps"
    assert result.alphas == [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # with a threshold above the per-step rise it ramps like linear
    calm = graft(HEAD, CAND, CAND_RIGHT, "drift_controlled", steps=10, drift_threshold=0.3, tolerance=0.05)
    assert calm.alphas == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_graft_momentum_is_faster_when_the_candidate_helps():
    helps = graft(HEAD, CAND, CAND_RIGHT, "momentum", steps=10, drift_threshold=0.05, tolerance=0.05)
    # gains of 0.25 then 0.5 in accuracy: alpha 0.2 -> 0.55 (0.1 + v 0.25) -> 1.0 (v 0.625)
    assert helps.ok and helps.alphas == [0.1, 0.2, 0.55, 1.0] and helps.accuracies == [0.25, 0.5, 1.0, 1.0]
    hurts = graft(HEAD, CAND, HEAD_RIGHT, "momentum", steps=10, drift_threshold=0.05, tolerance=1.0)
    assert hurts.ok and hurts.alphas == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]   # no speed-up


def test_graft_adaptive_shrinks_on_gains_and_stretches_on_dips():
    helps = graft(HEAD, CAND, CAND_RIGHT, "adaptive", steps=10, drift_threshold=0.05, tolerance=0.05)
    assert helps.ok and helps.alphas == [0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0]
    hurts = graft(HEAD, CAND, HEAD_RIGHT, "adaptive", steps=10, drift_threshold=0.05, tolerance=1.0)
    assert hurts.ok and hurts.reason == "alpha reached 1.0 in 12 steps"
    assert hurts.alphas == [0.1, 0.2, 0.25, 0.3, 0.4, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.0]
    assert hurts.accuracies[:5] == [0.75, 0.5, 0.25, 0.25, 0.0] and hurts.head_accuracy == 1.0


@pytest.mark.parametrize("strategy", GRAFT_STRATEGIES)
def test_graft_fails_when_the_blend_falls_below_head(strategy):
    result = graft(HEAD, CAND, HEAD_RIGHT, strategy, steps=10, drift_threshold=0.05, tolerance=0.3)
    # accuracy 0.75, 0.5 (still within 0.3 of HEAD's 1.0) ... then below 0.7 at the second ramp point
    assert not result.ok and result.alphas == [0.1, 0.2] and result.accuracies == [0.75, 0.5]
    assert result.reason == "blend accuracy 0.500 fell below HEAD's 1.000 - 0.3 at alpha 0.20"


# ---------------------------------------------------------- select_strategy ----

def g(strategy: str, ok: bool) -> dict:
    return {"action": "GRAFT", "strategy": strategy, "ok": ok}


def test_a_configured_strategy_is_used_as_is():
    history = [g("momentum", True)] * 5
    for name in GRAFT_STRATEGIES:
        assert select_strategy(name, history) == (name, "set in config")


def test_auto_without_graft_history_is_linear():
    assert select_strategy("auto", []) == ("linear", "auto: no graft history yet")
    unrelated = [{"action": "ROLLBACK", "strategy": "momentum", "ok": True},      # not a graft
                 {"action": "GRAFT", "strategy": "warp_speed", "ok": True}]       # not a strategy
    assert select_strategy("auto", unrelated) == ("linear", "auto: no graft history yet")


def test_auto_picks_the_best_record():
    history = ([g("linear", True), g("linear", False)] * 2 + [g("momentum", True)] * 3
               + [g("adaptive", False)] * 3 + [{"action": "PROMOTE", "candidate": "x"}])
    assert select_strategy("auto", history) == ("momentum", "auto: best record in history (3/3 grafts succeeded)")
    # momentum turns bad: linear's 2/4 is now the best record
    worse = history + [g("momentum", False)] * 6
    assert select_strategy("auto", worse) == ("linear", "auto: best record in history (2/4 grafts succeeded)")


def test_auto_does_not_trust_one_lucky_graft():
    # adaptive 1/1 (smoothed 2/3) loses to drift_controlled 9/10 (smoothed 10/12)
    history = [g("adaptive", True)] + [g("drift_controlled", True)] * 9 + [g("drift_controlled", False)]
    assert select_strategy("auto", history)[0] == "drift_controlled"
    # and a longer record wins a tie of the smoothed rate: linear 1/2 vs momentum 3/6 (both 1/2)
    tie = [g("linear", True), g("linear", False)] + [g("momentum", True), g("momentum", False)] * 3
    assert select_strategy("auto", tie) == ("momentum", "auto: best record in history (3/6 grafts succeeded)")
