"""The offline policy (Builder and Mentor without a network) and the bounded prompt context."""
from __future__ import annotations

from loop.agents.context import build_context, compute_signals
from loop.agents.offline import PolicyInput, builder_decision, mentor_review, stagnating
from loop.agents.schema import Decision
from loop.agents.space import SPACE, overlay_of, params_of
from loop.agents.usage import estimate_tokens
from loop.config import deep_merge, read_yaml, validate
from loop.journal.history import RunRecord
from loop.journal.notes import add_todos, append_storyline, append_workpad
from loop.trainer.config import TrainerConfig
from loop.util.workspace import Workspace
from tests.conftest import REPO

BASE = read_yaml(REPO / "config/trainer/digits.yaml")


def simulate(n: int, score_of, seed: int = 0) -> list[tuple[Decision, RunRecord]]:
    history, out = [], []
    for cycle in range(1, n + 1):
        d = builder_decision(PolicyInput(cycle, list(history)), seed=seed)
        cfg = deep_merge(BASE, d.train_overlay)
        rec = RunRecord(d.run_label, cycle, cfg, True, score_of(cycle, cfg), d.strategy_dimension)
        history.append(rec)
        out.append((d, rec))
    return out


def test_first_decision_is_the_baseline():
    d = builder_decision(PolicyInput(1, []))
    assert d.action == "train" and d.train_overlay == {} and d.run_label.startswith("baseline")
    assert d.data_exploration_update and len(d.rationale) > 40


def test_every_decision_is_a_valid_trainer_overlay_and_explores_dimensions():
    runs = simulate(12, lambda c, cfg: 0.9 + 0.001 * c)
    for d, rec in runs:
        validate(TrainerConfig, rec.config, "offline")
        assert d.strategy_dimension in SPACE
    dims = {d.strategy_dimension for d, _ in runs}
    assert len(dims) >= 5                                        # it spreads over the dimensions
    labels = [d.run_label for d, _ in runs]
    assert len(set(labels)) == len(labels)


def test_deterministic_for_a_seed_and_history():
    a = [d.model_dump() for d, _ in simulate(8, lambda c, cfg: 0.9 + (c % 3) * 0.01, seed=3)]
    b = [d.model_dump() for d, _ in simulate(8, lambda c, cfg: 0.9 + (c % 3) * 0.01, seed=3)]
    assert a == b


def test_mutation_changes_exactly_one_parameter_from_the_best():
    runs = simulate(3, lambda c, cfg: 0.9 + 0.01 * c)
    d, rec = runs[2]
    best = runs[1][1]
    changed = {k for k in set(params_of(rec.config)) | set(params_of(best.config))
               if params_of(rec.config).get(k) != params_of(best.config).get(k)}
    assert d.run_label.startswith("mutate") and len(changed) == 1


def test_stagnation_switches_to_explore_and_the_mentor_challenges():
    flat = simulate(10, lambda c, cfg: 0.95 if c == 1 else 0.9)
    history = [rec for _, rec in flat]
    assert stagnating(history, 4)
    d = builder_decision(PolicyInput(11, history))
    assert d.run_label.startswith("explore") and d.todo_new
    review = mentor_review(PolicyInput(11, history), d)
    assert review.verdict == "off_track" and review.challenge is not None
    assert review.challenge.strategy_dimension == "model_arch" and len(review.todo_new) == 1
    assert review.challenge.train_overlay["model"]["name"] != params_of(history[0].config).get("model")
    improving = [rec for _, rec in simulate(6, lambda c, cfg: 0.8 + 0.02 * c)]
    on_track = mentor_review(PolicyInput(7, improving), d)
    assert on_track.verdict == "on_track" and on_track.challenge is None and not on_track.todo_new


def test_params_overlay_roundtrip():
    for dim, (param, choices) in SPACE.items():
        for choice in choices:
            cfg = deep_merge(BASE, overlay_of({param: choice}))
            assert params_of(cfg)[param] == choice, (dim, choice)


def test_signals_follow_the_history():
    good = [RunRecord(f"r{i}", i, {}, True, 0.9 + 0.01 * i) for i in range(6)]
    flat = [RunRecord(f"r{i}", i, {}, True, 0.95 if i == 0 else 0.9) for i in range(8)]
    s_good, s_flat = compute_signals(good, ["train"] * 6, 2, False), compute_signals(flat, ["train"] * 8, 2, False)
    assert s_flat.breakout_priority > s_good.breakout_priority and s_flat.failure_or_stall
    assert s_flat.research_priority > s_good.research_priority
    assert compute_signals(good, [], 15, True).todo_pressure == 1.0


def test_context_rules_and_bounded_size(tmp_path):
    ws = Workspace(tmp_path).ensure()
    history = [RunRecord(f"r{i}", i, BASE, True, 0.9) for i in range(3)]
    ctx = build_context(ws, 4, history, ["train"] * 3, {"label": "r2", "status": "ok"}, None)
    assert "Storyline (tail, shown on failure/stall)" not in ctx.sections
    assert "Failed run log (tail)" not in ctx.sections
    log = tmp_path / "run.log"
    log.write_text("Traceback\nModuleNotFoundError: No module named 'x'\n")
    failed = build_context(ws, 5, history, ["train"] * 3, {"label": "r3", "status": "failed", "log_path": str(log)},
                           None)
    assert "ModuleNotFoundError" in failed.sections["Failed run log (tail)"]
    assert "Storyline (tail, shown on failure/stall)" in failed.sections
    # a long run: thousands of notes, TODOs and story lines; the prompt stays bounded
    sizes = []
    for n in (10, 100, 1000):
        for i in range(n):
            append_workpad(ws.workpad, "## Notes", f"note {i} " + "x" * 80, i)
            append_storyline(ws.storyline, f"- c{i:05d} line " + "y" * 80)
            add_todos(ws.todo, [f"todo item {i} topic{i}"], "B", i, 2)
        hist = [RunRecord(f"r{i}", i, BASE, True, 0.9 + (i % 7) * 0.001) for i in range(n)]
        ctx = build_context(ws, n, hist, ["train"] * 20, {"label": "x", "status": "failed", "log_path": str(log)}, None)
        sizes.append(estimate_tokens(ctx.render()))
    assert max(sizes) < 4000 and sizes[2] < sizes[0] * 2


def test_with_the_baseline_in_flight_the_next_run_is_a_different_point():
    from loop.agents.offline import PolicyInput, builder_decision

    first = builder_decision(PolicyInput(cycle=1))
    second = builder_decision(PolicyInput(cycle=2, in_flight=1))
    assert first.run_label.startswith("baseline") and first.train_overlay == {}
    assert second.run_label.startswith("explore") and second.train_overlay != {}
    assert "still training" in second.rationale
