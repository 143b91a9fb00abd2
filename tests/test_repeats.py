"""No run trains what was already trained (loop/journal/fingerprint.py, loop/gate/repeats.py), the
offline policy never proposes a repeat, window candidates skip repeats, and the blocked state
(loop/cycle/failures.py) follows identical failures. No training here: records are built by hand."""
from __future__ import annotations

import copy

import pytest

from loop.agents.offline import PolicyInput, builder_decision, mentor_review
from loop.agents.schema import Decision
from loop.agents.space import overlay_of, params_of
from loop.config import deep_merge
from loop.cycle.failures import FailureStreak, blocked_after, extend
from loop.gate.repeats import repeat_refusal, trained_runs
from loop.journal.fingerprint import fingerprint, recipe, repeat_reason
from loop.journal.history import RunRecord
from loop.run.failure import signature_of
from loop.run.supervise import ActiveRun
from loop.trainer.config import resolved
from tests.conftest import tiny_config_dict

BASE = tiny_config_dict()


def config(**sections) -> dict:
    return resolved(deep_merge(copy.deepcopy(BASE), sections))


def record(label: str, cfg: dict, ok: bool = True, fidelity: float = 1.0, failure=None, cycle: int = 1,
           score: float = 0.9) -> RunRecord:
    return RunRecord(label=label, cycle=cycle, config=cfg, ok=ok, score=score if ok else 0.0, fidelity=fidelity,
                     verdict=("screen" if fidelity < 1 else "first") if ok else "failed",
                     failure=failure.model_dump() if failure else None, run_dir=f"/ws/runs/{label}/out")


def test_a_fingerprint_ignores_label_stop_resume_and_execution_settings_but_not_what_is_learned():
    a = config(run={"label": "a"})
    same = config(run={"label": "b", "stop_after_epochs": 1, "threads": 1, "log_every_steps": 3},
                  data={"num_workers": 2, "eval_batch_size": 7}, budget={"max_steps": 5})
    assert fingerprint(a) == fingerprint(same) and recipe(a) == recipe(same)
    other_seed = config(run={"seed": 8})
    assert fingerprint(a) != fingerprint(other_seed) and recipe(a) == recipe(other_seed)
    assert recipe(a) != recipe(config(optim={"lr": 0.01}))
    assert recipe(a) == recipe(config(optim={"lr": 0.05}))      # the default written out is the same run


def test_the_rule_names_the_run_a_repeat_would_repeat():
    base = config()
    history = [record("baseline-c1", base)]
    why = repeat_refusal(base, False, history, [])
    assert why and "baseline-c1" in why
    # a screen of what was trained in full is a repeat too (the bug of the digits night)
    assert repeat_refusal(config(run={"stop_after_epochs": 1}), False, history, []) is not None
    # another seed only as a declared replica, and never a seed already run
    assert "replica" in repeat_refusal(config(run={"seed": 99}), False, history, [])
    assert repeat_refusal(config(run={"seed": 99}), True, history, []) is None
    assert repeat_refusal(base, True, history, []) is not None
    # something new is new
    assert repeat_refusal(config(optim={"lr": 0.01}), False, history, []) is None


def test_a_run_in_flight_and_a_continued_screen_are_repeats():
    cfg = config(optim={"lr": 0.02})
    flying = ActiveRun(label="screen-x", trace_id="t", kind="train", argv=[], run_dir="/r", log_path="/r/log",
                       exit_file="/r/exit", pid=1, create_time=0, started_at=0, cycle_started=1,
                       fingerprint=fingerprint(cfg), recipe=recipe(cfg))
    assert "training now as screen-x" in repeat_refusal(cfg, False, [], [flying])
    screen = record("screen-y", config(run={"stop_after_epochs": 1}), fidelity=0.33)
    cont = config(run={"resume_from": screen.run_dir})
    assert repeat_refusal(cont, False, [screen], []) is None
    continued = record("cont-y", cont)
    assert "already continued" in repeat_refusal(cont, False, [screen, continued], [])


