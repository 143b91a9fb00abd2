"""Models: any timm model by name (no pretrained download) and the model folder format.

A model folder (a run folder, an archive entry, GEN_HEAD) holds `model.safetensors` and
`config.json` (ModelFileConfig): enough to rebuild the network and feed it the right inputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file

from loop.errors import ConfigError, UnsupportedModelError

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"


class ModelFileConfig(BaseModel):
    """config.json of a model folder."""

    model_name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    domain: str
    domain_args: dict[str, Any] = Field(default_factory=dict)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)


def create_model(name: str, num_classes: int, in_chans: int, drop_rate: float = 0.0,
                 **kwargs: Any) -> torch.nn.Module:
    """A freshly initialised timm model; an unknown name raises `Unsupported model.name: <name>`."""
    if not timm.is_model(name):
        raise UnsupportedModelError(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 drop_rate=drop_rate, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {name} does not accept them: {exc}") from None


def save_model_folder(folder: Path, model: torch.nn.Module, cfg: ModelFileConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")


def read_model_config(folder: str | Path) -> ModelFileConfig:
    folder = Path(folder)
    path = folder / MODEL_CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{folder}: not a model folder (needs {WEIGHTS_FILE} and {MODEL_CONFIG_FILE})")
    try:
        return ModelFileConfig.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not a valid model config: {exc}") from None


def load_model_folder(folder: str | Path, device: torch.device | str = "cpu"
                      ) -> tuple[torch.nn.Module, ModelFileConfig]:
    """Rebuild a model from its folder, weights loaded, in eval mode."""
    folder = Path(folder)
    cfg = read_model_config(folder)
    model = create_model(cfg.model_name, cfg.num_classes, cfg.in_chans, **cfg.model_kwargs)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval(), cfg
