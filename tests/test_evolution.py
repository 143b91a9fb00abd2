"""The promotion pipeline: window arithmetic, spawn rules, gates, archive, proposal, approve,
reject, burn-in rollback, rollback, and the cutover under kill -9 at each step."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from loop.archive import freeze as archive
from loop.archive.gates import check_gates, composite_score
from loop.archive.headswitch import cutover, reject, rollback
from loop.archive.lifecycle import Lifecycle
from loop.archive.lineage import read_events, read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.probes import LoadedModel, ProbeMetrics, run_probes
from loop.archive.promotion import PromotionError, approve, propose, read_proposal
from loop.archive.store import load_store, save_store
from loop.candidates.scheduler import EvolutionError, spawn_candidates, window_open
from loop.candidates.window import CandidateOutcome
from loop.config import DaemonConfig, EvolutionConfig, ViolationRules
from loop.errors import ArchiveTampered
from tests.conftest import REPO, add_archive_entry, cli_here

# ----------------------------------------------------------- scheduler ----

def test_window_arithmetic():
    assert [c for c in range(0, 31) if window_open(c, 10)] == [10, 20, 30]
    assert window_open(7, 1) and not window_open(0, 5)
    with pytest.raises(EvolutionError):
        window_open(3, 0)


def test_spawn_seeds_strategies_branches_and_cap():
    specs = spawn_candidates(4, 3, 3, ["recent_weighted", "uniform", "hard_example_weighted"], "H", "P")
    assert [s.branch_id for s in specs] == ["a", "b", "c"]
    assert [s.seed for s in specs] == [424242, 424243, 424244]
    assert len({(s.seed, s.strategy) for s in specs}) == 3 and len({s.strategy for s in specs}) == 3
    assert all(s.gen_id == 4 and s.parent == "H" and s.grandparent == "P" for s in specs)
    with pytest.raises(EvolutionError, match="asked for 4 candidates; max_concurrent_experiments is 3"):
        spawn_candidates(4, 4, 3, ["uniform"])
    with pytest.raises(EvolutionError):
        spawn_candidates(4, 0, 3, ["uniform"])


# --------------------------------------------------------------- gates ----

def probes(recall=0.9, generalize=0.9, drift=0.0, violations=0):
    return ProbeMetrics(recall=recall, generalize=generalize, drift=drift, violations=violations,
                        val_accuracy=0.9, parameters=10)


HEAD = probes(0.90, 0.90)


@pytest.mark.parametrize("cand, budget_ok, failed", [
    (probes(0.90, 0.93, 0.01), True, []),
    (probes(0.84, 0.93, 0.01), True, ["recall"]),        # below HEAD - epsilon
    (probes(0.86, 0.93, 0.01), True, []),                # within epsilon
    (probes(0.95, 0.91, 0.01), True, ["generalize"]),    # not HEAD + delta
    (probes(0.95, 0.93, 0.06), True, ["drift"]),         # above theta
    (probes(0.95, 0.93, 0.01, violations=1), True, ["violations"]),
    (probes(0.95, 0.93, 0.01), False, ["budget"]),
])
def test_each_gate(cand, budget_ok, failed):
    result = check_gates(cand, HEAD, budget_ok, epsilon=0.05, delta=0.02, theta=0.05)
    assert result.failed == failed and result.passed == (not failed)
    assert result.score == composite_score(cand.recall, cand.generalize, cand.drift)


def test_gates_without_head_and_without_probes():
    assert check_gates(probes(0.1, 0.1), None, True, 0.05, 0.02, 0.05).passed
    failed = check_gates(None, HEAD, False, 0.05, 0.02, 0.05)
    assert not failed.passed and failed.score == 0.0 and "budget" in failed.failed


# ------------------------------------------------- real model fixtures ----

@pytest.fixture(scope="session")
def model_pool(zoo):
    """Three real digits models of rising quality (1, 2 and 5 epochs), from the test run's one zoo."""
    return {label: zoo[f"evo-{label}"] for label in ("weak", "mid", "strong")}


