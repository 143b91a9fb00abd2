"""A search that respects its noise: the noise band (paired test, intervals, seed spread), the
verdict each run gets against the best, the fidelity ladder (screens, continuations), the cost
model that keeps proposals under the walltime cap, the generalize gate, and what the Builder sees."""
from __future__ import annotations

import random

import numpy as np
import pytest

from loop.agents.context import build_context, leaderboard_text, search_context
from loop.agents.cost import cost_model
from loop.agents.ladder import ETA, promotable, resolve, screen_epochs
from loop.agents.offline import PolicyInput, builder_decision
from loop.agents.schema import Decision
from loop.agents.space import params_of
from loop.archive.gates import ProbeMetrics, check_gates
from loop.config import deep_merge, read_yaml, validate
from loop.errors import ConfigError
from loop.journal.history import RunRecord
from loop.trainer.config import TrainerConfig
from loop.util.workspace import Workspace
from loop.verdict.keeps import incumbent, inside_noise, judging_sd, ranked, recipe_key, seed_sd, verdict_against_best
from loop.verdict.noise import Score, beats_by, compare, mcnemar_p, pack_correct, unpack_correct, wilson
from tests.conftest import REPO

BASE = read_yaml(REPO / "config/trainer/digits.yaml")


def right(n: int, wrong: list[int]) -> np.ndarray:
    v = np.ones(n, dtype=bool)
    v[wrong] = False
    return v


# ------------------------------------------------------------------ noise ----

def test_one_more_image_right_is_a_tie_and_a_clear_paired_win_is_a_gain():
    old = right(270, list(range(10)))                       # 260/270
    one_more = right(270, list(range(9)))                   # 261/270: the 0.0037 of one image
    assert compare(Score(261 / 270, 270, one_more), Score(260 / 270, 270, old)).verdict == "tie"
    better = right(270, [0, 1])                             # fixes 8 images, breaks none
    result = compare(Score(268 / 270, 270, better), Score(260 / 270, 270, old))
    assert result.verdict == "gain" and "McNemar" in result.test and mcnemar_p(better, old) < 0.05
    # the same margin, but won and lost on different images (discordant both ways): a tie
    mixed = right(270, list(range(10, 12)) + list(range(0, 0)))
    mixed[:10] = True
    mixed[20:28] = False
    assert compare(Score(mixed.mean(), 270, mixed), Score(old.mean(), 270, old)).verdict == "tie"


def test_without_per_image_records_the_intervals_must_not_overlap_and_the_seed_band_counts():
    assert compare(Score(0.9840, 1467), Score(0.9833, 1467)).verdict == "tie"    # the case
    assert compare(Score(0.99, 5000), Score(0.95, 5000)).verdict == "gain"
    lo, hi = wilson(0.95, 5000)
    assert lo < 0.95 < hi and hi - lo < 0.02
    # a clear paired gain still ties when the seed spread is wider than the margin
    old, new = right(270, list(range(10))), right(270, [0, 1])
    assert compare(Score(new.mean(), 270, new), Score(old.mean(), 270, old), seed_sd=0.02).verdict == "tie"


def test_per_image_records_round_trip():
    v = np.random.default_rng(0).random(1467) > 0.1
    assert (unpack_correct(pack_correct(v), len(v)) == v).all()
    assert unpack_correct("", 10) is None and unpack_correct("zz", 10) is None


def test_the_generalize_gate_cannot_meet_delta_inside_the_noise():
    head = ProbeMetrics(recall=0.9, generalize=0.90, generalize_count=200, drift=0, violations=0,
                        val_accuracy=0.9, parameters=1)
    tiny_gain = head.model_copy(update={"generalize": 0.915})
    assert beats_by(Score(0.915, 200), Score(0.90, 200), 0.01)[0] is False      # 3 images of 200
    verdict = check_gates(tiny_gain, head, True, epsilon=0.05, delta=0.01, theta=1.0)
    assert verdict.gates["generalize"] is False
    assert check_gates(tiny_gain, head, True, epsilon=0.05, delta=0.0, theta=1.0).gates["generalize"]
    big = head.model_copy(update={"generalize": 0.99})
    assert check_gates(big, head, True, epsilon=0.05, delta=0.01, theta=1.0).gates["generalize"]


# ----------------------------------------------------------------- keeps ----

def rec(label: str, score: float, cycle: int, config: dict | None = None, fidelity: float = 1.0,
        ok: bool = True, n: int = 270) -> RunRecord:
    return RunRecord(label, cycle, config or BASE, ok, score, fidelity=fidelity, val_count=n)


def judged(history: list[RunRecord], r: RunRecord, correct: np.ndarray | None = None,
           best_correct: np.ndarray | None = None) -> RunRecord:
    best = incumbent(history)
    j = verdict_against_best(history, r, Score(r.score, r.val_count, correct),
                  Score(best.score, best.val_count, best_correct) if best else None)
    r.verdict, r.margin, r.band = j.verdict, j.margin, j.band
    history.append(r)
    return r


