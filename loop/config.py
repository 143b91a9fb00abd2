"""Typed, validated configuration: YAML files -> pydantic models, with errors that name file and key.

`load_model_file` is the one way any YAML config enters the program; `apply_overrides` handles
`--set key=value` (dotted keys); `deep_merge` applies a decision's overlay to a base config.
The daemon's own config model lives here too; the trainer's lives in `loop.trainer.config`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from loop.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


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
        value = yaml.safe_load(raw) if raw.strip() else ""
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


# ---------------------------------------------------------- daemon config ----
# Keys keep the names of the seed README (daemon_poll_seconds, mentor_every_n_cycles,
# auto_repair_*, ...) so its readers find them. Sections group what the seed left implicit.

class LLMRole(StrictModel):
    """One role's endpoint. No base_url -> the offline policy plays the role (no network)."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"        # read from the environment, else the credentials file
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    timeout_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=10)  # transient errors retried with backoff
    # auto: json_schema, json_object_schema (llama.cpp grammar), json_object, off; kept per endpoint
    structured_output: Literal["auto", "json_schema", "json_object_schema", "json_object", "off"] = "auto"
    temperature: float | None = Field(None, ge=0, le=2)
    # Sent as max_tokens when set: a small local model under a grammar can otherwise write until its
    # context is full (minutes per call on a CPU).
    max_output_tokens: int | None = Field(None, ge=16)
    # After this many failed calls in a row the role's circuit opens: calls fail fast with no request
    # (the cycle waits) until the cooldown has passed, then one trial call decides (loop/agents/breaker.py).
    circuit_breaker_failures: int = Field(5, ge=1)
    circuit_breaker_cooldown_seconds: float = Field(300.0, ge=0)
    # While the circuit is open, the budget is spent, a call failed, or (Builder) the gate refused
    # `llm_gate_refusal_limit` decisions in a row: `offline` lets the offline policy play the role
    # (each such decision marked with its source), `wait` idles the cycle (the Builder) or skips
    # the review (the Mentor).
    when_unavailable: Literal["offline", "wait"] = "offline"


class ModelPrice(StrictModel):
    """What a model costs per million tokens (`llm_prices`), in whatever currency you write."""

    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class LLMBudget(StrictModel):
    """A cap on LLM spend per daemon start, both roles together; reached: no more LLM calls."""

    max_cost: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


class CommandPolicyConfig(StrictModel):
    """What a `run_command` decision may run (loop/gate/policy.py). Paths are relative to the repo root."""

    allowed_executables: list[str] = Field(default_factory=lambda: [
        "python", "python3", "llmloop", "ls", "cat", "head", "tail", "grep", "wc", "echo", "mkdir", "cp",
        "mv", "rm", "touch", "find", "sort", "uniq", "du", "df", "nvidia-smi", "sleep", "true", "cd"])
    writable_paths: list[str] = Field(default_factory=lambda: ["artifacts", "/tmp"])
    allow_network: bool = False


class CloneSpec(StrictModel):
    repo: str                # must start with an auto_repair_clone_allowlist prefix
    # Auto-repair checks out only a full 40-hex commit sha; a branch or tag (the default "main"
    # included) still loads, so old configs keep working, but the clone is refused at repair time.
    ref: str = "main"
    subdir: str = ""
    editable: bool = True


# ------------------------------------------------------------ package pins ----
# What auto-repair may pip-install: an exact pin, never a bare name or a range, so a name an index
# serves later (a typosquat, a hijacked release) cannot come in through a config entry.

_PKG_NAME_RE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")       # PEP 508 name
_VERSION_RE = re.compile(r"^(\d+!)?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?"
                         r"(\+[a-z0-9]+(\.[a-z0-9]+)*)?$", re.IGNORECASE)                  # PEP 440, no wildcard
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PIN_HELP = ("write 'name==1.2.3', a mapping {package: name, version: 1.2.3, sha256: <optional hex>}, "
             "or an absolute path to an existing local directory or .whl file")


