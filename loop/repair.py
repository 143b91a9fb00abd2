"""Auto-repair: one recovery pass for a failed run (seed README, "Auto Repair (Install + Retry)").

`diagnose` reads a failed run's stderr/log for what broke: a missing module
(`ModuleNotFoundError: No module named 'x.y'`) or a model name the trainer refused
(`Unsupported model.name: NAME`, exit 3). `plan_repair` turns the daemon config's maps into steps,
in the seed's order:

  model:  fallback map (preferred over any install) -> model package map -> model clone map
  module: package map -> alias map -> clone map; never a pip install of the module name itself
          (`auto_repair_allow_direct_module_install` is kept for old configs but refused)

Supply-chain rules, since the commands that fail were written by an LLM: pip installs only the
pinned entries of the maps (`name==version`, optionally with a sha256, or a local path), from
exactly one index (`--index-url auto_repair_index_url`, with pip's config files and PIP_* index
variables shut out), wheels only (`--only-binary :all:`) except for a local directory, which must
be built; with a sha256, through a requirements file in `--require-hashes` mode (so every dependency
must then already be installed or be hashed too). Clones come only from a URL prefix in
`auto_repair_clone_allowlist` and check out only a full 40-hex commit sha.

`apply_repair` runs the steps and returns the evidence the daemon writes into its `auto_repair`
event, plus the command to retry once (the retry itself is the daemon's job). Installs go into the
training venv (`auto_repair_python_exe`, else this interpreter); clones live in
`<workspace>/autofix_repos/`, patched trainer configs in `<workspace>/autofix_configs/`.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import git
import yaml
from pydantic import BaseModel, Field

from loop.config import CloneSpec, DaemonConfig, PackagePin, check_package_pin, read_yaml
from loop.errors import ConfigError
from loop.fsutil import atomic_write_text

Command = Union[str, list[str]]

# Extra `pip install` arguments for every install. Empty in production; tests pass offline flags
# through `pip_args` instead. Any extra index or find-links source in either is dropped, and pip's
# config files are not read: the index is `auto_repair_index_url` alone.
PIP_EXTRA_ARGS: tuple[str, ...] = ()
PIP_TIMEOUT_S = 1800          # a source build of a model package can be slow, but must not hang a cycle
DETAIL_LINES = 12             # lines of pip/git output kept as evidence
REPOS_DIR = "autofix_repos"
CONFIGS_DIR = "autofix_configs"

_MODULE_RE = re.compile(r"ModuleNotFoundError: No module named ['\"]([^'\"]+)['\"]")
_MODEL_RE = re.compile(r"Unsupported model\.name: (\S+)")
_SHELL_SYNTAX = set("|&;<>()$`")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# PIP_* variables that cannot add an index or a package source; every other one is dropped.
_PIP_ENV_KEPT = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TIMEOUT", "PIP_RETRIES",
                 "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_CACHE_DIR", "PIP_NO_CACHE_DIR",
                 "PIP_PROGRESS_BAR", "PIP_QUIET", "PIP_VERBOSE"}


# ------------------------------------------------------------------ models ----

class Failure(BaseModel):
    """What a failed run's log says broke."""

    kind: Literal["module", "model"]
    name: str        # the top-level module ('foo' for 'foo.bar'), or the model name
    evidence: str    # the log line it was read from


class RepairStep(BaseModel):
    """One planned action; `source` names the config key that planned it."""

    kind: Literal["pip", "clone", "fallback"]
    target: str                     # the module or model being repaired
    source: str
    package: str | None = None      # pip: a pinned requirement (name==version) or a local path
    sha256: str | None = None       # pip: install in --require-hashes mode with this hash
    clone: CloneSpec | None = None  # clone: where from and what to install
    fallback: str | None = None     # fallback: the model name to train instead


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


class RepairOutcome(BaseModel):
    applied: bool                   # every planned step succeeded
    actions: list[dict[str, Any]] = Field(default_factory=list)
    retry_command: Command          # same type as the failed command; patched only by a fallback
    retry: bool = False             # applied and auto_repair_retry_on_success
    reason: str | None = None       # why nothing (or not everything) could be done
    failure: Failure | None = None


