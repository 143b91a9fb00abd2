"""The shared trainer, in-process: run folder contents, reproducibility, augment YAML, KD, budget."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from loop.config import validate
from loop.domains import resolve_domain
from loop.errors import BudgetExceeded, ConfigError, DomainError, UnsupportedModelError
from loop.journal.metrics import RunMetrics
from loop.trainer.config import TrainerConfig, load_trainer_config
from loop.trainer.models import load_model_folder
from loop.trainer.train import train
from tests.test_domains import NotADomain, make_folder

RUN_FILES = {"model.safetensors", "config.json", "train_args.json", "metrics.json", "train.log"}


@pytest.mark.slow
def test_run_folder_is_complete(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    metrics = train(tiny_cfg(run={"epochs": 2, "label": "tiny"}), out)
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint.pt").exists()           # dropped after success by default
    saved = RunMetrics.read(out)
    assert saved.status == "ok" and saved == metrics
    assert saved.steps == saved.budget_used.steps > 0 and saved.epochs_completed == 2
    assert saved.loss_start is not None and saved.loss_final < saved.loss_start
    assert len(saved.curve) == 2 and saved.eval.count == 270
    assert set(saved.eval.per_class_accuracy) == {str(i) for i in range(10)}
    assert saved.budget_used.tokens_processed == saved.steps * 32
    assert saved.budget_used.cpu_memory_gb > 0 and saved.budget_used.disk_gb > 0
    # train_args.json is itself a valid trainer config, equal to what ran
    assert load_trainer_config(out / "train_args.json") == tiny_cfg(run={"epochs": 2, "label": "tiny"})
    model, mcfg = load_model_folder(out)
    assert mcfg.num_classes == 10 and mcfg.in_chans == 1 and mcfg.image_size == 16
    assert set(load_file(str(out / "model.safetensors"))) == set(model.state_dict())
    log = (out / "train.log").read_text()
    assert "epoch 2/2" in log and "val_acc" in log and "eta" in log


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_differs(tmp_path, tiny_cfg, zoo):
    a = RunMetrics.read(zoo["tiny"])                    # the same config, trained once for the test run
    b = train(tiny_cfg(), tmp_path / "b")
    c = train(tiny_cfg(run={"seed": 8}), tmp_path / "c")
    assert a.curve[-1].train_loss == b.curve[-1].train_loss and a.eval == b.eval
    assert a.curve[-1].train_loss != c.curve[-1].train_loss


@pytest.mark.slow
def test_existing_run_folder_is_not_overwritten(tmp_path, tiny_cfg, zoo):
    shutil.copytree(zoo["tiny"], tmp_path / "a")        # a finished run's folder
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg(), tmp_path / "a")


@pytest.mark.slow
def test_augment_pipeline_from_yaml(tmp_path, tiny_cfg, zoo):
    aug = [{"name": "Affine", "args": {"rotate": [-10, 10], "p": 1.0}},
           {"name": "GaussNoise", "args": {"p": 0.5}}]
    plain = RunMetrics.read(zoo["tiny"])
    augmented = train(tiny_cfg(data={"augment": aug}), tmp_path / "aug")
    again = train(tiny_cfg(data={"augment": aug}), tmp_path / "aug2")
    assert augmented.curve[-1].train_loss != plain.curve[-1].train_loss
    assert augmented.curve[-1].train_loss == again.curve[-1].train_loss   # seeded augmentation


@pytest.mark.parametrize("spec, match", [
    ({"name": "NoSuchTransform"}, r"data.augment\[0\].name: 'NoSuchTransform' is not an albumentations"),
    ({"name": "Normalize"}, r"data.augment\[0\].name: Normalize is applied by the trainer"),
    ({"name": "Affine", "args": {"rotat": 3}}, r"data.augment\[0\].args: Affine"),
])
@pytest.mark.slow
def test_bad_augment_spec(tmp_path, tiny_cfg, spec, match):
    with pytest.raises(ConfigError, match=match):
        train(tiny_cfg(data={"augment": [spec]}), tmp_path / "run")


@pytest.mark.slow
def test_adamw_onecycle_smoothing_clipping_and_sampling(tmp_path, tiny_cfg):
    m = train(tiny_cfg(optim={"name": "adamw", "lr": 0.003, "grad_clip": 1.0}, schedule={"name": "onecycle"},
                       loss={"label_smoothing": 0.1}, data={"sampling": {"strategy": "hard_example_weighted"}},
                       run={"epochs": 2}), tmp_path / "run")
    assert m.status == "ok" and m.curve[-1].train_accuracy > 0.5   # val lags: BN stats after 20 steps


@pytest.mark.slow
def test_unknown_model_name(tmp_path, tiny_cfg):
    with pytest.raises(UnsupportedModelError, match="^Unsupported model.name: resnet_nonexistent$"):
        train(tiny_cfg(model={"name": "resnet_nonexistent"}), tmp_path / "run")


@pytest.mark.slow
def test_non_spica_domain_refused(tmp_path, tiny_cfg):
    with pytest.raises(DomainError, match="is not a SpicaDomain"):
        train(tiny_cfg(), tmp_path / "run", domain=NotADomain())


# ------------------------------------------------------------------ KD ----

@pytest.mark.slow
def test_kd_with_teacher_and_stabilizer(tmp_path, tiny_cfg, zoo):
    teacher_dir = tmp_path / "teacher"
    train(tiny_cfg(data={"train_fraction": 1.0}, run={"epochs": 2}), teacher_dir)
    plain = RunMetrics.read(zoo["tiny"])
    kd = train(tiny_cfg(kd={"teacher": str(teacher_dir), "stabilizer": str(teacher_dir), "alpha": 0.5,
                            "beta": 0.5, "temperature": 3.0}), tmp_path / "kd")
    assert kd.kd_teacher == str(teacher_dir) and kd.kd_stabilizer == str(teacher_dir)
    assert kd.curve[-1].train_loss != plain.curve[-1].train_loss
    assert "kd on" in (tmp_path / "kd" / "train.log").read_text()


@pytest.mark.slow
def test_kd_teacher_must_match_the_domain(tmp_path, tiny_cfg, zoo):
    teacher_dir = zoo["tiny"]
    root = make_folder(tmp_path / "imgs", per_class=(30, 30, 30))
    cfg = tiny_cfg(data={"domain": "image_folder", "domain_args": {"root": str(root)}, "train_fraction": 1.0},
                   kd={"teacher": str(teacher_dir)})
    with pytest.raises(ConfigError, match="kd.teacher: .* has 10 classes / 1 channels; the domain has 3 / 3"):
        train(cfg, tmp_path / "student")


@pytest.mark.slow
def test_image_folder_task_trains(tmp_path, tiny_cfg):
    root = make_folder(tmp_path / "imgs", per_class=(40, 40, 40))
    m = train(tiny_cfg(data={"domain": "image_folder", "domain_args": {"root": str(root)}, "train_fraction": 1.0,
                             "batch_size": 16}, run={"epochs": 3}), tmp_path / "run")
    assert m.status == "ok" and m.eval.accuracy >= 0.6


# -------------------------------------------------------------- budget ----

@pytest.mark.parametrize("caps, cap", [
    ({"max_steps": 3}, "max_steps"),
    ({"max_tokens_processed": 50}, "max_tokens_processed"),
    ({"max_walltime_minutes": 0.0001}, "max_walltime_minutes"),
    ({"max_cpu_memory_gb": 0.01}, "max_cpu_memory_gb"),
    ({"max_disk_gb": 1e-7}, "max_disk_gb"),
    pytest.param({"max_gpu_memory_gb": 1e-6}, "max_gpu_memory_gb",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
@pytest.mark.slow
def test_budget_breach_stops_at_once_and_is_recorded(tmp_path, tiny_cfg, caps, cap):
    out = tmp_path / "run"
    cfg = tiny_cfg(budget=caps, run={"epochs": 3})
    with pytest.raises(BudgetExceeded) as err:
        train(cfg, out)
    assert err.value.cap == cap
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "budget_exceeded" and saved["budget_breach"]["cap"] == cap
    assert saved["budget_breach"]["used"] > saved["budget_breach"]["limit"]
    assert (out / "model.safetensors").exists()                    # kept for the archive
    if cap == "max_steps":
        assert saved["steps"] == 3 and saved["budget_used"]["steps"] == 3
    if cap == "max_tokens_processed":
        assert saved["steps"] == 2                                   # 64 images > 50 after step 2


@pytest.mark.slow
def test_budget_within_caps_passes(tmp_path, tiny_cfg):
    m = train(tiny_cfg(budget={"max_steps": 1000, "max_walltime_minutes": 10, "max_cpu_memory_gb": 64,
                               "max_tokens_processed": 10**7, "max_disk_gb": 1}), tmp_path / "run")
    assert m.status == "ok" and m.budget_breach is None


def test_validate_name_in_messages():
    with pytest.raises(ConfigError, match="<x>: budget.max_steps"):
        validate(TrainerConfig, {"budget": {"max_steps": 0}}, "<x>")


@pytest.mark.slow
def test_domain_args_error_is_clear(tmp_path, tiny_cfg):
    with pytest.raises(DomainError, match="data.domain_args"):
        train(tiny_cfg(data={"domain_args": {"no_such_arg": 1}}), tmp_path / "run")
    assert resolve_domain("digits").num_classes == 10


@pytest.mark.slow
def test_validation_runs_once_per_epoch_and_the_last_is_the_final_eval(tmp_path, tiny_cfg, monkeypatch):
    """The final evaluation is the last epoch's validation pass (same weights), not a second pass."""
    import loop.trainer.train as train_module

    passes = []
    real = train_module.predict_logits
    monkeypatch.setattr(train_module, "predict_logits", lambda *a, **k: passes.append(1) or real(*a, **k))
    cfg = tiny_cfg(run={"epochs": 2, "keep_checkpoint": True})
    metrics = train(cfg, tmp_path / "run")
    assert len(passes) == 2                                     # one per epoch, none extra at the end
    assert metrics.eval.accuracy == pytest.approx(metrics.curve[-1].val_accuracy, abs=1e-6)
    assert metrics.eval.loss == pytest.approx(metrics.curve[-1].val_loss, abs=1e-6)
    # a resume that finds every epoch done has no pass yet: it evaluates once, to the same figures
    (tmp_path / "run" / "metrics.json").unlink()
    again = train(cfg, tmp_path / "run", resume=True)
    assert len(passes) == 3 and again.eval == metrics.eval