class PackagePin(StrictModel):
    """One exactly pinned distribution; with `sha256`, pip installs it in --require-hashes mode."""

    package: str
    version: str
    sha256: str | None = None

    @field_validator("package")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PKG_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a package name")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: Any) -> str:
        v = str(v).strip()
        if v.startswith("=="):
            v = v[2:].strip()
        if not _VERSION_RE.match(v):
            raise ValueError(f"{v!r} is not an exact version (a full PEP 440 version such as 1.2.3)")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(v):
            raise ValueError(f"sha256 {v!r} is not 64 hex digits")
        return v

    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def check_package_pin(value: PackagePin | str) -> PackagePin | Path:
    """A pin string/mapping as a PackagePin, or the local path it names; ValueError if not pinned."""
    if isinstance(value, PackagePin):
        return value
    text = str(value).strip()
    if text.startswith("/"):
        path = Path(text)
        if path.is_dir() or (path.is_file() and path.suffix == ".whl"):
            return path
        raise ValueError(f"local path {text!r} is not an existing directory or .whl file; {_PIN_HELP}")
    name, sep, version = text.partition("==")
    if not sep or "=" in version or not _PKG_NAME_RE.match(name.strip()) or not _VERSION_RE.match(version.strip()):
        raise ValueError(f"{text!r} is not pinned; {_PIN_HELP}")
    return PackagePin(package=name.strip(), version=version.strip())


def _check_pin_map(key: str, value: dict[str, PackagePin | str]) -> dict[str, PackagePin | str]:
    for name, pin in value.items():
        try:
            check_package_pin(pin)
        except ValueError as exc:
            raise ValueError(f"{key}[{name!r}]: {exc}") from None
    return value


class BudgetCaps(StrictModel):
    """Per-run caps (evolution_scheduler.md 'Budget'); None means no cap."""

    max_steps: int | None = Field(None, gt=0)
    max_walltime_minutes: float | None = Field(None, gt=0)
    max_gpu_memory_gb: float | None = Field(None, gt=0)
    max_cpu_memory_gb: float | None = Field(None, gt=0)
    max_tokens_processed: int | None = Field(None, gt=0)
    max_disk_gb: float | None = Field(None, gt=0)


SAMPLING_STRATEGIES = ("recent_weighted", "uniform", "hard_example_weighted", "class_balanced")


class ViolationRules(StrictModel):
    """Hard rules a candidate must not break (the seed's "law compliance"); None switches one off."""

    per_class_accuracy_floor: float | None = Field(0.5, ge=0, le=1)   # on the val split
    max_parameters: int | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)                  # one image, CPU, median


class GraftConfig(StrictModel):
    strategy: Literal["auto", "linear", "drift_controlled", "momentum", "adaptive"] = "auto"
    steps: int = Field(10, ge=1)
    drift_threshold: float = Field(0.05, ge=0, le=1)
    tolerance: float = Field(0.02, ge=0, le=1)   # blended accuracy may dip this far below HEAD's


class EvolutionConfig(StrictModel):
    archive_prefix: str = Field("llmloop", pattern=r"^[A-Za-z0-9_.]+$")
    strategies: list[Literal["recent_weighted", "uniform", "hard_example_weighted", "class_balanced"]] = Field(
        default_factory=lambda: list(SAMPLING_STRATEGIES), min_length=1)
    replay_samples_per_generation: int = Field(50, ge=0)
    candidate_overrides: dict[str, Any] = Field(default_factory=dict)   # overlay on the trainer config
    rules: ViolationRules = Field(default_factory=ViolationRules)
    graft: GraftConfig = Field(default_factory=GraftConfig)
    burn_in_batches: int = Field(4, ge=1)
    burn_in_min_accuracy: float | None = Field(None, ge=0, le=1)   # None: shadow accuracy - tolerance


class PhaseConfig(StrictModel):
    """PHASE deep evaluation (dream_phase.md): when its window opens the loop pauses at a cycle
    boundary, PHASE evaluates GEN_HEAD and the archive's top-k with QTIME replicas, and the loop
    resumes on PHASE's completion signal."""

    schedule: Literal["daily", "every_n_cycles", "off"] = "daily"
    daily_start: str = Field("03:00", pattern=r"^\d{2}:\d{2}$")    # local time
    daily_end: str = Field("07:00", pattern=r"^\d{2}:\d{2}$")
    every_n_cycles: int = Field(50, ge=1)
    top_k: int = Field(3, ge=0)                 # archive entries evaluated besides GEN_HEAD
    epochs: int = Field(2, ge=1)                # QTIME: passes over each slice
    slices: int = Field(5, ge=1)                # QTIME: bootstrap slices of the evaluation sets
    replicas: int = Field(3, ge=1)              # QTIME: seeds (test-time jitter and slice draws)
    confidence: float = Field(0.95, gt=0, lt=1)
    sleep_chunk_seconds: float = Field(60.0, gt=0, le=60)   # a stop request is honoured within one chunk


class AdaptiveTimerConfig(StrictModel):
    """Bounds of the pause between cycles; the pause itself is computed (loop/daemon/timer.py)."""

    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(120.0, gt=0)
    window: int = Field(10, ge=1)               # cycles in the rolling averages