add_entry = add_archive_entry


def daemon_cfg(**evolution) -> DaemonConfig:
    return DaemonConfig(evolution=EvolutionConfig(rules=ViolationRules(per_class_accuracy_floor=None), **evolution))


def outcome(paths, name, head_model, gen=2):
    cand = LoadedModel(paths.entry(name))
    p = run_probes(cand, head_model, ViolationRules(per_class_accuracy_floor=None))
    spec = spawn_candidates(gen, 1, 1, ["uniform"])[0]
    return CandidateOutcome(name=name, spec=spec, returncode=0, status="PASS",
                            gates=check_gates(p, None, True, 1, 0, 1), probes=p, archive_path=str(paths.entry(name)))


@pytest.fixture
def workspace_with_head(tmp_path, model_pool):
    """HEAD = the weak model (G001); the strong model is a passing G002 candidate in TRAINING."""
    paths = ModelPaths(tmp_path / "ws")
    add_entry(paths, model_pool["weak"], "m-G001-a", 1, promoted=True)
    cutover(paths, "m-G001-a")
    add_entry(paths, model_pool["strong"], "m-G002-a", 2, parent="m-G001-a")
    store = load_store(paths)
    for name in ("m-G001-a", "m-G002-a"):
        store.add(name)
        for s in (Lifecycle.GERMINATED, Lifecycle.TRAINING):
            store.transition(name, s)
    store.state[store.row("m-G001-a")] = Lifecycle.FINE_TUNING
    save_store(paths, store)
    return paths


# ------------------------------------------------------------- archive ----

def test_archive_entry_is_complete_and_read_only(tmp_path, model_pool):
    paths = ModelPaths(tmp_path)
    entry = add_entry(paths, model_pool["weak"], "m-G001-a", 1)
    assert {p.name for p in entry.iterdir()} == set(archive.ARCHIVE_FILES)
    assert len(archive.ARCHIVE_FILES) == 10
    assert all(not (p.stat().st_mode & 0o222) for p in entry.iterdir())
    assert not (entry.stat().st_mode & 0o222)
    assert archive.verify_archive(paths) == {"m-G001-a": []}
    assert not list(paths.archive.glob(".staging-*"))


@pytest.mark.parametrize("tamper", ["flip", "add", "remove", "rename", "rewrite_hashes"])
def test_verify_catches_tampering(tmp_path, model_pool, tamper):
    paths = ModelPaths(tmp_path)
    entry = add_entry(paths, model_pool["weak"], "m-G001-a", 1)
    archive.make_writable(entry)
    if tamper == "flip":
        weights = entry / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif tamper == "add":
        (entry / "extra.txt").write_text("planted")
    elif tamper == "remove":
        (entry / "EVAL.md").unlink()
    elif tamper == "rename":
        archive.make_read_only(entry)
        entry.rename(paths.archive / "m-G009-z")
    else:
        (entry / "STATUS.txt").write_text("PASS - edited by hand\n")
        (entry / "hashes.csv").write_bytes(archive.hashes_csv(entry).encode())
    if tamper != "rename":
        archive.make_read_only(entry)
    report = archive.verify_archive(paths)
    assert any(report.values()), report
    with pytest.raises(ArchiveTampered):
        archive.require_intact(paths, "m-G001-a")


