"""Models: any timm model by name, its initial weights (timm's init, timm's pretrained weights from
the Hugging Face cache, or a local weights file) and the model folder format.

A model folder (a run folder, an archive entry, GEN_HEAD) holds `model.safetensors` and
`config.json` (ModelFileConfig): enough to rebuild the network and feed it the right inputs.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file

from loop.errors import ConfigError, UnsupportedModelError
from loop.trainer.config import PRETRAINED_SUFFIXES
from loop.util.fsutil import read_regular_text, sha256_file

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"


class PretrainedFile(BaseModel):
    """The local weights file a run started from."""

    path: str                       # absolute
    sha256: str


# What a model started from: False (timm's init), "timm" (timm's pretrained weights), or a file.
InitialWeights = Literal[False, "timm"] | PretrainedFile


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
    pretrained: InitialWeights = False       # provenance only: the folder's own weights rebuild it


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


def create_initial_model(name: str, num_classes: int, in_chans: int, drop_rate: float = 0.0,
                         pretrained: bool | str = False, log: Callable[[str], None] | None = None,
                         **kwargs: Any) -> tuple[torch.nn.Module, InitialWeights]:
    """The model a run starts from, as `model.pretrained` says, and what it started from (for
    config.json): false -> timm's init; true -> timm's pretrained weights, from the Hugging Face
    cache only (offline unless HF_HUB_OFFLINE is set); a path -> that local state dict, head
    replaced for `num_classes`, first conv adapted to `in_chans`. A bad or missing file raises
    ConfigError naming the model and the file; the train log (`log`) gets what was loaded."""
    say = log or (lambda _line: None)
    if not timm.is_model(name):                     # first: auto-repair keys on this error (exit 3)
        raise UnsupportedModelError(name)
    if pretrained is False:
        return create_model(name, num_classes, in_chans, drop_rate, **kwargs), False
    if pretrained is True:
        model, location = create_timm_pretrained(name, num_classes, in_chans, drop_rate, **kwargs)
        say(f"initial weights: timm's pretrained {name} ({location}, from the local cache), "
            f"head for {num_classes} classes, {in_chans} input channel(s)")
        return model, "timm"
    path = Path(pretrained).expanduser().absolute()
    state = read_weights_file(path, name)
    digest = sha256_file(path)
    model = create_model(name, num_classes, in_chans, drop_rate, **kwargs)
    for line in load_pretrained_state(model, state, name, in_chans, path):
        say(line)
    return model, PretrainedFile(path=str(path), sha256=digest)


# --------------------------------------------------------- timm's own weights ----

@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration, unless the environment already says either way.
    huggingface_hub reads the variable at import, so its constant is set too."""
    if "HF_HUB_OFFLINE" in os.environ:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)
        constants.HF_HUB_OFFLINE = saved


