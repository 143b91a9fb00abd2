"""Result collapse: PHASE's results, ingested on resume, update the loop's baselines, flags and
search space (values dropped on evidence, stamped with their expiry), with one integration event;
the offline policy then searches the narrowed space."""
from __future__ import annotations

import json

from loop.agents.offline import PolicyInput, builder_decision
from loop.agents.space import SPACE, params_of, restricted_space, space_text
from loop.config import DaemonConfig, deep_merge, read_yaml
from loop.cycle.cycle import Loop, phase_section  # noqa: F401  (Loop: re-exported by the cycle)
from loop.cycle.state import LoopState
from loop.daemon.phase_pause import collapse_phase
from loop.journal.events import EventLog
from loop.journal.history import RunRecord
from loop.phase.results import PhaseResults
from loop.util.workspace import Workspace
from tests.conftest import REPO

RESULTS = {
    "timestamp": 1730000000, "run_id": "r1", "domains_tested": ["digits"],
    "metrics": {"digits": {"fitness": 0.991, "insights": ["G2-b leads"], "models": {
        "G2-b": {"accuracy_mean": 0.991, "accuracy_std": 0.002, "ci_low": 0.989, "ci_high": 0.993, "n": 12,
                 "recall": 0.99, "generalize": 0.99, "val": 0.99, "is_head": False},
        "G1-a": {"accuracy_mean": 0.90, "accuracy_std": 0.01, "ci_low": 0.89, "ci_high": 0.91, "n": 12,
                 "recall": 0.9, "generalize": 0.9, "val": 0.9, "is_head": True}}}},
    "promoted_variants": ["G2-b"], "flagged_variants": ["G1-a"],
    "search_space_recommendations": {  # G1-a, flagged, was trained with these; the best G2-b with others
        "model": [{"value": "mobilenetv3_small_075", "model": "G1-a", "ci": [0.89, 0.91], "against": "G2-b",
                   "against_value": "resnet10t", "against_ci": [0.989, 0.993], "domain": "digits",
                   "confounded_with": ["image_size"]}],
        "image_size": [{"value": 40, "model": "G1-a", "ci": [0.89, 0.91], "against": "G2-b", "against_value": 32,
                        "against_ci": [0.989, 0.993], "domain": "digits", "confounded_with": ["model"]}]},
    "qtime": {"epochs": 1, "slices": 3, "replicas": 4, "evaluations_per_model": 12}, "seconds": 3.0,
}


def test_collapse_updates_baselines_flags_search_space_and_logs_once(tmp_path):
    ws = Workspace(tmp_path).ensure()
    results_path = tmp_path / "phase" / "r1" / "phase_results.json"
    results_path.parent.mkdir(parents=True)
    results_path.write_text(json.dumps(PhaseResults.model_validate(RESULTS).model_dump()))
    signal = tmp_path / "phase" / "phase_complete_r1.json"
    signal.write_text(json.dumps({"run_id": "r1", "results": str(results_path), "timestamp": 1}))
    loop = Loop(cfg=DaemonConfig(workspace=str(tmp_path)), repo_root=REPO, ws=ws, events=EventLog(ws.events),
                say=lambda *_: None)
    state = LoopState(cycle=6)
    collapse_phase(loop, state, signal, "phase-r1")
    assert state.fitness_baselines == {"digits": 0.991} and state.flagged_variants == ["G1-a"]
    stamp = {"ingested_cycle": 6, "expires_after_cycle": 6 + loop.cfg.phase.recommendation_cycles}
    assert loop.phase_hint == state.phase_recommendations == {
        param: [{**e, **stamp} for e in entries] for param, entries in RESULTS["search_space_recommendations"].items()}
    events = [e for e in EventLog(ws.events) if e["kind"] == "phase_integration"]
    assert len(events) == 1 and events[0]["promoted_variants"] == ["G2-b"]
    assert events[0]["recommendations_expire_after_cycle"] == stamp["expires_after_cycle"]
    assert "mobilenetv3_small_075" in phase_section(state)["PHASE deep evaluation"]      # shown to the Builder
    text = space_text(None, loop.phase_hint)
    assert f"PHASE dropped model mobilenetv3_small_075, until cycle {stamp['expires_after_cycle']}: G1-a" in text
    assert "they also differ in image_size" in text


def test_recommendations_narrow_the_offline_search():
    hint = RESULTS["search_space_recommendations"]
    space = restricted_space(hint)
    assert space["model_arch"][1] == [m for m in SPACE["model_arch"][1] if m != "mobilenetv3_small_075"]
    assert space["preprocessing"][1] == [24, 32]
    assert space["loss"][1] == SPACE["loss"][1]                               # untouched parameters stay
    base = read_yaml(REPO / "config/trainer/digits.yaml")
    history = [RunRecord(f"r{i}", i, base, True, 0.95 if i == 0 else 0.9) for i in range(8)]   # stagnating
    for cycle in range(9, 14):
        d = builder_decision(PolicyInput(cycle, history, [], hint))
        params = params_of(deep_merge(base, d.train_overlay))
        assert params.get("model") != "mobilenetv3_small_075" and params.get("image_size") != 40