def test_cli_verify_passes_then_fails_after_one_byte(tmp_path, model_pool):
    paths = ModelPaths(tmp_path / "ws")
    entry = add_entry(paths, model_pool["weak"], "m-G001-a", 1)
    cmd = [sys.executable, "-m", "loop.cli.main", "archive", "verify", "--workspace", str(paths.workspace)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run(cmd, env=env, cwd=REPO, capture_output=True).returncode == 0
    archive.make_writable(entry)
    card = entry / "MODEL_CARD.md"
    card.write_bytes(card.read_bytes()[:-1] + b"?")
    archive.make_read_only(entry)
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 7 and "MODEL_CARD.md was changed" in result.stdout   # ArchiveTampered


# ------------------------------------------------ failed candidates' logs ----

def entry_intact(paths, name) -> bool:
    row = next(r for r in read_lineage(paths.lineage) if r.name == name)
    return archive.verify_entry(paths.entry(name), row.hashes_sha256) == []


@pytest.mark.slow
def test_failed_window_candidate_carries_its_training_log(tmp_path):
    """A candidate whose trainer exits before it writes metrics (an unknown model name) is archived
    with the trainer's output, error included, as train.log; its work folder is gone."""
    from loop.candidates.window import run_window

    cfg = DaemonConfig(default_trainer_config=str(REPO / "config/trainer/digits.yaml"), max_concurrent_experiments=1,
                       evolution=EvolutionConfig(rules=ViolationRules(per_class_accuracy_floor=None),
                                                 candidate_overrides={"model": {"name": "no_such_net"}}))
    result = run_window(cfg, tmp_path / "ws", cycle=5, count=1, trace_id="t-fail", say=lambda *_: None)
    paths = ModelPaths(tmp_path / "ws")
    (only,) = result.ranking
    assert result.gen_id == 1 and result.proposal is None and not only.gates.passed
    assert only.status == "FAIL - training failed before it wrote metrics (exit 3)"
    entry = paths.entry(only.name)
    log = (entry / "train.log").read_text()
    assert "no_such_net" in log and "error:" in log
    assert (entry / "STATUS.txt").read_text() == only.status + "\n" and not (entry / "model.safetensors").exists()
    assert entry_intact(paths, only.name) and not (paths.candidates / only.name).exists()
    assert load_store(paths).get(only.name) == Lifecycle.CULLED
    events = {e["action"]: e for e in read_events(paths.log)}
    assert events["REJECTED"]["rank"] == 1 and events["GENERATION"]["proposed"] is None


def test_failed_daemon_run_carries_the_supervisor_log(tmp_path):
    """A daemon run handed off after an exit before metrics: the supervisor's run.log (beside the
    trainer's out/ folder) becomes the entry's train.log, and the hand-off keeps its shape on disk."""
    from loop.candidates.intake import submit_run

    run_dir = tmp_path / "runs" / "r1" / "out"
    run_dir.mkdir(parents=True)
    (run_dir / "train.log").write_text("")            # the trainer's own log: empty, it never trained
    (run_dir.parent / "run.log").write_text("loading config\nerror: Unsupported model.name: no_such_net\n")
    result = submit_run(daemon_cfg(), tmp_path / "ws", run_dir, cycle=4, trace_id="t-d", returncode=2)
    paths = ModelPaths(tmp_path / "ws")
    assert result.status == "FAIL - training failed before it wrote metrics (exit 2)"
    assert result.score == 0.0 and not result.proposed and result.improvement is None
    # as the cycle event and state.json keep it: what happened, the unset fields left out
    assert set(result.model_dump()) == {"name", "status", "score", "gates", "failed_gates", "archive_path",
                                        "proposed"}
    entry = paths.entry(result.name)
    assert result.archive_path == str(entry) and "-G001-c4-" in result.name
    assert "error: Unsupported model.name: no_such_net" in (entry / "train.log").read_text()
    assert entry_intact(paths, result.name) and load_store(paths).get(result.name) == Lifecycle.CULLED
    (rejected,) = [e for e in read_events(paths.log) if e["action"] == "REJECTED"]
    assert rejected["source"] == "builder" and "rank" not in rejected
    assert not [e for e in read_events(paths.log) if e["action"] == "NO_PROMOTION"]


def test_daemon_run_without_a_supervisor_log_keeps_its_own(tmp_path, model_pool):
    """A passing run handed off on its own (no run.log beside it) is archived with the trainer's
    train.log and becomes the first proposal."""
    from loop.candidates.intake import submit_run

    result = submit_run(daemon_cfg(), tmp_path / "ws", model_pool["mid"], cycle=3, trace_id="t-ok")
    entry = ModelPaths(tmp_path / "ws").entry(result.name)
    assert result.status == "PASS" and result.proposed and result.head is None
    assert (entry / "train.log").read_bytes() == (model_pool["mid"] / "train.log").read_bytes()
    assert {p.name for p in entry.iterdir()} == set(archive.ARCHIVE_FILES)


# ------------------------------------------------------------ proposal ----

def test_proposal_only_when_a_candidate_beats_head(workspace_with_head):
    paths = workspace_with_head
    store = load_store(paths)
    head_model = LoadedModel(paths.entry("m-G001-a"))
    head_probes = run_probes(head_model, None, ViolationRules(per_class_accuracy_floor=None))
    strong = outcome(paths, "m-G002-a", head_model)
    assert strong.gates.score > composite_score(head_probes.recall, head_probes.generalize, 0)
    # the strong model beats the weak HEAD: a proposal
    proposal = propose(paths, store, [strong], "m-G001-a", head_probes)
    assert proposal and proposal.proposed_head == "m-G002-a" and paths.proposal.exists()
    assert proposal.hashes.model == archive.sha256_file(paths.entry("m-G002-a") / "model.safetensors")
    assert read_proposal(paths) == proposal
    # the file is the record serialised, in the shape it always had
    import json
    on_disk = json.loads(paths.proposal.read_text())
    assert list(on_disk) == ["action", "current_head", "proposed_head", "reason", "improvement", "score",
                             "head_score", "metrics", "gates", "hashes", "timestamp", "cycle_trace_id"]
    assert on_disk["action"] == "PROMOTE" and on_disk["metrics"] == strong.probes.model_dump()
    assert list(on_disk["hashes"]) == ["model", "manifest", "hashes_csv"]
    assert paths.proposal.read_text() == json.dumps(on_disk, indent=2) + "\n"
    paths.proposal.unlink()
    # against itself as HEAD it cannot improve: no proposal
    self_probes = strong.probes.model_copy(update={"drift": 0.0})
    assert propose(paths, store, [strong], "m-G002-a", self_probes) is None and not paths.proposal.exists()
    assert read_events(paths.log)[-1]["action"] == "NO_PROMOTION"


def make_proposal(paths):
    store = load_store(paths)
    head_model = LoadedModel(paths.entry("m-G001-a"))
    head_probes = run_probes(head_model, None, ViolationRules(per_class_accuracy_floor=None))
    propose(paths, store, [outcome(paths, "m-G002-a", head_model)], "m-G001-a", head_probes)
    save_store(paths, store)


def test_approve_moves_head_and_rollback_moves_it_back(workspace_with_head):
    paths = workspace_with_head
    make_proposal(paths)
    record = approve(daemon_cfg(), paths.workspace, say=lambda *_: None)
    assert record["action"] == "PROMOTED" and paths.head_name() == "m-G002-a"
    assert not paths.proposal.exists()
    store = load_store(paths)
    assert store.get("m-G002-a") == Lifecycle.FINE_TUNING and store.get("m-G001-a") == Lifecycle.FOSSILIZED
    actions = [e["action"] for e in read_events(paths.log)]
    assert actions[-4:] == ["APPROVED", "GRAFT", "SHADOW", "PROMOTED"]
    graft = next(e for e in read_events(paths.log) if e["action"] == "GRAFT")
    assert graft["ok"] and graft["alphas"][-1] == 1.0 and graft["strategy"] == "linear"
    assert next(r for r in read_lineage(paths.lineage) if r.name == "m-G002-a").promoted

    back = rollback(paths.workspace)
    assert back["from"] == "m-G002-a" and back["to"] == "m-G001-a" and paths.head_name() == "m-G001-a"
    assert load_store(paths).get("m-G002-a") == Lifecycle.ROLLED_BACK
    with pytest.raises(PromotionError, match="no earlier promoted generation"):
        rollback(paths.workspace)


def test_rollback_to_a_named_generation(workspace_with_head, model_pool):
    paths = workspace_with_head
    add_entry(paths, model_pool["mid"], "m-G003-a", 3, promoted=True)
    cutover(paths, "m-G003-a")
    record = rollback(paths.workspace, to="m-G002-a")
    assert record["to"] == "m-G002-a" and paths.head_name() == "m-G002-a"
    add_entry(paths, model_pool["mid"], "m-G004-a", 4, status="FAIL - gates failed: drift")
    with pytest.raises(PromotionError, match="only a passing generation"):
        rollback(paths.workspace, to="m-G004-a")
    with pytest.raises(PromotionError, match="no such archive entry"):
        rollback(paths.workspace, to="m-G099-z")


def test_reject_cancels_and_keeps_head(workspace_with_head):
    paths = workspace_with_head
    make_proposal(paths)
    record = reject(paths.workspace, note="not tonight")
    assert record["note"] == "not tonight" and paths.head_name() == "m-G001-a" and not paths.proposal.exists()
    assert load_store(paths).get("m-G002-a") == Lifecycle.CANCELLED
    with pytest.raises(PromotionError, match="no pending proposal"):
        reject(paths.workspace)


def test_failed_burn_in_rolls_back_by_itself(workspace_with_head):
    paths = workspace_with_head
    make_proposal(paths)
    record = approve(daemon_cfg(burn_in_min_accuracy=1.0), paths.workspace, say=lambda *_: None)
    assert record["action"] == "ROLLBACK" and "burn-in failed" in record["reason"]
    assert paths.head_name() == "m-G001-a"
    assert load_store(paths).get("m-G002-a") == Lifecycle.ROLLED_BACK
    assert "BURN_IN_FAILED" in [e["action"] for e in read_events(paths.log)]


def test_failed_graft_keeps_head(workspace_with_head):
    paths = workspace_with_head
    make_proposal(paths)
    # swap roles: propose the weak model over the strong HEAD by editing nothing but the proposal
    cutover(paths, "m-G002-a")
    proposal = read_proposal(paths)
    hashes = proposal.hashes.model_copy(
        update={"model": archive.sha256_file(paths.entry("m-G001-a") / "model.safetensors")})
    paths.proposal.write_text(proposal.model_copy(update={"proposed_head": "m-G001-a", "hashes": hashes})
                              .model_dump_json())
    store = load_store(paths)
    store.state[store.row("m-G001-a")] = Lifecycle.TRAINING
    save_store(paths, store)
    record = approve(daemon_cfg(), paths.workspace, say=lambda *_: None)
    assert record["action"] == "ROLLBACK" and "graft failed" in record["reason"]
    assert paths.head_name() == "m-G002-a"


def test_a_proposal_file_that_does_not_validate_is_an_error(workspace_with_head):
    """Never a silent None: the error names the file and the field."""
    import json
    paths = workspace_with_head
    make_proposal(paths)
    proposal = json.loads(paths.proposal.read_text())
    del proposal["hashes"]["manifest"]
    proposal["score"] = "high"
    paths.proposal.write_text(json.dumps(proposal))
    with pytest.raises(PromotionError) as caught:
        read_proposal(paths)
    assert str(paths.proposal) in str(caught.value)
    assert "hashes.manifest" in str(caught.value) and "score" in str(caught.value)
    paths.proposal.write_text("{not json")
    with pytest.raises(PromotionError, match="PROMOTION_PROPOSAL.json"):
        approve(daemon_cfg(), paths.workspace, say=lambda *_: None)


def test_promotion_of_a_tampered_archive_is_refused(workspace_with_head):
    paths = workspace_with_head
    make_proposal(paths)
    entry = paths.entry("m-G002-a")
    archive.make_writable(entry)
    (entry / "EVAL.md").write_text("looks great\n")
    archive.make_read_only(entry)
    with pytest.raises(ArchiveTampered, match="EVAL.md was changed"):
        approve(daemon_cfg(), paths.workspace, say=lambda *_: None)
    assert paths.head_name() == "m-G001-a"
    with pytest.raises(ArchiveTampered):
        rollback(paths.workspace, to="m-G002-a")


CUTOVER_SCRIPT = """
import sys
from pathlib import Path
from loop.archive.paths import ModelPaths
from loop.archive.headswitch import cutover
cutover(ModelPaths(Path(sys.argv[1])), sys.argv[2])
"""


@pytest.mark.parametrize("point", ["cutover:after_new_link", "cutover:after_rename"])
def test_cutover_is_atomic_under_kill_9(workspace_with_head, point):
    paths = workspace_with_head
    env = dict(os.environ, PYTHONPATH=str(REPO), LLMLOOP_FAULT=point)
    proc = subprocess.run([sys.executable, "-c", CUTOVER_SCRIPT, str(paths.workspace), "m-G002-a"], env=env,
                          cwd=REPO, capture_output=True)
    assert proc.returncode == -9                      # it really was killed at that point
    head = paths.head_name()
    assert head in ("m-G001-a", "m-G002-a")
    assert archive.verify_entry(paths.head.resolve(), None) == []
    LoadedModel(paths.head.resolve())                 # HEAD loads as a complete model
    cutover(paths, "m-G002-a")                        # and the next cutover cleans up after the kill
    assert paths.head_name() == "m-G002-a" and not (paths.root / ".GEN_HEAD.next").exists()


# ---------------------------------------------------------- end to end ----

@pytest.mark.slow
@pytest.mark.timeout(900)   # four candidate trainings (processes) and two promotions: ~4 min on a busy 2-core box
def test_full_window_on_digits(tmp_path, capsys, monkeypatch):
    """Two windows through the CLI: from scratch (weak), then with KD from the promoted HEAD. The
    commands run in-process (`llmloop`'s main, its parser and exit codes; each candidate still
    trains as its own process): a fresh `llmloop` process per command only paid torch's import."""
    ws = tmp_path / "ws"
    cfg_path = tmp_path / "daemon.yaml"
    # balanced KD: at the default 0.1/0.9 the student mostly copies the weak 1-epoch HEAD, and the second
    # window's gain over it (seen: +0.004 to +0.05) was too thin to promote on every run
    overrides = {"data": {"image_size": 16, "train_fraction": 0.3, "batch_size": 32},
                 "run": {"epochs": 1, "log_every_steps": 5}, "schedule": {"warmup_epochs": 0},
                 "kd": {"alpha": 0.5, "beta": 0.5}}
    import yaml
    # theta 1.0: a 3-epoch model disagrees with a 1-epoch HEAD on most images (drift ~0.7); the drift
    # gate is tested on its own (test_each_gate); what this test follows is the second promotion
    cfg_path.write_text(yaml.safe_dump({"workspace": str(ws), "max_concurrent_experiments": 2, "theta": 1.0,
                                        "default_trainer_config": str(REPO / "config/trainer/digits.yaml"),
                                        "evolution": {"candidate_overrides": overrides,
                                                      "rules": {"per_class_accuracy_floor": None}}}))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))        # what the candidates' processes import, as before

    def cli(*args):
        return cli_here(capsys, *args, "--daemon-config", str(cfg_path))

    first = cli("evolve")
    assert first.returncode == 0, first.stderr
    paths = ModelPaths(ws)
    rows = read_lineage(paths.lineage)
    assert len(rows) == 2 and {r.branch_id for r in rows} == {"a", "b"} and {r.seed for r in rows} == {424242, 424243}
    assert paths.proposal.exists() and "proposal:" in first.stdout
    assert cli("promote", "--approve").returncode == 0
    head = paths.head_name()
    assert head is not None

    # second window: longer training, KD from HEAD, replay from HEAD's data
    overrides["run"]["epochs"] = 3
    cfg_path.write_text(cfg_path.read_text().replace("epochs: 1", "epochs: 3"))
    second = cli("evolve")
    assert second.returncode == 0, second.stderr
    rows = read_lineage(paths.lineage)
    gen2 = [r for r in rows if r.gen_id == 2]
    assert len(gen2) == 2 and all(r.parent == head for r in gen2)
    manifest = (paths.entry(gen2[0].name) / "evo_manifest.json").read_text()
    assert '"primary_teacher": {' in manifest and '"replay_samples": 50' in manifest
    train_args = (paths.entry(gen2[0].name) / "train_args.json").read_text()
    assert head in train_args                              # KD teacher was GEN_HEAD
    assert cli("archive", "verify").returncode == 0
    log = [(e["action"], e.get("reason", "")) for e in read_events(paths.log)]
    assert paths.proposal.exists(), log          # 3 epochs with KD beat the 1-epoch HEAD: proposed
    promoted = cli("promote", "--approve")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr    # not rolled back (10)
    assert paths.head_name() in {r.name for r in gen2}
    for entry in paths.archive.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            assert {p.name for p in entry.iterdir()} == set(archive.ARCHIVE_FILES) or \
                "FAIL" in (entry / "STATUS.txt").read_text()
            assert (entry / "train.log").read_text().strip()      # the trainer's output, pass or fail
    events = [e["action"] for e in read_events(paths.log)]
    assert events.count("GENERATION") == 2 and "SPAWN" in events and events.count("PROMOTED") == 2
    shutil.rmtree(ws / "models" / "candidates", ignore_errors=True)


