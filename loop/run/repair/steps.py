"""Auto-repair, the plan: which of the daemon config's maps answers a failure, as steps, in the
seed's order:

  loader: the trainer's own setting: data.num_workers 0 (no config needed; nothing installed)
  model:  fallback map (preferred over any install) -> model package map -> model clone map
  module: package map -> alias map -> clone map; never a pip install of the module name itself
          (the old `auto_repair_allow_direct_module_install` key is ignored: loop/config/daemon.py)

Also the records every step module shares: `RepairStep` (what to do), `RepairAction` (what it did)
and `StepContext` (what the steps run with).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from loop.config import CloneSpec, DaemonConfig, PackagePin
from loop.run.repair.diagnose import Failure


class RepairStep(BaseModel):
    """One planned action; `source` names the config key that planned it."""

    kind: Literal["pip", "clone", "fallback", "setting"]
    target: str                     # the module or model being repaired
    source: str
    package: str | None = None      # pip: a pinned requirement (name==version) or a local path
    sha256: str | None = None       # pip: install in --require-hashes mode with this hash
    clone: CloneSpec | None = None  # clone: where from and what to install
    fallback: str | None = None     # fallback: the model name to train instead
    setting: str | None = None      # setting: a trainer `--set KEY=VALUE` for the retry


class RepairAction(BaseModel):
    """What one step did: the evidence for the daemon's `auto_repair` event."""

    kind: str
    target: str
    source: str
    ok: bool
    detail: str
    package: str | None = None
    repo: str | None = None
    fallback: str | None = None
    config: str | None = None       # fallback: the patched config copy

    def evidence(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class StepContext:
    """What every step runs with: the training venv's python, the folders, pip's and git's limits."""

    python: str
    workspace: Path
    repo_root: Path
    pip_args: tuple[str, ...]
    index_url: str
    clone_allowlist: tuple[str, ...]


def plan_repair(failure: Failure, cfg: DaemonConfig) -> list[RepairStep]:
    """Steps for `failure` from the config maps; empty when nothing is configured for it."""
    if failure.kind == "loader":    # loader workers cannot run here: train in the main process
        return [RepairStep(kind="setting", target=failure.name, source="loader workers failed",
                           setting=f"{failure.name}=0")]
    if failure.kind == "model":
        return _plan_model(failure.name, cfg)
    return _plan_module(failure.name, cfg)


def _plan_model(name: str, cfg: DaemonConfig) -> list[RepairStep]:
    # A known-good stand-in beats installing something that may not provide the name anyway.
    if name in cfg.auto_repair_model_fallback_map:
        return [RepairStep(kind="fallback", target=name, source="auto_repair_model_fallback_map",
                           fallback=cfg.auto_repair_model_fallback_map[name])]
    if name in cfg.auto_repair_model_package_map:
        return [_pip(name, cfg.auto_repair_model_package_map[name], "auto_repair_model_package_map")]
    if name in cfg.auto_repair_model_clone_map:
        return [_clone(name, cfg.auto_repair_model_clone_map[name], "auto_repair_model_clone_map")]
    return []


def _plan_module(name: str, cfg: DaemonConfig) -> list[RepairStep]:
    packages = cfg.auto_repair_module_package_map
    if name in packages:
        return [_pip(name, packages[name], "auto_repair_module_package_map")]
    if name in cfg.auto_repair_module_alias_map:
        alias = cfg.auto_repair_module_alias_map[name]
        if isinstance(alias, str) and alias in packages:
            alias = packages[alias]          # an alias names a mapped module: install its pin
        return [_pip(name, alias, "auto_repair_module_alias_map")]
    if name in cfg.auto_repair_module_clone_map:
        return [_clone(name, cfg.auto_repair_module_clone_map[name], "auto_repair_module_clone_map")]
    # No direct guess: the module name came from a log of an LLM-written command, and the same name
    # on a public index can be anyone's package.
    return []


def _pip(target: str, value: PackagePin | str, source: str) -> RepairStep:
    if isinstance(value, PackagePin):
        return RepairStep(kind="pip", target=target, source=source, package=value.requirement(),
                          sha256=value.sha256)
    return RepairStep(kind="pip", target=target, source=source, package=str(value).strip())


def _clone(target: str, value: CloneSpec | str, source: str) -> RepairStep:
    spec = value if isinstance(value, CloneSpec) else CloneSpec(repo=value)   # the seed allows a bare repo
    return RepairStep(kind="clone", target=target, source=source, clone=spec)


def no_plan_reason(failure: Failure, cfg: DaemonConfig) -> str:
    """Why `plan_repair` found nothing for `failure` (the outcome's `reason`)."""
    if failure.kind == "model":
        return (f"no repair for model {failure.name!r}: not in auto_repair_model_fallback_map, "
                "auto_repair_model_package_map or auto_repair_model_clone_map")
    reason = (f"no repair for missing module {failure.name!r}: not in auto_repair_module_package_map, "
              "auto_repair_module_alias_map or auto_repair_module_clone_map")
    return (reason + "; direct installs of unmapped module names are refused for supply-chain safety "
            "(add a pinned map entry)")
