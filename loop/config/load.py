"""YAML files -> pydantic models, with errors that name the file and the key: `load_model_file` is
the one way a YAML config enters the program; `apply_overrides` handles `--set key=value` (dotted
keys); `deep_merge` applies a decision's overlay to a base config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from loop.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# libyaml's loader where PyYAML was built with it (the wheels are): the same documents, ten times
# faster than the pure-Python one (a daemon reads its trainer config a few times each cycle)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, assignments re-validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- loading ----

def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad syntax raises ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load, through libyaml when it is there."""
    return yaml.load(text, Loader=SAFE_LOADER)     # a safe loader: plain data, no Python objects


def describe_validation_error(source: str, exc: ValidationError) -> str:
    """One message listing every bad key as `source: dotted.key: problem`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        kind = err["type"]
        if kind == "extra_forbidden":
            problem = "unknown key"
        elif kind == "missing":
            problem = "required key is missing"
        else:
            problem = f"{err['msg']} (got {err.get('input')!r})"
        lines.append(f"{source}: {key}: {problem}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a mapping into `model`; ConfigError names `source` and every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc)) from None


def load_model_file(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Load YAML at `path` into `model`, after applying `key=value` overrides."""
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate(model, data, str(path))


# -------------------------------------------------------------- overrides ----

def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML so numbers and bools keep their type)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item}: empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted `key=value` set (validation happens afterwards)."""
    patch: dict[str, Any] = {}
    for item in overrides:
        parts, value = parse_override(item)
        node = patch
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {part} is set to a value and a section at once")
        node[parts[-1]] = value
    return deep_merge(data, patch)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge `overlay` into a copy of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