# ------------------------------------------------------- one run plan ----

def test_a_window_candidate_gets_the_recipes_caps_where_they_are_tighter(tmp_path):
    """Candidates get their plan from the daemon runs' maker: the tighter cap of the recipe's and the
    daemon's wins, a cap only one of them sets holds, and the supervisor's walltime follows the cap."""
    import yaml

    from loop.archive.store import load_store
    from loop.candidates.window import spawn
    from loop.config import BudgetCaps
    from tests.conftest import tiny_config_dict

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_config_dict(budget={"max_walltime_minutes": 10,
                                                                    "max_cpu_memory_gb": 1.0})))
    cfg = DaemonConfig(default_trainer_config=str(recipe_file), run_stall_minutes=20,
                       budget=BudgetCaps(max_walltime_minutes=30, max_cpu_memory_gb=2.0, max_disk_gb=5.0))
    paths = ModelPaths(tmp_path / "ws")
    for folder in (paths.archive, paths.candidates, paths.lifecycle):
        folder.mkdir(parents=True, exist_ok=True)
    specs = spawn_candidates(1, 1, 1, ["uniform"])
    base = yaml.safe_load(recipe_file.read_text())
    trainings, plans = spawn(cfg, paths, load_store(paths), specs, base, None, [], 10, "t")
    caps = trainings[0].run_cfg["budget"]
    assert caps["max_walltime_minutes"] == 10 and caps["max_cpu_memory_gb"] == 1.0    # the recipe's, tighter
    assert caps["max_disk_gb"] == 5.0                                                 # the daemon's alone holds
    assert plans[0].walltime_limit_seconds == 10 * 60 + 60 and plans[0].stall_seconds == 20 * 60
    import json

    assert json.loads((paths.candidates / plans[0].label / "run.yaml").read_text())["budget"] == caps
    assert plans[0].argv[-1] == str(paths.candidates / plans[0].label / "run")     # where take_candidates reads


def test_the_daemons_cap_wins_where_it_is_tighter_and_a_missing_cap_removes_none():
    from loop.config import BudgetCaps
    from loop.run.plan import tighter_caps

    daemon = BudgetCaps(max_walltime_minutes=5, max_cpu_memory_gb=None)
    assert tighter_caps({"max_walltime_minutes": 10, "max_cpu_memory_gb": 1.0}, daemon) == {
        "max_walltime_minutes": 5, "max_cpu_memory_gb": 1.0}
    assert tighter_caps(None, daemon) == {"max_walltime_minutes": 5}
    with pytest.raises(Exception, match="budget must map cap names to numbers"):
        tighter_caps({"max_walltime_minutes": "ten"}, daemon)