def test_ties_never_replace_the_best_and_screens_and_replicas_are_apart():
    other = deep_merge(BASE, {"optim": {"lr": 0.1}})
    h: list[RunRecord] = []
    assert judged(h, rec("base", 0.9630, 1)).verdict == "first"
    assert judged(h, rec("scr", 0.90, 2, other, fidelity=1 / 3)).verdict == "screen"
    assert judged(h, rec("tie", 0.9667, 3, other)).verdict == "tie"                 # one image up
    assert incumbent(h).label == "base"
    assert [r.label for r in ranked(h)[0]] == ["base", "tie"]    # the kept best heads the board, the tie follows
    assert leaderboard_text(h).splitlines()[0].startswith("- base:")
    replica = deep_merge(BASE, {"run": {"seed": 7}})
    assert recipe_key(replica) == recipe_key(BASE)
    assert judged(h, rec("rep", 0.9593, 4, replica)).verdict == "replica"
    assert seed_sd(h) == pytest.approx(abs(0.9630 - 0.9593) / 2 ** 0.5)
    win = deep_merge(BASE, {"optim": {"lr": 0.02}})
    old, new = right(270, list(range(10))), right(270, [0])
    assert judged(h, rec("win", new.mean(), 5, win), new, old).verdict == "gain"
    assert incumbent(h).label == "win"
    assert judged(h, rec("fail", 0.0, 6, other, ok=False)).verdict == "failed"
    assert inside_noise(h) == []           # no per-image files: its recorded margin against its band
    # a seed spread measured later that is wider than the margin puts the old gain inside the noise
    h.append(rec("rep2", 0.90, 7, deep_merge(BASE, {"run": {"seed": 8}})))
    h[-1].verdict = "replica"
    assert [r.label for r in inside_noise(h)] == ["win"]
    text = leaderboard_text(h)
    assert "screen: low fidelity, not ranked" in text and "[0." in text and "verdict tie" in text


# ---------------------------------------------------------------- ladder ----

def test_a_screen_stops_early_and_a_continuation_resumes_a_known_screen():
    screen = resolve(Decision(action="train", fidelity="screen", train_overlay={"run": {"epochs": 12}}), BASE, [])
    assert screen["run"] == {"epochs": 12, "stop_after_epochs": screen_epochs(12)} and screen_epochs(12) == 4
    done = rec("scr-a", 0.9, 1, deep_merge(BASE, screen), fidelity=1 / 3)
    done.verdict, done.run_dir = "screen", "/ws/runs/scr-a/out"
    cont = resolve(Decision(action="train", continue_run="scr-a"), BASE, [done])
    assert cont["run"]["resume_from"] == "/ws/runs/scr-a/out" and cont["run"]["stop_after_epochs"] is None
    validate(TrainerConfig, deep_merge(BASE, cont), "continuation")
    with pytest.raises(ConfigError, match="not a finished screen"):
        resolve(Decision(action="train", continue_run="nope"), BASE, [done])
    # an overlay cannot smuggle a resume path in: only continue_run resumes (the Decision refuses it,
    # and the ladder drops one that got past validation)
    with pytest.raises(ValueError, match="run.resume_from"):
        Decision(action="train", train_overlay={"run": {"resume_from": "/etc"}})
    sneaky = resolve(Decision.model_construct(action="train", fidelity="full", continue_run="",
                                              train_overlay={"run": {"resume_from": "/etc"}}), BASE, [])
    assert "resume_from" not in sneaky.get("run", {})


def test_successive_halving_continues_the_top_third_once():
    h = []
    for i, score in enumerate([0.80, 0.90, 0.85, 0.70, 0.60, 0.88]):
        r = rec(f"s{i}", score, i, fidelity=1 / 3)
        r.verdict, r.run_dir = "screen", f"/r/s{i}"
        h.append(r)
        if i == ETA - 2:
            assert promotable(h) == []                      # too few screens for a top third
    assert [r.label for r in promotable(h)] == ["s1", "s5"]  # top 6 // 3 = 2
    assert [r.label for r in promotable(h, {"/r/s1"})] == ["s5"]


# ---------------------------------------------------------------- policy ----

def simulate(n: int, seed: int = 0, cap: float | None = 600, epoch_seconds: float = 2.0) -> list[tuple]:
    """The offline policy fed its own judged history (scores drawn at random)."""
    rng, history, out = random.Random(seed), [], []
    for cycle in range(1, n + 1):
        d = builder_decision(PolicyInput(cycle, list(history), base_config=BASE, walltime_cap_seconds=cap),
                             seed=seed)
        overlay = resolve(d, BASE, history)
        config = deep_merge(BASE, overlay)
        validate(TrainerConfig, config, "offline")
        run = config["run"]
        fid = min(run["epochs"], run.get("stop_after_epochs") or run["epochs"]) / run["epochs"]
        r = RunRecord(d.run_label, cycle, config, True, round(0.9 + 0.08 * rng.random(), 4), d.strategy_dimension,
                      minutes=0.2, run_dir=f"/runs/{cycle}", fidelity=fid, val_count=270,
                      epoch_seconds=epoch_seconds, epochs_trained=run.get("stop_after_epochs") or run["epochs"])
        judged(history, r)
        out.append((d, r))
    return out