@dataclass(frozen=True)
class _Context:
    python: str
    workspace: Path
    repo_root: Path
    pip_args: tuple[str, ...]
    index_url: str
    clone_allowlist: tuple[str, ...]


# --------------------------------------------------------------- diagnose ----

def diagnose(log_text: str) -> Failure | None:
    """The last known failure in `log_text` (a later traceback is the one that killed the run)."""
    found: list[tuple[int, Failure]] = []
    for m in _MODULE_RE.finditer(log_text):
        found.append((m.start(), Failure(kind="module", name=m.group(1).split(".")[0],
                                         evidence=_line_at(log_text, m.start()))))
    for m in _MODEL_RE.finditer(log_text):
        name = m.group(1).rstrip("'\".,;)")
        if name:
            found.append((m.start(), Failure(kind="model", name=name, evidence=_line_at(log_text, m.start()))))
    return max(found, key=lambda item: item[0])[1] if found else None


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)].strip()


# ------------------------------------------------------------------- plan ----

def plan_repair(failure: Failure, cfg: DaemonConfig) -> list[RepairStep]:
    """Steps for `failure` from the config maps; empty when nothing is configured for it."""
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
    # No direct guess, even with auto_repair_allow_direct_module_install: the module name came from
    # a log of an LLM-written command, and the same name on a public index can be anyone's package.
    return []


def _pip(target: str, value: PackagePin | str, source: str) -> RepairStep:
    if isinstance(value, PackagePin):
        return RepairStep(kind="pip", target=target, source=source, package=value.requirement(),
                          sha256=value.sha256)
    return RepairStep(kind="pip", target=target, source=source, package=str(value).strip())


def _clone(target: str, value: CloneSpec | str, source: str) -> RepairStep:
    spec = value if isinstance(value, CloneSpec) else CloneSpec(repo=value)   # the seed allows a bare repo
    return RepairStep(kind="clone", target=target, source=source, clone=spec)


def _no_plan_reason(failure: Failure, cfg: DaemonConfig) -> str:
    if failure.kind == "model":
        return (f"no repair for model {failure.name!r}: not in auto_repair_model_fallback_map, "
                "auto_repair_model_package_map or auto_repair_model_clone_map")
    reason = (f"no repair for missing module {failure.name!r}: not in auto_repair_module_package_map, "
              "auto_repair_module_alias_map or auto_repair_module_clone_map")
    if cfg.auto_repair_allow_direct_module_install:
        return (reason + "; auto_repair_allow_direct_module_install is on, but direct installs of "
                "unmapped module names are refused for supply-chain safety (add a pinned map entry)")
    return reason + ", and auto_repair_allow_direct_module_install is off"


# ------------------------------------------------------------------ apply ----

def auto_repair(command: Command, log_text: str, cfg: DaemonConfig, workspace: Path, repo_root: Path,
                pip_args: Sequence[str] | None = None) -> RepairOutcome | None:
    """Diagnose, plan and apply. None when auto-repair is off or the log shows no known failure."""
    if not cfg.auto_repair_enabled:
        return None
    failure = diagnose(log_text)
    if failure is None:
        return None
    return apply_repair(command, failure, plan_repair(failure, cfg), cfg, workspace, repo_root, pip_args)


def apply_repair(command: Command, failure: Failure, steps: list[RepairStep], cfg: DaemonConfig,
                 workspace: Path, repo_root: Path, pip_args: Sequence[str] | None = None) -> RepairOutcome:
    """Run `steps` in order, stopping at the first failure; `pip_args` are added to every install."""
    if not steps:
        return RepairOutcome(applied=False, retry_command=command, reason=_no_plan_reason(failure, cfg),
                             failure=failure)
    repo_root = Path(repo_root)
    ctx = _Context(python=python_exe(cfg, repo_root), workspace=Path(workspace), repo_root=repo_root,
                   pip_args=_single_index(PIP_EXTRA_ARGS + tuple(pip_args or ())),
                   index_url=cfg.auto_repair_index_url, clone_allowlist=tuple(cfg.auto_repair_clone_allowlist))
    actions: list[RepairAction] = []
    retry_command = command
    for step in steps:
        action, retry_command = _apply_step(step, retry_command, ctx)
        actions.append(action)
        if not action.ok:
            break
    applied = all(a.ok for a in actions)
    last = actions[-1]
    return RepairOutcome(
        applied=applied, actions=[a.evidence() for a in actions],
        retry_command=retry_command if applied else command,
        retry=applied and cfg.auto_repair_retry_on_success,
        reason=None if applied else f"{last.kind} step for {last.target!r} failed: {_last_line(last.detail)}",
        failure=failure)


