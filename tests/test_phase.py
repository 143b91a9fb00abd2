"""PHASE deep evaluation on real archives: tiny real models, frozen and verified, GEN_HEAD a real
link. Results shape, QTIME counts, intervals, promotion/flagging, recommendations (values dropped
on evidence; tests/test_phase_narrowing.py has the rules at unit level), the completion
signal, tampering, empty workspaces, non-SPICA refusal and the command line."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from loop.agents.space import params_of
from loop.archive import freeze as archive
from loop.archive.headswitch import cutover
from loop.archive.paths import ModelPaths
from loop.config import DaemonConfig, PhaseConfig
from loop.errors import DomainError
from loop.phase.evaluate import jitter
from loop.phase.results import PhaseResults, PhaseSignal, completion_signal, latest_results, read_results
from loop.phase.run import run_phase
from loop.phase.stats import mean_ci, t_quantile
from tests.conftest import REPO, add_archive_entry

SEED_KEYS = {"timestamp", "domains_tested", "metrics", "promoted_variants", "search_space_recommendations"}


# ------------------------------------------------------------- fixtures ----

@pytest.fixture(scope="module")
def pool(zoo):
    """Two real digits models far apart in quality: weak (1 epoch on 10%) and strong (the zoo's)."""
    return {"weak": zoo["phase-weak"], "strong": zoo["phase-strong"]}


add_entry = add_archive_entry


@pytest.fixture
def workspace(tmp_path, pool):
    """GEN_HEAD = the weak model (G001); the strong one is a PASS entry (G002)."""
    ws = tmp_path / "ws"
    paths = ModelPaths(ws)
    add_entry(paths, pool["weak"], "m-G001-a", 1, score=0.2)
    add_entry(paths, pool["strong"], "m-G002-a", 2, score=0.9)
    cutover(paths, "m-G001-a")
    return ws


def phase_cfg(**phase) -> DaemonConfig:
    return DaemonConfig(phase=PhaseConfig(**{"epochs": 1, "slices": 3, "replicas": 1, **phase}))


def copy_run(src: Path, dst: Path, **config_changes) -> Path:
    """A writable copy of a run folder with keys of config.json replaced."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ------------------------------------------------------------ statistics ----

@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.7062), (0.975, 5, 2.5706), (0.995, 10, 3.1693), (0.95, 29, 1.6991), (0.975, 10**6, 1.9600)])
def test_t_quantile_matches_the_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("p, df", [(0.5, 3), (1.0, 3), (0.3, 3), (0.975, 0)])
def test_t_quantile_refuses_out_of_range(p, df):
    with pytest.raises(ValueError, match="t_quantile needs"):
        t_quantile(p, df)


def test_mean_ci_contains_the_mean_and_shrinks_with_n():
    mean, std, low, high = mean_ci([0.8, 0.9], 0.95)
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.0707, abs=1e-4) and low < mean < high
    assert low == pytest.approx(mean - 12.7062 * std / 2 ** 0.5, abs=1e-3) and high == 1.0   # clipped
    wide = high - low
    _, _, low, high = mean_ci([0.8, 0.9] * 8, 0.95)
    assert high - low < wide / 5
    assert mean_ci([0.7], 0.95) == (0.7, 0.0, 0.7, 0.7)


def test_jitter_is_seeded_and_light():
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    a, b, c = jitter(images, 1), jitter(images, 1), jitter(images, 2)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, images)
    assert torch.equal(jitter(images, 1, max_shift_px=0.0), images)


# --------------------------------------------------------------- run_phase ----

def test_results_signal_promotion_and_recommendations(workspace, pool):
    cfg = phase_cfg(epochs=2, slices=2, replicas=2)
    path = run_phase(cfg, workspace, "r1", progress=False)
    signal = completion_signal(workspace, "r1")
    assert path == workspace / "phase" / "r1" / "phase_results.json" and path.is_file() and signal.is_file()

    raw = json.loads(path.read_text())
    assert SEED_KEYS <= set(raw) and {"flagged_variants", "qtime", "run_id", "seconds"} <= set(raw)
    results = PhaseResults.model_validate(raw)
    assert results == read_results(path) == latest_results(workspace)
    assert results.domains_tested == ["digits"] and results.qtime.evaluations_per_model == 8
    digits = results.metrics["digits"]
    weak, strong = digits.models["m-G001-a"], digits.models["m-G002-a"]
    assert weak.is_head and not strong.is_head
    for m in (weak, strong):
        assert m.n == 2 * 2 * 2 and m.ci_low <= m.accuracy_mean <= m.ci_high and m.accuracy_std > 0
        assert 0 <= m.recall <= 1 and 0 <= m.generalize <= 1 and 0 <= m.val <= 1
    assert strong.accuracy_mean > weak.accuracy_mean + 0.3 and digits.fitness == strong.accuracy_mean
    assert results.promoted_variants == ["m-G002-a"] and results.flagged_variants == ["m-G001-a"]
    assert any("GEN_HEAD (m-G001-a)" in line and "do not overlap" in line for line in digits.insights)

    # only the weak (flagged) model's values that differ from the best's leave the search, with evidence
    weak_p, strong_p = (params_of(json.loads((pool[k] / "train_args.json").read_text())) for k in ("weak", "strong"))
    recs = results.search_space_recommendations
    assert set(recs) == {"sampling", "optim", "label_smoothing"}          # model, image_size, augment: shared
    for param, [e] in recs.items():
        assert (e.value, e.against_value) == (weak_p[param], strong_p[param]) and e.value != e.against_value
        assert (e.model, e.against, e.domain) == ("m-G001-a", "m-G002-a", "digits")
        assert e.ci == (weak.ci_low, weak.ci_high) and e.against_ci == (strong.ci_low, strong.ci_high)
        assert set(e.confounded_with) == set(recs) - {param} and e.expires_after_cycle is None
    assert recs["optim"][0].value == "sgd_0.02" and recs["label_smoothing"][0].against_value == 0.05

    sig = PhaseSignal.model_validate_json(signal.read_text())
    assert sig.run_id == "r1" and Path(sig.results) == path.resolve()
    assert signal.stat().st_mtime_ns >= path.stat().st_mtime_ns      # the signal comes last
    log = (path.parent / "phase.log").read_text()
    assert "evaluating digits/m-G002-a" in log and "progress 16/16" in log


def test_interval_narrows_with_more_evaluations(workspace):
    few = read_results(run_phase(phase_cfg(slices=3), workspace, "few", progress=False))
    many = read_results(run_phase(phase_cfg(slices=8, replicas=3), workspace, "many", progress=False))
    for name in ("m-G001-a", "m-G002-a"):
        a, b = few.metrics["digits"].models[name], many.metrics["digits"].models[name]
        assert (a.n, b.n) == (3, 24)
        assert b.ci_high - b.ci_low < a.ci_high - a.ci_low
    # latest_results follows the newest signal
    assert latest_results(workspace).run_id == "many"


def test_every_domain_is_tested_once(workspace, pool, tmp_path):
    """A model of the same task under other split arguments is a domain of its own."""
    other = copy_run(pool["strong"], tmp_path / "other", domain_args={
        **json.loads((pool["strong"] / "config.json").read_text())["domain_args"], "split_seed": 99})
    add_entry(ModelPaths(workspace), other, "m-G003-a", 3, score=0.8)
    results = read_results(run_phase(phase_cfg(top_k=2), workspace, "multi", progress=False))
    assert len(results.domains_tested) == 2 and all(d.startswith("digits@") for d in results.domains_tested)
    homes = {name: label for label, d in results.metrics.items() for name in d.models}
    assert homes["m-G001-a"] == homes["m-G002-a"] != homes["m-G003-a"]
    for d in results.metrics.values():
        assert d.fitness == max(m.accuracy_mean for m in d.models.values())


def test_top_k_takes_the_best_pass_entries_and_counts_head_once(workspace, pool):
    paths = ModelPaths(workspace)
    add_entry(paths, pool["strong"], "m-G003-a", 3, status="FAIL - gates failed: drift", score=0.99)
    add_entry(paths, pool["weak"], "m-G005-a", 5, score=0.1)
    cutover(paths, "m-G002-a")                       # HEAD is now the best-scored PASS entry
    results = read_results(run_phase(phase_cfg(top_k=1), workspace, "k1", progress=False))
    models = results.metrics["digits"].models
    assert set(models) == {"m-G002-a", "m-G001-a"} and models["m-G002-a"].is_head
    assert "GEN_HEAD (m-G002-a) is the best model in digits" in results.metrics["digits"].insights
    results = read_results(run_phase(phase_cfg(top_k=0), workspace, "k0", progress=False))
    assert list(results.metrics["digits"].models) == ["m-G002-a"]


def test_tampered_entry_is_skipped_with_an_insight(workspace):
    entry = ModelPaths(workspace).entry("m-G002-a")
    archive.make_writable(entry)
    with open(entry / "EVAL.md", "a") as fh:
        fh.write("edited\n")
    archive.make_read_only(entry)
    results = read_results(run_phase(phase_cfg(), workspace, "t", progress=False))
    assert list(results.metrics["digits"].models) == ["m-G001-a"]
    assert any("m-G002-a" in line and "skipped" in line and "EVAL.md was changed" in line
               for line in results.insights)


def test_empty_workspace_still_writes_results_and_signal(tmp_path):
    path = run_phase(phase_cfg(), tmp_path / "empty", "e", progress=False)
    results = read_results(path)
    assert results.domains_tested == [] and results.metrics == {} and results.promoted_variants == []
    assert any("nothing to evaluate" in line for line in results.insights)
    assert completion_signal(tmp_path / "empty", "e").is_file()


def test_non_spica_domain_is_refused(workspace, pool, tmp_path, monkeypatch):
    module = f"user_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{module}.py").write_text("class NotSpica:\n    name = 'plain'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    rogue = copy_run(pool["weak"], tmp_path / "rogue", domain=f"{module}:NotSpica", domain_args={})
    add_entry(ModelPaths(workspace), rogue, "m-G004-a", 4, score=0.95)
    stale = completion_signal(workspace, "rogue")
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")                          # a rerun withdraws the old signal first
    with pytest.raises(DomainError, match="NotSpica is not a SpicaDomain"):
        run_phase(phase_cfg(), workspace, "rogue", progress=False)
    assert not stale.exists() and not (workspace / "phase" / "rogue").exists()


def test_bad_run_id_is_refused(tmp_path):
    from loop.errors import ConfigError

    with pytest.raises(ConfigError, match="run-id"):
        run_phase(phase_cfg(), tmp_path, "../escape", progress=False)


# -------------------------------------------------------------------- CLI ----

@pytest.mark.slow
def test_python_m_loop_phase_run(workspace, tmp_path):
    config = tmp_path / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        workspace: {json.dumps(str(workspace))}
        phase: {{epochs: 1, slices: 2, replicas: 2}}
        """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "loop.phase", "run", "--daemon-config", str(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    signals = list((workspace / "phase").glob("phase_complete_*.json"))
    assert len(signals) == 1 and re.fullmatch(r"phase_complete_\d{8}-\d{6}\.json", signals[0].name)
    results = latest_results(workspace)
    assert results.qtime.evaluations_per_model == 4
    assert all(m.n == 4 for m in results.metrics["digits"].models.values())
    assert "digits: fitness" in proc.stdout and "progress 8/8" in proc.stdout   # lines off a terminal
