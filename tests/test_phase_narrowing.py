"""PHASE narrows the search only on evidence (issue 20): a value leaves the space only when every
model trained with it was flagged against its domain's best, trained with another value of the same
parameter; a parameter with one evaluated value is never narrowed; no dimension is left with one
choice; a recommendation expires after `phase.recommendation_cycles` cycles or at the next PHASE; an
older results file (values to keep) narrows nothing. Unit level: no model is trained here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from loop.agents.space import SPACE, restricted_space, space_text
from loop.config import DaemonConfig, PhaseConfig, deep_merge
from loop.cycle.cycle import Loop
from loop.cycle.state import LoopState
from loop.daemon.phase_pause import collapse_phase, expire_recommendations, in_force
from loop.journal.events import EventLog
from loop.phase.collapse import collapse_domain, recommendations
from loop.phase.results import ModelResult, PhaseResults
from loop.util.workspace import Workspace
from tests.conftest import REPO, tiny_config_dict

# ---- a pool of evaluated models, written as run folders (train_args.json only) ----
STRONG_CI, WEAK_CI, TIED_CI = (0.90, 0.94), (0.70, 0.76), (0.88, 0.92)


def result(ci: tuple[float, float], head: bool = False) -> ModelResult:
    mean = sum(ci) / 2
    return ModelResult(accuracy_mean=mean, accuracy_std=0.01, ci_low=ci[0], ci_high=ci[1], n=12,
                       recall=mean, generalize=mean, val=mean, is_head=head)


def phase_of(tmp_path: Path, models: dict[str, tuple[tuple[float, float], dict]]):
    """collapse_domain + recommendations over `models` (name -> (CI, trainer-config overlay)), as run_phase does."""
    folders = {}
    for name, (_, overlay) in models.items():
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "train_args.json").write_text(json.dumps(deep_merge(tiny_config_dict(), overlay)))
    metrics, promoted, flagged = collapse_domain("digits", {n: result(ci) for n, (ci, _) in models.items()}, 0.95)
    return recommendations({"digits": metrics}, promoted, flagged, folders), promoted, flagged


# ------------------------------------------------------------- collapse ----

def test_one_model_recommends_nothing(tmp_path):
    recs, promoted, flagged = phase_of(tmp_path, {"baseline": (STRONG_CI, {})})
    assert promoted == ["baseline"] and flagged == [] and recs == {}


def test_a_flagged_model_differing_in_one_parameter_drops_that_value_only(tmp_path):
    recs, _, flagged = phase_of(tmp_path, {"best": (STRONG_CI, {}),
                                           "slow": (WEAK_CI, {"optim": {"name": "sgd", "lr": 0.02}})})
    assert flagged == ["slow"] and list(recs) == ["optim"]
    [e] = recs["optim"]
    assert (e.value, e.model, e.against, e.against_value) == ("sgd_0.02", "slow", "best", "sgd_0.05")
    assert e.ci == WEAK_CI and e.against_ci == STRONG_CI and e.domain == "digits" and e.confounded_with == []
    assert e.margin == pytest.approx(STRONG_CI[0] - WEAK_CI[1])
    written = PhaseResults(timestamp=1, run_id="r", search_space_recommendations=recs, seconds=1.0,
                           qtime={"epochs": 1, "slices": 1, "replicas": 1, "evaluations_per_model": 1})
    assert PhaseResults.model_validate_json(written.model_dump_json()).search_space_recommendations == recs


def test_tied_models_recommend_nothing(tmp_path):
    recs, promoted, flagged = phase_of(tmp_path, {"best": (STRONG_CI, {}),
                                                  "other": (TIED_CI, {"optim": {"name": "sgd", "lr": 0.02}})})
    assert flagged == [] and promoted == ["best", "other"] and recs == {}


def test_a_value_a_promoted_model_shares_stays(tmp_path):
    """sgd_0.02 lost once but also trained a model tied with the best: no evidence against it."""
    slow = {"optim": {"name": "sgd", "lr": 0.02}}
    recs, _, flagged = phase_of(tmp_path, {"best": (STRONG_CI, {}), "slow": (WEAK_CI, slow),
                                           "tied": (TIED_CI, {**slow, "loss": {"label_smoothing": 0.1}})})
    assert flagged == ["slow"] and "optim" not in recs


def test_several_differences_are_each_dropped_and_marked_confounded(tmp_path):
    recs, _, _ = phase_of(tmp_path, {"best": (STRONG_CI, {}),
                                     "slow": (WEAK_CI, {"optim": {"name": "sgd", "lr": 0.02},
                                                        "data": {"image_size": 24}})})
    assert set(recs) == {"optim", "image_size"}
    assert recs["optim"][0].confounded_with == ["image_size"] and recs["image_size"][0].confounded_with == ["optim"]
    assert "model" not in recs and "augment" not in recs         # values both models share


# ---------------------------------------------------------- restricted space ----

def drop(param: str, value, margin: float = 0.1, **stamp) -> dict:
    return {"value": value, "model": f"m-{value}", "ci": [0.5, 0.8 - margin], "against": "m-best",
            "against_value": "x", "against_ci": [0.8, 0.9], "domain": "digits", **stamp}


def test_restricted_space_drops_only_evidenced_values():
    space = restricted_space({"optim": [drop("optim", "sgd_0.02")]})
    assert space["optimization"][1] == [c for c in SPACE["optimization"][1] if c != "sgd_0.02"]
    assert all(space[d] == SPACE[d] for d in SPACE if d != "optimization")


def test_restricted_space_never_leaves_a_single_choice():
    models = SPACE["model_arch"][1]                     # four choices; evidence against three of them
    hint = {"model": [drop("model", models[0], 0.30), drop("model", models[1], 0.01), drop("model", models[2], 0.2)]}
    assert restricted_space(hint)["model_arch"][1] == [models[1], models[3]]   # the weakest evidence comes back
    hint["model"].append(drop("model", models[3], 0.05))                     # evidence against every choice
    assert restricted_space(hint)["model_arch"][1] == [models[1], models[3]]
    for dim, (param, choices) in SPACE.items():                              # any dimension, all dropped
        assert len(restricted_space({param: [drop(param, c) for c in choices]})[dim][1]) == 2


def test_old_keep_lists_narrow_nothing():
    old = {"model": ["resnet10t"], "image_size": [32], "sampling": ["uniform"]}
    assert restricted_space(old) == SPACE


def test_space_text_shows_the_evidence_and_the_expiry():
    text = space_text(None, {"optim": [drop("optim", "sgd_0.02", expires_after_cycle=21)]})
    assert "- optimization -> optim: sgd_0.05, sgd_0.1," in text
    assert "PHASE dropped optim sgd_0.02, until cycle 21: m-sgd_0.02 (CI 0.5000-0.7000)" in text
    assert "below m-best with optim x (CI 0.8000-0.9000)" in text


# --------------------------------------------------------- ingest and expiry ----

def results_file(tmp_path: Path, run_id: str, recs: dict) -> Path:
    raw = {"timestamp": 1730000000, "run_id": run_id, "domains_tested": ["digits"],
           "metrics": {"digits": {"fitness": 0.92, "models": {}}}, "promoted_variants": ["m-best"],
           "flagged_variants": ["m-sgd_0.02"], "search_space_recommendations": recs,
           "qtime": {"epochs": 1, "slices": 3, "replicas": 4, "evaluations_per_model": 12}, "seconds": 1.0}
    path = tmp_path / "phase" / run_id / "phase_results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    signal = tmp_path / "phase" / f"phase_complete_{run_id}.json"
    signal.write_text(json.dumps({"run_id": run_id, "results": str(path), "timestamp": 1}))
    return signal


def make_loop(tmp_path: Path, cycles: int = 20) -> Loop:
    ws = Workspace(tmp_path).ensure()
    cfg = DaemonConfig(workspace=str(tmp_path), phase=PhaseConfig(recommendation_cycles=cycles))
    return Loop(cfg=cfg, repo_root=REPO, ws=ws, events=EventLog(ws.events), say=lambda *_: None)


def test_a_recommendation_expires_after_its_cycles(tmp_path):
    loop, state = make_loop(tmp_path, cycles=5), LoopState(cycle=3)
    collapse_phase(loop, state, results_file(tmp_path, "r1", {"optim": [drop("optim", "sgd_0.02")]}), "phase-r1")
    [e] = state.phase_recommendations["optim"]
    assert (e["ingested_cycle"], e["expires_after_cycle"]) == (3, 8) and loop.phase_hint == state.phase_recommendations
    assert "sgd_0.02" not in restricted_space(loop.phase_hint)["optimization"][1]
    for cycle in range(4, 8):                           # cycles 4..8 run narrowed
        state.cycle = cycle
        expire_recommendations(loop, state)
        assert loop.phase_hint["optim"][0]["value"] == "sgd_0.02"
    state.cycle = 8                                     # cycle 8 done: cycle 9 searches the whole space
    expire_recommendations(loop, state)
    assert loop.phase_hint == {} == state.phase_recommendations
    assert restricted_space(loop.phase_hint) == SPACE
    lapsed = [e for e in EventLog(loop.ws.events) if e["kind"] == "phase_recommendations_expired"]
    assert len(lapsed) == 1 and lapsed[0]["cycle"] == 8 and lapsed[0]["still_in_force"] == {}


def test_the_next_phase_replaces_the_recommendation(tmp_path):
    loop, state = make_loop(tmp_path), LoopState(cycle=3)
    collapse_phase(loop, state, results_file(tmp_path, "r1", {"optim": [drop("optim", "sgd_0.02")]}), "phase-r1")
    state.cycle = 5
    collapse_phase(loop, state, results_file(tmp_path, "r2", {"model": [drop("model", "resnet14t")]}), "phase-r2")
    assert list(state.phase_recommendations) == ["model"] == list(loop.phase_hint)
    assert state.phase_recommendations["model"][0]["ingested_cycle"] == 5
    state.cycle = 7
    collapse_phase(loop, state, results_file(tmp_path, "r3", {}), "phase-r3")   # a PHASE with no evidence
    assert loop.phase_hint == {} == state.phase_recommendations


def test_an_old_results_file_narrows_nothing(tmp_path):
    old = {"model": ["resnet10t"], "image_size": [32], "sampling": ["uniform"]}
    signal = results_file(tmp_path, "old", old)
    assert PhaseResults.model_validate_json(Path(json.loads(signal.read_text())["results"]).read_text()
                                            ).search_space_recommendations == {}
    loop, state = make_loop(tmp_path), LoopState(cycle=2)
    collapse_phase(loop, state, signal, "phase-old")
    assert loop.phase_hint == {} == state.phase_recommendations and state.flagged_variants == ["m-sgd_0.02"]


def test_an_old_state_narrows_nothing_at_start(tmp_path):
    """A state.json written before issue 20 holds keep-lists: the daemon's start sets no narrowing."""
    loop, state = make_loop(tmp_path), LoopState(cycle=4, phase_recommendations={"model": ["resnet10t"]})
    loop.phase_hint = {"model": ["resnet10t"]}
    expire_recommendations(loop, state)
    assert loop.phase_hint == {} == state.phase_recommendations
    assert in_force({"optim": [drop("optim", "sgd_0.02")]}, 0) == {}          # unstamped: not the daemon's