def timm_weights_source(name: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Where timm would load `name`'s pretrained weights from: ('hf-hub', repo id), ('url', url),
    ('file', path), ...; ('', '') when it has none."""
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source  # timm is pinned exactly

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:                         # an unknown pretrained tag
        raise ConfigError(f"model.pretrained: true, but {exc}") from None
    if cfg is None:
        return "", ""
    return _resolve_pretrained_source({**cfg.to_dict(), **(kwargs.get("pretrained_cfg_overlay") or {})})


def weights_fix(name: str, download: str) -> str:
    return (f"Provide the weights: set model.pretrained to a local .safetensors/.pth/.pt state dict of {name} "
            f"(a relative path is taken from the current directory), or pre-populate the cache where there is "
            f"network ({download}) and copy it here")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.')}" if text else type(exc).__name__


def create_timm_pretrained(name: str, num_classes: int, in_chans: int, drop_rate: float,
                           **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    """timm.create_model(pretrained=True) that never downloads: no cached file -> ConfigError.
    Returns the model and where its weights came from (a Hugging Face repo id, a url, ...)."""
    if not timm.is_model(name):
        raise UnsupportedModelError(name)
    source, location = timm_weights_source(name, kwargs)
    timm_download = f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`"
    if not source:
        raise ConfigError(f"model.pretrained: true, but timm has no pretrained weights for {name}. "
                          f"Set model.pretrained to a local .safetensors/.pth/.pt state dict of {name}, or false")
    if source == "url":                                 # torch.hub would download it: only a cached copy
        from urllib.parse import urlparse

        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(location).path)
        if not cached.is_file():
            raise ConfigError(f"model.pretrained: true, but timm's pretrained weights for {name} ({location}) "
                              f"are not in the torch hub cache ({cached}) and nothing is downloaded. "
                              f"{weights_fix(name, timm_download + ' with the same TORCH_HOME')}")
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    with hub_offline():
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                      drop_rate=drop_rate, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.kwargs: {name} does not accept them: {exc}") from None
        except (OSError, ValueError, RuntimeError) as exc:   # no cached file, offline mode, a broken file
            why = "no cached file" if isinstance(exc, LocalEntryNotFoundError) else first_line(exc)
            mode = ("downloads are off: HF_HUB_OFFLINE=1" if constants.is_offline_mode() else
                    f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')} from the environment")
            repo = location[0] if isinstance(location, (tuple, list)) else location
            download = f"`hf download {repo}` or {timm_download}; HF_HOME or HF_HUB_CACHE point at it"
            raise ConfigError(f"model.pretrained: true, but timm's pretrained weights for {name} ({location}) "
                              f"could not be loaded from the Hugging Face cache {constants.HF_HUB_CACHE} "
                              f"({why}; {mode}). {weights_fix(name, download)}") from None
    return model, location


# ------------------------------------------------------------ a local file ----

def read_weights_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (weights_only), unwrapped from
    {"state_dict": ...} / {"model": ...}, a DataParallel `module.` prefix dropped."""
    where = f"model.pretrained: {path}"
    if path.is_dir():
        raise ConfigError(f"{where}: is a folder; give the weights file in it (e.g. {path / WEIGHTS_FILE})")
    if not path.is_file():
        raise ConfigError(f"{where}: no such file (weights for {name}; relative paths are taken from the "
                          f"current directory, {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix not in PRETRAINED_SUFFIXES:
        raise ConfigError(f"{where}: expected a {'/'.join(PRETRAINED_SUFFIXES)} file")
    try:
        if suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:        # SafetensorError, UnpicklingError (not weights-only), a truncated file
        raise ConfigError(f"{where}: cannot read it as {suffix} weights: {first_line(exc)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    tensors = {k.removeprefix("module."): v for k, v in (state.items() if isinstance(state, dict) else ())
               if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{where}: holds no state dict of tensors (also looked under 'state_dict' and 'model')")
    return tensors


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def classifier_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The head's module name(s): timm's pretrained_cfg['classifier'], else get_classifier()."""
    names = _names((getattr(model, "pretrained_cfg", None) or {}).get("classifier"))
    if names:
        return names
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return tuple(n for n, m in model.named_modules() if head is not None and m is head and n)


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained_state(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str, in_chans: int,
                          path: Path) -> list[str]:
    """Load `state` into `model` (strict=False): the head keys whose shapes differ dropped (the
    head stays fresh), the first conv adapted to `in_chans` as timm does. Raises ConfigError when
    nothing but the head fits or a body tensor has another shape; returns the lines for the log."""
    from timm.models import adapt_input_conv

    target = model.state_dict()
    heads = classifier_names(model)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    lines = []
    for conv in _names((getattr(model, "pretrained_cfg", None) or {}).get("first_conv")):
        key = f"{conv}.weight"
        w = state.get(key)
        if (w is not None and key in target and w.ndim == 4 and target[key].ndim == 4
                and w.shape[1] != target[key].shape[1] == in_chans):
            try:
                state[key] = adapt_input_conv(in_chans, w).to(w.dtype)
            except (NotImplementedError, ValueError):
                continue                                    # left as is: reported as a shape mismatch
            lines.append(f"pretrained: first conv {key} adapted from {w.shape[1]} to {in_chans} input channel(s)")

    fitted: dict[str, torch.Tensor] = {}
    head_dropped, mismatched = [], []
    for key, value in state.items():
        if key not in target:
            continue
        if value.shape == target[key].shape:
            fitted[key] = value
        else:
            (head_dropped if is_head(key) else mismatched).append(key)
    body = [k for k, _ in model.named_parameters() if not is_head(k)]
    matched = [k for k in body if k in fitted]
    if not matched:
        raise ConfigError(f"model.pretrained: {path} is not a checkpoint of timm {name}: none of the model's "
                          f"{len(body)} weight tensors (outside the head) is in it with the right shape; the file "
                          f"holds {len(state)} tensors ({_some(sorted(state), 4)}), the model expects "
                          f"{_some(body, 4)}. Give weights saved from a {name}")
    if mismatched:
        k = mismatched[0]
        raise ConfigError(f"model.pretrained: {path} does not fit timm {name}: {len(mismatched)} tensor(s) have "
                          f"other shapes, e.g. {k}: file {tuple(state[k].shape)}, model {tuple(target[k].shape)} "
                          f"({_some(mismatched)}). Is it a checkpoint of another architecture or variant?")
    result = model.load_state_dict(fitted, strict=False)
    missing = [k for k in result.missing_keys if not is_head(k)]
    unexpected = [k for k in state if k not in target]
    head_state = "fresh" if any(is_head(k) for k in result.missing_keys) else "from the file"
    lines.insert(0, f"initial weights: {path} -> timm {name}: {len(fitted)}/{len(target)} tensors loaded "
                    f"({len(matched)}/{len(body)} weights outside the head); head {'/'.join(heads) or '?'} "
                    f"{head_state} for {model.num_classes if hasattr(model, 'num_classes') else '?'} classes"
                    + (f" (file's {_some(head_dropped)} dropped: other shape)" if head_dropped else ""))
    if missing:
        lines.append(f"pretrained: missing from the file, left at timm's init: {_some(missing)}")
    if unexpected:
        lines.append(f"pretrained: in the file but not in the model, ignored: {_some(unexpected)}")
    return lines


# ----------------------------------------------------------- model folders ----

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
    try:       # a run wrote it: not through a link
        return ModelFileConfig.model_validate_json(read_regular_text(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model config ({exc.strerror}; a link is never followed)") from None
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
