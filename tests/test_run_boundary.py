"""The run boundary (issue 21): nothing a run writes is trusted by the daemon. Each test replays an
attack from inside a real sandboxed run, with harmless targets it makes itself, and checks on the
host side that it failed.

1. Root code execution: a run plants a module where it may write; a decision (or the run's own
   config.json) names it as the task's domain; the daemon must never import it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from loop.agents.schema import Decision
from loop.config import DaemonConfig
from loop.domains import trust_domains, trust_from
from loop.errors import ConfigError, DomainError
from loop.run.sandbox import find_bwrap, load_sandbox
from tests.conftest import REPO, tiny_config_dict

needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None or find_bwrap(True)[1] is not None,
                                   reason="bubblewrap cannot run here")
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('imported')\nclass Evil: pass\n"


@pytest.fixture(autouse=True)
def untrusting():
    """Each test says what it trusts; the process goes back to trusting any spec after it."""
    yield
    import loop.domains as domains

    domains._trusted, domains._untrusted_roots = None, ()


def sandboxed(ws: Path, command: str) -> Path:
    """Run one shell line in a real sandbox as the daemon runs a run_command; returns its folder."""
    cfg = DaemonConfig.model_validate({})
    sandbox = load_sandbox(cfg, REPO, ws)
    run_dir = ws / "runs" / f"attack-{uuid.uuid4().hex[:8]}"
    sandbox.prepare(run_dir)
    done = subprocess.run(sandbox.command(["bash", "-c", command], run_dir, REPO),
                          env=sandbox.env(run_dir, f"test:{run_dir.name}"), cwd=REPO, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return run_dir


def daemon_cfg(tmp_path: Path, **extra) -> DaemonConfig:
    import yaml

    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.05})))
    return DaemonConfig.model_validate({"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
                                        "evolution": {"rules": {"per_class_accuracy_floor": None}}, **extra})


# ---------------------------------------------------------------- 1. imports ----

def test_a_decision_cannot_name_the_task_or_anything_outside_the_recipe():
    for overlay, key in (({"data": {"domain": "artifacts.cache.pixels.x:Evil"}}, "data.domain"),
                         ({"data": {"domain_args": {"root": "/etc"}}}, "data.domain_args"),
                         ({"kd": {"teacher": "/ws/runs/x/out"}}, "kd"),
                         ({"run": {"resume_from": "/ws/runs/x/out"}}, "run.resume_from"),
                         ({"model": {"kwargs": {"x": 1}}}, "model.kwargs")):
        with pytest.raises(ValueError, match=f"train_overlay.{key}"):
            Decision.model_validate({"action": "train", "rationale": "x" * 30, "train_overlay": overlay})
    ok = {"data": {"image_size": 24, "augment": [{"name": "HorizontalFlip", "args": {"p": 0.5}}]},
          "model": {"name": "resnet14t", "pretrained": False}, "optim": {"lr": 0.01}, "run": {"epochs": 3}}
    assert Decision.model_validate({"action": "train", "rationale": "x" * 30, "train_overlay": ok}).train_overlay == ok


@needs_sandbox
@pytest.mark.slow
def test_a_module_a_run_planted_is_never_imported_by_the_hand_off(tmp_path, zoo):
    """A run writes a module into its own folder and a config.json naming it as the task; the
    daemon's hand-off probes the model on the daemon's own task and imports nothing of the run's."""
    from loop.candidates.intake import submit_run

    cfg = daemon_cfg(tmp_path)
    ws = tmp_path / "ws"
    marker = tmp_path / "imported-as-root"
    run_dir = sandboxed(ws, f"mkdir -p $HOME/../out && printf %s {json.dumps(EVIL.format(marker=str(marker)))} "
                            "> $HOME/../out/plantedmod.py")
    out = run_dir / "out"
    for f in zoo["tiny"].iterdir():                    # a real finished run, its config.json pointed at the module
        if f.is_file() and f.name != "plantedmod.py":
            shutil.copy(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    config.update(domain="plantedmod:Evil", domain_args={})
    (out / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(out))                       # as the repo root on sys.path reaches artifacts/...
    try:
        trust_from(cfg, ws)
        result = submit_run(cfg, ws, out, cycle=1, trace_id="t-attack")
    finally:
        sys.path.remove(str(out))
    assert not marker.exists(), "the daemon imported a module a run wrote"
    assert "plantedmod" not in sys.modules
    assert result["status"].startswith("PASS") or result["status"].startswith("FAIL")   # probed, on digits


def test_an_untrusted_or_workspace_task_spec_is_refused_before_any_import(tmp_path):
    ws = tmp_path / "ws"
    (ws / "pkgplanted").mkdir(parents=True)
    marker = tmp_path / "imported"
    (ws / "pkgplanted" / "__init__.py").write_text(EVIL.format(marker=str(marker)))
    sys.path.insert(0, str(ws))
    try:
        from loop.domains import resolve_domain

        trust_domains([], [ws])
        with pytest.raises(DomainError, match="not in the daemon config's trusted_domains"):
            resolve_domain("pkgplanted:Evil")
        trust_domains(["pkgplanted:Evil"], [ws])     # even trusted by mistake: it lives where runs write
        with pytest.raises(DomainError, match="inside the workspace"):
            resolve_domain("pkgplanted:Evil")
    finally:
        sys.path.remove(str(ws))
    assert not marker.exists() and "pkgplanted" not in sys.modules


def test_the_daemon_refuses_to_start_with_the_workspace_on_sys_path(tmp_path):
    from loop.daemon.process import check_task_domain
    from loop.util.workspace import workspace_of

    cfg = daemon_cfg(tmp_path)
    ws = workspace_of(cfg)
    ws.root.mkdir(parents=True, exist_ok=True)
    sys.path.append(str(ws.root / "cache"))
    try:
        with pytest.raises(ConfigError, match="inside the workspace"):
            check_task_domain(cfg, ws)
    finally:
        sys.path.remove(str(ws.root / "cache"))
    assert check_task_domain(cfg, ws) == "DigitsDomain"