# Environment variables a sandboxed run keeps (everything else, secrets included, is dropped).
SANDBOX_ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
                         "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                         "CUBLAS_WORKSPACE_CONFIG", "VIRTUAL_ENV", "LLMLOOP_FAULT")


# Removed keys an old config may still set: loaded with a logged warning, not an unknown-key error.
IGNORED_DAEMON_KEYS = {
    "auto_repair_allow_direct_module_install": "a module missing from the auto_repair maps is never installed by "
                                               "its own name, whatever this said; map it to a pinned package",
}


class DaemonConfig(StrictModel):
    # The project root (not a key: set by load_daemon_config from where the config lives, or
    # --root); every relative path below resolves against it. In-process configs start at the cwd.
    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def root(self) -> Path:
        return self._root

    def set_root(self, root: Path) -> None:
        self._root = Path(root)

    def resolve(self, path: str | Path) -> Path:
        """`path` as an absolute path: as it is when absolute, else under the project root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._root / p

    # ---- workspace ----
    workspace: str = "artifacts"
    default_trainer_config: str = "config/trainer/digits.yaml"
    # ---- timing ----
    daemon_poll_seconds: float = Field(5.0, ge=0)
    default_monitor_seconds: int = Field(120, gt=0)
    max_monitor_seconds: int = Field(1800, gt=0)
    # ---- roles and missions ----
    mission_file: str | None = None
    worker_mission_file: str = "missions/WORKER_MISSION.md"
    mentor_mission_file: str = "missions/MENTOR_MISSION.md"
    worker_display_name: str = "AI-Builder"
    mentor_display_name: str = "AI-Mentor"
    interaction_mode: Literal["standard", "builder_health_helper"] = "standard"
    builder: LLMRole = Field(default_factory=LLMRole)
    mentor: LLMRole = Field(default_factory=lambda: LLMRole(when_unavailable="wait"))
    credentials_file: str = "~/.config/llmloop/credentials.json"   # written by `llmloop login`, 0600
    offline_seed: int = 0
    command_policy: CommandPolicyConfig = Field(default_factory=CommandPolicyConfig)
    # ---- LLM cost ----
    llm_prices: dict[str, ModelPrice] = Field(default_factory=dict)    # model name -> price; empty: tokens only
    llm_budget: LLMBudget = Field(default_factory=LLMBudget)
    llm_gate_refusal_limit: int = Field(3, ge=1)            # Builder decisions refused in a row ...
    llm_gate_refusal_offline_cycles: int = Field(5, ge=1)   # ... then this many cycles offline (when_unavailable)
    # ---- mentor cadence ----
    mentor_enabled: bool = True
    mentor_every_n_cycles: int = Field(4, gt=0)
    mentor_health_check_every_n_cycles: int = Field(2, gt=0)
    mentor_force_when_stuck: bool = True
    mentor_challenge_streak_min_idle_cycles: int = Field(3, ge=0)
    mentor_apply_suggestions: bool = True
    mentor_require_web_search: bool = False
    mentor_model: str | None = None
    mentor_reasoning_effort: Literal["low", "medium", "high"] | None = None
    mentor_web_search_mode: Literal["off", "auto", "required"] = "off"
    # ---- runs ----
    enable_stuck_wait_recovery: bool = False
    stale_orphan_idle_cycles: int = Field(6, gt=0)
    stuck_wait_recovery_cycles: int = Field(8, gt=0)
    max_concurrent_experiments: int = Field(3, ge=1, le=8)
    budget: BudgetCaps = Field(default_factory=lambda: BudgetCaps(max_walltime_minutes=30))
    # ---- auto-repair ----
    auto_repair_enabled: bool = True
    auto_repair_retry_on_success: bool = True
    auto_repair_python_exe: str | None = None
    auto_repair_index_url: str = "https://pypi.org/simple"   # the one index pip may use (--index-url)
    # Package maps: every value pinned (see PackagePin / check_package_pin), checked at load.
    auto_repair_module_package_map: dict[str, PackagePin | str] = Field(default_factory=dict)
    # Alias map: a value is a key of auto_repair_module_package_map (its pin is used) or a pin itself.
    auto_repair_module_alias_map: dict[str, PackagePin | str] = Field(default_factory=dict)
    auto_repair_module_clone_map: dict[str, CloneSpec | str] = Field(default_factory=dict)
    auto_repair_model_package_map: dict[str, PackagePin | str] = Field(default_factory=dict)
    auto_repair_model_clone_map: dict[str, CloneSpec | str] = Field(default_factory=dict)
    auto_repair_model_fallback_map: dict[str, str] = Field(default_factory=dict)
    # URL prefixes clones may come from (a prefix matches up to a '/'); empty: no clones at all.
    auto_repair_clone_allowlist: list[str] = Field(default_factory=list)
    # ---- sandbox: the OS boundary around every run_command and trainer run (loop/run/sandbox.py) ----
    sandbox: Literal["required", "optional"] = "required"   # optional: policy filter alone if bwrap is missing
    sandbox_user: str = "nobody"              # runs drop to this user when the daemon is root
    sandbox_network: bool = False
    sandbox_writable_paths: list[str] = Field(default_factory=list)   # besides the run folder; relative to the workspace
    sandbox_readonly_paths: list[str] = Field(default_factory=list)   # extra folders runs read (image data)
    sandbox_hide_paths: list[str] = Field(default_factory=list)       # more credential files/folders to hide
    sandbox_env_allowlist: list[str] = Field(default_factory=lambda: list(SANDBOX_ENV_ALLOWLIST))
    run_stall_minutes: float | None = Field(60.0, gt=0)   # no output for this long: the run is killed
    # ---- evolution ----
    evo_period_cycles: int = Field(10, gt=0)
    epsilon: float = Field(0.05, ge=0)
    delta: float = Field(0.0, ge=0)
    theta: float = Field(0.10, ge=0)
    promotion_mode: Literal["manual", "auto"] = "manual"
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    phase: PhaseConfig = Field(default_factory=PhaseConfig)
    adaptive_timer: AdaptiveTimerConfig = Field(default_factory=AdaptiveTimerConfig)

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored_keys(cls, data: Any) -> Any:
        """Keys that once existed and now do nothing: an old config still loads, with a warning."""
        if isinstance(data, dict) and IGNORED_DAEMON_KEYS.keys() & data.keys():
            data = dict(data)
            for key in IGNORED_DAEMON_KEYS.keys() & data.keys():
                log.warning("daemon config: %s is deprecated and ignored (%s); delete it from the config",
                            key, IGNORED_DAEMON_KEYS[key])
                del data[key]
        return data

    @field_validator("auto_repair_module_package_map", "auto_repair_model_package_map")
    @classmethod
    def _pinned(cls, value: dict[str, PackagePin | str], info) -> dict[str, PackagePin | str]:
        return _check_pin_map(info.field_name, value)

    @field_validator("auto_repair_index_url")
    @classmethod
    def _index_url(cls, value: str) -> str:
        if not re.match(r"^(https?|file)://\S+$", value):
            raise ValueError(f"{value!r} is not an http(s):// or file:// URL")
        return value

    @field_validator("auto_repair_module_alias_map")
    @classmethod
    def _aliases_resolve(cls, value: dict[str, PackagePin | str], info) -> dict[str, PackagePin | str]:
        mapped = info.data.get("auto_repair_module_package_map") or {}
        for name, target in value.items():
            if isinstance(target, str) and target in mapped:
                continue
            try:
                check_package_pin(target)
            except ValueError as exc:
                raise ValueError(f"auto_repair_module_alias_map[{name!r}]: not a key of "
                                 f"auto_repair_module_package_map, and {exc}") from None
        return value

DEFAULT_DAEMON_CONFIG = "config/daemon_config.yaml"


def add_daemon_config_arguments(parser) -> None:
    """The options every daemon-side command shares: which config file, which project root, which workspace."""
    parser.add_argument("--daemon-config", help=f"the daemon's config file (default: <root>/{DEFAULT_DAEMON_CONFIG})")
    parser.add_argument("--root", help="the project root: relative paths in the config (missions, trainer "
                                       "configs, workspace) start here (default: where the config lives)")
    parser.add_argument("--workspace", help="override the config's workspace folder")


def project_root_of(config_path: str | Path) -> Path:
    """Where a config file's relative paths start: the folder above `config/` when the file sits in
    a folder named config (the project layout `llmloop` ships), else the current directory (a config
    kept elsewhere, e.g. /tmp/night.yaml, for the project you run it from)."""
    folder = Path(config_path).expanduser().resolve().parent
    return folder.parent if folder.name == "config" else Path.cwd().resolve()


def load_daemon_config(path: str | Path | None = None, overrides: list[str] | None = None,
                       root: str | Path | None = None) -> DaemonConfig:
    """Load and validate the daemon config; nothing starts on a bad one. The project root is `root`
    when given, else `project_root_of(path)`; never the package's install location."""
    if path is None:
        path = Path(root) / DEFAULT_DAEMON_CONFIG if root else Path(DEFAULT_DAEMON_CONFIG)
    cfg = load_model_file(DaemonConfig, path, overrides)
    cfg.set_root(Path(root).expanduser().resolve() if root else project_root_of(path))
    return cfg
