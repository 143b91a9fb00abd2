"""model.pretrained: a local weights file (head replaced, first conv adapted, keys reported, a wrong
architecture refused), timm's own weights from an empty Hugging Face cache (a fast exit 2, never a
download), and where the initial weights are recorded. Weights files are made here: no network."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from loop.candidates.cards import initial_weights
from loop.config import validate
from loop.errors import ConfigError, UnsupportedModelError
from loop.trainer.config import TrainerConfig
from loop.trainer.models import PretrainedFile, create_initial_model, create_model, load_model_folder
from loop.trainer.train import train
from loop.util.netwatch import MARK
from tests.conftest import REPO, tiny_config_dict


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A resnet10t (3 channels, 1000 classes) saved as .safetensors, .pth and a wrapped .pth."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    state = {k: v.contiguous() for k, v in
             timm.create_model("resnet10t", pretrained=False, num_classes=1000, in_chans=3).state_dict().items()}
    save_file(state, str(folder / "resnet10t.safetensors"))
    torch.save(state, folder / "resnet10t.pth")
    torch.save({"state_dict": state, "epoch": 3}, folder / "wrapped.pt")
    return folder, state


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("file", ["resnet10t.safetensors", "resnet10t.pth", "wrapped.pt"])
def test_body_from_the_file_head_fresh_first_conv_adapted(ckpt, file):
    folder, state = ckpt
    lines: list[str] = []
    torch.manual_seed(0)
    model, record = create_initial_model("resnet10t", 10, 1, pretrained=str(folder / file), log=lines.append)
    torch.manual_seed(0)
    fresh = create_model("resnet10t", 10, 1)
    got = model.state_dict()
    # the first conv: the checkpoint's, summed over its 3 input channels as timm does for 1
    assert got["conv1.0.weight"].shape == (24, 1, 3, 3)
    assert torch.equal(got["conv1.0.weight"], adapt_input_conv(1, state["conv1.0.weight"]))
    for key in ("layer4.0.conv2.weight", "layer2.0.bn1.running_var", "conv1.1.bias"):
        assert torch.equal(got[key], state[key]), key
    # the head: 10 classes, freshly initialised (the same as a model without pretrained weights)
    assert got["fc.weight"].shape == (10, 512)
    assert torch.equal(got["fc.weight"], fresh.state_dict()["fc.weight"])
    assert record == PretrainedFile(path=str(folder / file), sha256=sha256(folder / file))
    log = "\n".join(lines)
    assert "head fc fresh for 10 classes" in log and "dropped: other shape" in log and "fc.bias" in log
    assert "conv1.0.weight adapted from 3 to 1 input channel(s)" in log


def test_relative_path_missing_keys_reported_and_false_is_plain_timm(ckpt, monkeypatch):
    folder, state = ckpt
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    save_file(partial, str(folder / "partial.safetensors"))
    monkeypatch.chdir(folder)
    lines: list[str] = []
    model, record = create_initial_model("resnet10t", 1000, 3, pretrained="partial.safetensors", log=lines.append)
    assert record.path == str(folder / "partial.safetensors")
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])    # same shape: kept
    log = "\n".join(lines)
    assert "head fc from the file" in log and "missing from the file" in log and "layer4.0.conv1.weight" in log
    model, record = create_initial_model("resnet10t", 10, 1, pretrained=False)
    assert record is False and model.num_classes == 10


@pytest.mark.slow
def test_training_run_records_the_file(ckpt, tmp_path):
    folder, _ = ckpt
    path = folder / "resnet10t.safetensors"
    cfg = validate(TrainerConfig, tiny_config_dict(model={"name": "resnet10t", "pretrained": str(path)},
                                                   data={"train_fraction": 0.1}), "<test>")
    out = tmp_path / "run"
    metrics = train(cfg, out)
    assert metrics.status == "ok"
    saved = json.loads((out / "config.json").read_text())
    assert saved["pretrained"] == {"path": str(path), "sha256": sha256(path)}
    assert json.loads((out / "train_args.json").read_text())["model"]["pretrained"] == str(path)
    assert f"initial weights: {path} -> timm resnet10t" in (out / "train.log").read_text()
    model, mcfg = load_model_folder(out)                # rebuilds from the folder, not from the file
    assert mcfg.pretrained == PretrainedFile(path=str(path), sha256=sha256(path)) and model.num_classes == 10
    # the archive's card says so too
    card_line = initial_weights(cfg.model.model_dump())
    assert card_line.startswith(f"local file `{path}`")
    assert initial_weights({"name": "resnet10t", "pretrained": True}).startswith("timm's pretrained `resnet10t`")
    assert initial_weights({"name": "resnet10t"}).startswith("random")


@pytest.mark.slow
def test_timm_weights_with_an_empty_cache_fail_fast(tmp_path):
    hf = tmp_path / "hf"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config_dict(model={"pretrained": True})))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), TORCH_HOME=str(tmp_path / "th"))
    proc = subprocess.run([sys.executable, "-m", "loop.trainer", "--config", str(tmp_path / "cfg.yaml"),
                           "--out", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 2, proc.stderr           # a config error, not 3 (auto-repair's model name)
    err = proc.stderr
    # fast means it never waited on the network (the trainer's audit hook names any lookup or connect;
    # a wall-clock bound failed on a busy machine alone)
    assert MARK not in err, err
    assert "model.pretrained: true" in err and "resnet10t" in err and "timm/resnet10t" in err
    assert str(hf / "hub") in err and "HF_HUB_OFFLINE=1" in err
    assert "set model.pretrained to a local .safetensors/.pth/.pt" in err and "pre-populate" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = tmp_path / "mobilenet.safetensors"
    save_file(timm.create_model("mobilenetv3_small_050", num_classes=1000).state_dict(), str(other))
    with pytest.raises(ConfigError, match=re.escape(f"{other} is not a checkpoint of timm resnet10t")) as exc:
        create_initial_model("resnet10t", 10, 1, pretrained=str(other))
    assert "conv_stem" in str(exc.value) or "blocks." in str(exc.value)
    variant = tmp_path / "resnet14t.pth"
    torch.save(timm.create_model("resnet14t", num_classes=1000).state_dict(), variant)
    with pytest.raises(ConfigError, match=re.escape(f"{variant} does not fit timm resnet10t: ") + ".* other shapes"):
        create_initial_model("resnet10t", 10, 1, pretrained=str(variant))


def test_unreadable_or_missing_files(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, pickled)      # not loadable with weights_only=True
    with pytest.raises(ConfigError, match=re.escape(f"model.pretrained: {pickled}: cannot read it as .pth weights")):
        create_initial_model("resnet10t", 10, 1, pretrained=str(pickled))
    with pytest.raises(ConfigError, match="no such file"):
        create_initial_model("resnet10t", 10, 1, pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(UnsupportedModelError):       # the name first: auto-repair keys on it (exit 3)
        create_initial_model("resnet_nonexistent", 10, 1, pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match=r"model.pretrained: .*\.safetensors/\.pth/\.pt weights file"):
        validate(TrainerConfig, {"model": {"pretrained": "weights.bin"}}, "<test>")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache at tmp_path/hub (huggingface_hub reads its folder at each call),
    HF_HUB_OFFLINE left to the trainer, and every socket connection refused and recorded."""
    import socket

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    connects: list = []

    def refuse(*args, **kwargs):
        connects.append(args)
        raise OSError("test: no network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache, connects


def test_timm_weights_from_a_populated_cache_without_network(ckpt, hf_cache):
    from huggingface_hub import constants

    folder, state = ckpt
    cache, connects = hf_cache
    with pytest.raises(ConfigError, match="no cached file; downloads are off: HF_HUB_OFFLINE=1"):
        create_initial_model("resnet10t", 10, 1, pretrained=True)
    # the cache as `hf download timm/resnet10t.c3_in1k` leaves it (a snapshot named by refs/main)
    repo = cache / "models--timm--resnet10t.c3_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes((folder / "resnet10t.safetensors").read_bytes())
    lines: list[str] = []
    model, record = create_initial_model("resnet10t", 10, 1, pretrained=True, log=lines.append)
    assert record == "timm" and "timm/resnet10t.c3_in1k" in lines[0]
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (10, 512)
    assert connects == []                                          # nothing even tried the network
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False   # restored
