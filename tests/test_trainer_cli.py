"""The trainer as a real subprocess: exit codes, kill -9 then --resume, and the README's run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, tiny_config_dict, wait_for


def write_config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(**sections)))
    return path


@pytest.mark.slow
def test_unsupported_model_name_exit_3_both_entry_points(tmp_path):
    cfg = write_config(tmp_path, model={"name": "unet_resnet34"})
    result = run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "a"))
    assert result.returncode == 3 and "Unsupported model.name: unet_resnet34" in result.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "loop.trainer", "--config", str(cfg), "--set",
                             "model.name=foo_net", "--out", str(tmp_path / "b")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 3 and "Unsupported model.name: foo_net" in result.stderr


@pytest.mark.slow
def test_budget_breach_exit_4(tmp_path):
    cfg = write_config(tmp_path)
    out = tmp_path / "run"
    result = run_cli("train", "--config", str(cfg), "--set", "budget.max_steps=2", "--out", str(out))
    assert result.returncode == 4 and "budget exceeded: max_steps" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["budget_breach"]["cap"] == "max_steps"


@pytest.mark.slow
def test_resume_needs_out(tmp_path):
    result = run_cli("train", "--resume")
    assert result.returncode == 2 and "--resume needs --out" in result.stderr



@pytest.mark.slow
@pytest.mark.timeout(900)  # two trainings of 3 short epochs; it hit 300 s beside another training at 4 full ones
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
    """Killed after epoch 1 of 3, resumed through two more epochs (the sampler's hard-example weights
    and the augmentation's RNG carried over an epoch boundary), it ends bit for bit where one
    uninterrupted run ends. The reference run trains in-process (the same config file, the same
    trainer): what crosses the process boundary here is the kill and the resume."""
    from loop.trainer.config import load_trainer_config
    from loop.trainer.train import train

    cfg = write_config(tmp_path, data={"train_fraction": 0.5, "sampling": {"strategy": "hard_example_weighted"},
                                       "augment": [{"name": "Affine", "args": {"rotate": [-8, 8], "p": 0.5}}]},
                       run={"epochs": 3})
    straight = tmp_path / "straight"
    assert train(load_trainer_config(cfg), straight).status == "ok"

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "loop.cli.main", "train", "--config", str(cfg),
                             "--out", str(killed)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "train.log"
    try:
        wait_for(lambda: log.exists() and "checkpoint saved epoch=1" in log.read_text(), 120, "epoch 1")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = run_cli("train", "--resume", "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint.pt" in log.read_text()
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["eval"] == a["eval"] and b["loss_final"] == a["loss_final"] and b["steps"] == a["steps"]
    assert [r["val_accuracy"] for r in b["curve"]] == [r["val_accuracy"] for r in a["curve"]]
    wa, wb = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 99 s quiet: the README's full training
def test_readme_train_command_reaches_090(tmp_path):
    """README: `llmloop train --config config/trainer/digits.yaml --out DIR` (the console script).
    How long it takes is a benchmark figure (bench/trainer_throughput.py times this command), not
    a test: a shared machine's load would make a time bound here flaky or meaningless."""
    out = tmp_path / "x"
    llmloop = Path(sys.executable).parent / "llmloop"
    cmd = [str(llmloop)] if llmloop.exists() else [sys.executable, "-m", "loop.cli.main"]
    result = subprocess.run([*cmd, "train", "--config", "config/trainer/digits.yaml", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {"model.safetensors", "config.json", "train_args.json", "metrics.json", "train.log"} <= \
        {p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["eval"]["accuracy"] >= 0.90
    assert "val_acc" in result.stdout and "eta" in result.stdout      # progress lines off a terminal