def test_the_policy_screens_continues_and_replicates_on_the_ladder():
    runs = simulate(14)
    kinds = [d.run_label.split("-")[0] for d, _ in runs]
    assert kinds[0] == "baseline" and runs[0][0].fidelity == "full"
    assert kinds[1] == "replica" and runs[1][1].verdict == "replica"   # a spread before any gain is judged
    assert "continue" in kinds and "replica" in kinds and kinds.count("mutate") + kinds.count("explore") >= 6
    for d, r in runs:
        if d.continue_run:
            screened = next(x for _, x in runs if x.label == d.continue_run)
            assert screened.verdict == "screen" and r.config["run"]["resume_from"] == screened.run_dir
        if d.fidelity == "screen":
            assert r.verdict == "screen" and r.fidelity < 1
    continued = [d.continue_run for d, _ in runs if d.continue_run]
    assert len(continued) == len(set(continued))                     # each screen continued once
    labels = [d.run_label for d, _ in runs]
    assert len(set(labels)) == len(labels)
    gains = [r for _, r in runs if r.verdict == "gain"]
    assert all(r.full for r in gains)


def test_no_proposal_breaks_the_walltime_cap():
    # 30 s per epoch against a 5-minute cap: a 10-epoch run (300 s) would break it
    runs = simulate(10, cap=300, epoch_seconds=30)
    model = cost_model([r for _, r in runs])
    for d, r in runs[1:]:
        run = r.config["run"]
        epochs = (run.get("stop_after_epochs") or run["epochs"]) - (0 if not d.continue_run else
                                                                     screen_epochs(run["epochs"]))
        predicted = model.run_seconds(r.config, epochs)
        assert predicted is None or predicted <= 300, (d.run_label, predicted)
    assert any("Predicted" in d.rationale for d, _ in runs[1:])


def test_the_builder_sees_the_task_space_the_ladder_and_the_noise(tmp_path):
    from loop.agents.space import TaskProfile

    ws = Workspace(tmp_path).ensure()
    profile = TaskProfile(native_size=96, channels=3, num_classes=12, train_images=5000)
    h = [rec("base", 0.9630, 1)]
    h[0].verdict = "first"
    ctx = build_context(ws, 2, h, ["train"], None, None, search_text=search_context(profile, {}, BASE, h))
    text = ctx.render()
    assert "image_size: 72, 96, 120" in text and "flip_color" in text           # the task's own space
    assert "fidelity: screen" in text and "continue_run" in text
    assert "Noise band" in text and "best base 0.9630 [" in text and "one image = 0.0037" in text
    assert params_of(BASE)["image_size"] == 32


def test_before_any_seed_replica_a_gain_must_clear_the_sampling_sd_as_seed_spread():
    h: list[RunRecord] = []
    base = rec("base", 0.50, 1, n=300)
    judged(h, base)
    old = np.zeros(300, dtype=bool)
    old[:150] = True
    new = old.copy()
    new[150:168] = True             # 18 more images right, none lost: McNemar p ~ 4e-6
    assert mcnemar_p(new, old) < 0.001
    small = judged(h, rec("small", new.mean(), 2, deep_merge(BASE, {"optim": {"lr": 0.1}}), n=300), new, old)
    assert small.verdict == "tie" and small.band > 0.06                  # 0.06 < 1.96·√2·0.029
    big = new.copy()
    big[168:185] = True              # 35 more in all: outside the assumed seed band too
    assert judged(h, rec("big", big.mean(), 3, deep_merge(BASE, {"optim": {"lr": 0.02}}), n=300),
                  big, old).verdict == "gain"


def test_the_seed_spread_judged_by_is_median_scaled_and_never_below_the_sampling_sd():
    old = Score(0.50, 300)                    # sampling sd sqrt(0.25/300) = 0.0289
    assert judging_sd([], old)[0] == pytest.approx(0.0289, abs=1e-4)
    h = [rec("base", 0.50, 1, n=300), rec("rep", 0.44, 2, deep_merge(BASE, {"run": {"seed": 7}}), n=300)]
    sd, basis = judging_sd(h, old)             # one pair: sd 0.0424 by the formula, x1.48 to its median
    assert seed_sd(h) == pytest.approx(0.0424, abs=1e-4)
    assert sd == pytest.approx(0.0424 * 1.4826, abs=2e-4) and "1 dof" in basis
    h[1] = rec("rep", 0.49, 2, deep_merge(BASE, {"run": {"seed": 7}}), n=300)
    sd, basis = judging_sd(h, old)             # a close pair: the sampling sd stays the floor
    assert sd == pytest.approx(0.0289, abs=1e-4) and "below the sampling sd" in basis