def test_a_failed_configuration_is_not_rerun_but_a_machine_failure_gets_one_more_try():
    bad = signature_of("failed", 1, "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                                    "RuntimeError: mat1 and mat2 shapes cannot be multiplied\n")
    infra = signature_of("failed", 1, "Traceback (most recent call last):\n  File \"s.py\", line 1, in g\n"
                                      "PermissionError: [Errno 13] Permission denied\n")
    cfg = config(optim={"lr": 0.02})
    assert repeat_refusal(cfg, False, [record("a", cfg, ok=False, failure=bad)], []) is not None
    once = [record("a", cfg, ok=False, failure=infra)]
    assert repeat_refusal(cfg, False, once, []) is None
    assert repeat_refusal(cfg, False, once + [record("b", cfg, ok=False, failure=infra)], []) is not None
    assert repeat_reason(cfg, trained_runs(once), refused=frozenset({fingerprint(cfg)})) is not None


def policy(history: list[RunRecord], **kw) -> PolicyInput:
    return PolicyInput(cycle=len(history) + 1, history=history, base_config=copy.deepcopy(BASE),
                       trained=trained_runs(history), **kw)


def test_the_offline_policy_never_proposes_what_was_trained():
    """Sixteen proposals, each recorded as trained as proposed: not one repeats an earlier run."""
    history: list[RunRecord] = []
    seen: set[str] = set()
    for cycle in range(1, 17):
        decision = builder_decision(policy(history), seed=0)
        assert decision.action == "train", decision.rationale
        overlay = decision.train_overlay
        if decision.continue_run:
            screen = next(r for r in history if r.label == decision.continue_run)
            cfg = resolved({**screen.config, "run": {**screen.config["run"], "stop_after_epochs": None,
                                                     "resume_from": screen.run_dir}})
        else:
            if decision.fidelity == "screen":
                overlay = deep_merge(overlay, {"run": {"stop_after_epochs": 1}})
            cfg = resolved(deep_merge(copy.deepcopy(BASE), overlay))
        key = fingerprint(cfg) + str(cfg["run"]["resume_from"])
        assert key not in seen, f"cycle {cycle}: {decision.run_label} repeats a run"
        seen.add(key)
        fid = 0.33 if decision.fidelity == "screen" and not decision.continue_run else 1.0
        history.append(record(decision.run_label, cfg, fidelity=fid, cycle=cycle, score=0.5 + 0.01 * (cycle % 5)))
    assert len({recipe(r.config) for r in history}) >= 10


def test_the_offline_policy_moves_off_a_failed_baseline():
    bad = signature_of("failed", 2, "error: kd.teacher: /x: not a model folder\n")
    history = [record("baseline-c1", config(), ok=False, failure=bad)]
    decision = builder_decision(policy(history), seed=0)
    assert decision.action == "train"
    assert recipe(resolved(deep_merge(copy.deepcopy(BASE), decision.train_overlay))) != recipe(config())
    assert "repeat" in decision.rationale


def test_the_mentor_never_says_on_track_while_runs_fail():
    bad = signature_of("failed", 2, "error: kd.teacher: /x: not a model folder\n")
    history = [record("ok-c1", config(), cycle=1),
               record("a-c2", config(optim={"lr": 0.02}), ok=False, failure=bad, cycle=2),
               record("b-c3", config(optim={"lr": 0.01}), ok=False, failure=bad, cycle=3)]
    review = mentor_review(policy(history), Decision(action="wait", rationale="x" * 30), seed=0)
    assert review.verdict == "off_track" and bad.key in review.notes
    assert "which setting" in review.critical_question        # a configuration failure, not the machine's


def test_identical_failures_block_after_the_limit_and_a_success_clears_it():
    sig = signature_of("failed", 2, "error: kd.teacher: /x: not a model folder\n")
    other = signature_of("failed", 1, "Traceback (most recent call last):\nValueError: boom\n")
    streak, blocked = FailureStreak(), None
    for i in range(3):
        streak = extend(streak, f"r{i}", sig, f"fp{i}")
        blocked = blocked_after(streak, blocked, 3, cycle=i + 1, retry_minutes=10, now=1000.0)
        assert (blocked is not None) == (i == 2)
    assert blocked.count == 3 and blocked.fingerprints == ["fp0", "fp1", "fp2"]
    assert blocked.next_try_at == pytest.approx(1000 + 600)
    streak = extend(streak, "r3", sig, "fp3")
    blocked = blocked_after(streak, blocked, 3, cycle=4, retry_minutes=10, now=2000.0)
    assert blocked.count == 4 and blocked.next_try_at == pytest.approx(2000 + 1200)     # doubled
    assert blocked_after(extend(streak, "r4", other, "fp4"), blocked, 3, 5, 10) is None   # moved on
    assert blocked_after(extend(streak, "r5", None, "fp5"), blocked, 3, 5, 10) is None    # a success


def test_window_candidates_skip_what_earlier_windows_trained():
    from loop.candidates.scheduler import spawn_candidates
    from loop.candidates.window import untried_specs

    def config_of(spec):
        return deep_merge(copy.deepcopy(BASE), {"run": {"seed": spec.seed},
                                                "data": {"sampling": {"strategy": spec.strategy}}})

    strategies = ["recent_weighted", "uniform", "hard_example_weighted", "class_balanced"]
    first, _ = untried_specs(spawn_candidates(1, 3, 3, strategies), strategies, {}, config_of)
    assert [s.strategy for s in first] == strategies[:3]
    seen = {recipe(resolved(config_of(s))): f"entry-{s.branch_id}" for s in first}
    second, skipped = untried_specs(spawn_candidates(2, 3, 3, strategies), strategies, seen, config_of)
    assert [s.strategy for s in second] == ["class_balanced"]      # the one strategy not trained yet
    assert len(skipped) == 2 and "nothing new" in skipped[0]


def test_params_round_trip_keeps_repeats_visible():
    """The policy's points map back to the same recipe (what makes `untried` meaningful)."""
    cfg = config(**overlay_of({"model": "resnet14t", "optim": "sgd_0.02", "image_size": 24}))
    again = config(**overlay_of(params_of(cfg)))
    assert recipe(cfg) == recipe(again)