def python_exe(cfg: DaemonConfig, repo_root: Path) -> str:
    """The training venv's python; a relative path with a folder in it is taken from the repo root."""
    exe = cfg.auto_repair_python_exe
    if not exe:
        return sys.executable
    path = Path(exe).expanduser()
    if not path.is_absolute() and len(path.parts) > 1:
        return str(repo_root / path)
    return str(path)   # absolute, or a bare name that PATH resolves


def _apply_step(step: RepairStep, command: Command, ctx: _Context) -> tuple[RepairAction, Command]:
    if step.kind == "pip":
        return _pip_step(step, ctx), command
    if step.kind == "clone":
        return _clone_step(step, ctx), command
    return _fallback_step(step, command, ctx)


# -------------------------------------------------------------------- pip ----

def pip_install(python: str, spec: str, extra_args: Sequence[str] = (), editable: bool = False,
                cwd: Path | None = None, *, index_url: str = "https://pypi.org/simple",
                only_binary: bool = True, sha256: str | None = None) -> tuple[bool, str]:
    """`python -m pip install --index-url URL [--only-binary :all:] [extra] [-e] spec`.

    With `sha256`, `spec` (name==version) goes through a temporary requirements file in
    --require-hashes mode instead. Returns (ok, command + exit code + last output lines).
    """
    argv = [python, "-m", "pip", "install", "--index-url", index_url,
            *(["--only-binary", ":all:"] if only_binary else []), *_single_index(extra_args)]
    with tempfile.TemporaryDirectory(prefix="llmloop-pin-") as tmp:
        if sha256:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text(f"{spec} --hash=sha256:{sha256}\n", encoding="utf-8")
            argv += ["--require-hashes", "-r", str(requirements)]
        else:
            argv += [*(["-e"] if editable else []), spec]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, cwd=cwd,
                                  env=pip_env())
        except subprocess.TimeoutExpired:
            return False, f"{shlex.join(argv)}: timed out after {PIP_TIMEOUT_S}s"
        except OSError as exc:
            return False, f"{shlex.join(argv)}: cannot run: {exc}"
    output = _tail(proc.stdout + proc.stderr)
    return proc.returncode == 0, f"{shlex.join(argv)} -> exit {proc.returncode}\n{output}"


def pip_env() -> dict[str, str]:
    """The environment pip runs in: no config files, no PIP_* variable that could add an index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _PIP_ENV_KEPT}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _single_index(args: Sequence[str]) -> tuple[str, ...]:
    """`args` without any extra index or find-links source (one index only, whoever passes them)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--extra-index-url", "-f", "--find-links"):
            skip = True
            continue
        if arg.startswith(("--extra-index-url=", "--find-links=")):
            continue
        out.append(arg)
    return tuple(out)


def _pip_step(step: RepairStep, ctx: _Context) -> RepairAction:
    assert step.package is not None
    action = RepairAction(kind="pip", target=step.target, source=step.source, package=step.package,
                          ok=False, detail="")
    try:   # checked at load already; again here, since a config can be built without validation
        pin = check_package_pin(step.package)
    except ValueError as exc:
        return action.model_copy(update={"detail": f"refused: {exc}"})
    local_dir = isinstance(pin, Path) and pin.is_dir()
    ok, detail = pip_install(ctx.python, step.package, ctx.pip_args, cwd=ctx.repo_root, index_url=ctx.index_url,
                             only_binary=not local_dir, sha256=None if isinstance(pin, Path) else step.sha256)
    return action.model_copy(update={"ok": ok, "detail": detail})


def _tail(text: str, lines: int = DETAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# ------------------------------------------------------------------ clone ----

def clone_dir(workspace: Path, repo: str) -> Path:
    """`<workspace>/autofix_repos/<name>-<hash>`: readable, and two repos called 'models' don't clash."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
    digest = hashlib.sha1(repo.encode()).hexdigest()[:8]
    return Path(workspace) / REPOS_DIR / f"{name or 'repo'}-{digest}"


def checkout_clone(repo: str, ref: str, dest: Path) -> Path:
    """Clone `repo` into `dest`, or reuse the clone already there, and check out `ref`.

    A reused clone is fetched only when it lacks `ref`.
    """
    reused = (dest / ".git").exists()
    clone = git.Repo(dest) if reused else git.Repo.clone_from(repo, dest)
    try:
        clone.git.checkout(ref)
    except git.GitCommandError:
        if not reused:
            raise
        clone.remotes.origin.fetch()
        clone.git.checkout(ref)
    return dest


def clone_refusal(repo_url: str, ref: str, allowlist: Sequence[str]) -> str | None:
    """Why a clone of `repo_url`@`ref` is refused (None: allowed)."""
    if not _COMMIT_RE.match(ref):
        return (f"refused: ref {ref!r} is not a full 40-hex commit sha (a branch or tag can move; "
                "pin the clone to a commit)")
    if re.search(r"(^|/)\.\.(/|$)", repo_url) or "::" in repo_url.split("/", 1)[0]:
        return f"refused: repo {repo_url!r} uses '..' or a transport helper"
    for prefix in allowlist:
        if prefix and (repo_url == prefix.rstrip("/") or
                       repo_url.startswith(prefix if prefix.endswith("/") else prefix + "/")):
            return None
    return (f"refused: repo {repo_url!r} is not under a prefix in auto_repair_clone_allowlist "
            f"({list(allowlist) or 'empty: no clones allowed'})")


def _clone_step(step: RepairStep, ctx: _Context) -> RepairAction:
    assert step.clone is not None
    spec = step.clone
    action = RepairAction(kind="clone", target=step.target, source=step.source, repo=spec.repo,
                          ok=False, detail="")
    url = _repo_url(spec.repo, ctx.repo_root)
    refusal = clone_refusal(url, spec.ref, ctx.clone_allowlist)
    if refusal:
        return action.model_copy(update={"detail": refusal})
    dest = clone_dir(ctx.workspace, spec.repo)
    try:
        checkout_clone(url, spec.ref, dest)
        head = git.Repo(dest).head.commit.hexsha
    except (git.GitError, OSError, ValueError) as exc:
        return action.model_copy(update={"detail": f"clone/checkout of {spec.repo}@{spec.ref} failed: {exc}"})
    if head != spec.ref:   # e.g. a branch named like a sha
        return action.model_copy(update={"detail": f"refused: checkout of {spec.ref} gave commit {head}"})
    source_dir = (dest / spec.subdir).resolve()
    if not source_dir.is_relative_to(dest.resolve()):
        return action.model_copy(update={"detail": f"subdir {spec.subdir!r} points outside the clone"})
    # A clone is a local directory: it must be built, so no --only-binary for it.
    ok, detail = pip_install(ctx.python, str(source_dir), ctx.pip_args, editable=spec.editable, cwd=ctx.repo_root,
                             index_url=ctx.index_url, only_binary=False)
    return action.model_copy(update={"ok": ok, "package": str(source_dir), "detail": detail})


def _repo_url(repo: str, repo_root: Path) -> str:
    """A relative local repo path means relative to the repo root, not to the daemon's cwd."""
    if "://" in repo or re.match(r"^[\w.-]+@", repo) or Path(repo).is_absolute():
        return repo
    local = repo_root / repo
    return str(local.resolve()) if local.exists() else repo


# --------------------------------------------------------------- fallback ----

def write_patched_config(config_path: Path, model_name: str, workspace: Path) -> Path:
    """Copy of a trainer YAML with `model.name` replaced, at `<workspace>/autofix_configs/<stem>-<model>.yaml`."""
    data = read_yaml(config_path)
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{config_path}: model must be a mapping, got {type(model).__name__}")
    model = dict(model)
    model["name"] = model_name           # in place, so the key keeps its position
    data["model"] = model
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    dest = (Path(workspace) / CONFIGS_DIR / f"{config_path.stem}-{safe}.yaml").resolve()
    atomic_write_text(dest, yaml.safe_dump(data, sort_keys=False))
    return dest


def _fallback_step(step: RepairStep, command: Command, ctx: _Context) -> tuple[RepairAction, Command]:
    assert step.fallback is not None
    action = RepairAction(kind="fallback", target=step.target, source=step.source, fallback=step.fallback,
                          ok=False, detail="")
    try:
        tokens = _tokens(command)
    except ValueError as exc:
        return action.model_copy(update={"detail": f"cannot parse the command: {exc}"}), command
    configs = option_values(tokens, "--config")
    sets_model = any(v.startswith("model.name=") for v in option_values(tokens, "--set"))
    if not configs and not sets_model:
        return action.model_copy(update={"detail": "cannot apply fallback: the command has neither "
                                                   "--config PATH nor --set model.name=NAME"}), command
    retry: Command | None = command
    patched: Path | None = None
    if configs:
        config_path = Path(configs[-1])   # argparse: the last --config wins
        if not config_path.is_absolute():
            config_path = ctx.repo_root / config_path
        try:
            patched = write_patched_config(config_path, step.fallback, ctx.workspace)
        except (ConfigError, OSError) as exc:
            return action.model_copy(update={"detail": f"cannot patch the config: {exc}"}), command
        retry = rewrite_option(retry, "--config", lambda v: True, str(patched))
    if sets_model and retry is not None:
        retry = rewrite_option(retry, "--set", lambda v: v.startswith("model.name="),
                               f"model.name={step.fallback}")
    if retry is None:
        return action.model_copy(update={"detail": "cannot rewrite the command safely (shell syntax "
                                                   "and a token not found as written)"}), command
    detail = f"model.name {step.target} -> {step.fallback}" + (f"; config copy {patched}" if patched else "")
    return action.model_copy(update={"ok": True, "detail": detail,
                                     "config": str(patched) if patched else None}), retry


# ------------------------------------------------------- command rewriting ----

def _tokens(command: Command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def option_values(tokens: Sequence[str], option: str) -> list[str]:
    """Every value given to `option`, as `option VALUE` or `option=VALUE`, in order."""
    values = []
    for i, tok in enumerate(tokens):
        if tok == option and i + 1 < len(tokens):
            values.append(tokens[i + 1])
        elif tok.startswith(option + "="):
            values.append(tok[len(option) + 1:])
    return values


def rewrite_option(command: Command, option: str, match: Callable[[str], bool], new: str) -> Command | None:
    """Replace each value of `option` that `match`es with `new`; same type back (None: unsafe for a string)."""
    if isinstance(command, list):
        return _rewrite_tokens(command, option, match, new)
    tokens = shlex.split(command)
    olds = {v for v in option_values(tokens, option) if match(v)}
    text = command
    for old in olds:
        text, count = _replace_textually(text, option, old, new)
        if count == 0:
            # Written in a form the pattern misses (e.g. backslash escapes): re-join, unless that
            # would quote away shell syntax such as `&&` or a redirect.
            if _SHELL_SYNTAX & set(command):
                return None
            return shlex.join(_rewrite_tokens(tokens, option, match, new))
    return text


def _rewrite_tokens(tokens: Sequence[str], option: str, match: Callable[[str], bool], new: str) -> list[str]:
    out = list(tokens)
    for i, tok in enumerate(out):
        if tok == option and i + 1 < len(out) and match(out[i + 1]):
            out[i + 1] = new
        elif tok.startswith(option + "=") and match(tok[len(option) + 1:]):
            out[i] = f"{option}={new}"
    return out


def _replace_textually(text: str, option: str, old: str, new: str) -> tuple[str, int]:
    """Swap `option old` / `option=old` / `option "old"` in a shell string, leaving the rest as written."""
    pattern = re.compile(rf"(?<!\S)({re.escape(option)}(?:=|\s+))(['\"]?){re.escape(old)}\2(?!\S)")
    return pattern.subn(lambda m: m.group(1) + shlex.quote(new), text)
