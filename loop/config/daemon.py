"""The daemon's config (`DaemonConfig`), the project root it resolves paths against, and its loader."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from loop.config.load import StrictModel, load_model_file
from loop.config.pins import CloneSpec, PackagePin, _check_pin_map, check_package_pin
from loop.config.sections import (
    SANDBOX_ENV_ALLOWLIST,
    AdaptiveTimerConfig,
    BudgetCaps,
    CommandPolicyConfig,
    EvolutionConfig,
    ExecutorConfig,
    LLMBudget,
    LLMRole,
    ModelPrice,
    NotifyConfig,
    PhaseConfig,
    RetentionConfig,
    TrackingConfig,
)

log = logging.getLogger("loop.config")


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
    max_concurrent_runs: int = Field(1, ge=1, le=16)      # daemon runs in flight at once (each on a slot)
    max_identical_failures: int = Field(3, ge=1)          # the same failure this many times in a row: blocked
    blocked_retry_minutes: float = Field(10.0, gt=0)      # while blocked, a new try at most this often (doubling)
    # ---- where runs execute (loop/run/executor.py) and on which device slots (loop/run/slots.py) ----
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    devices: Literal["auto"] | list[int] = "auto"        # GPUs runs may use: one slot each
    cpu_slots: int | None = Field(None, ge=1)             # no GPU: trainings at once (None: one per 4 cores)
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
    sandbox_shm_gb: float = Field(2.0, gt=0)   # the run's private /dev/shm (loader workers, torch IPC)
    sandbox_tmp_gb: float = Field(4.0, gt=0)   # the run's private /tmp (memory-backed: a cap keeps it from taking all)
    # a cgroup per run where the machine allows one (root, cgroup v1 or v2): its RAM, tmpfs pages
    # included (null: no memory cap), and CPU cores (null: no CPU cap); loop/run/cgroup.py
    sandbox_memory_gb: float | None = Field(8.0, gt=0)
    sandbox_cpus: float | None = Field(None, gt=0)
    # `package.module:Class` task domains this daemon may import (registered names need none); never
    # one from an LLM's overlay or a run's files, never one whose package lies in the workspace
    trusted_domains: list[str] = Field(default_factory=list)
    sandbox_writable_paths: list[str] = Field(default_factory=list)   # besides the run folder; workspace-relative
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
    # ---- experiment tracking: MLflow, TensorBoard (optional extras; loop/tracking/) ----
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # ---- notifications through apprise (loop/notify/; README "Notifications") ----
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    # ---- a disk that never fills: the sweep after each cycle, the free-space floor (loop/retention/) ----
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

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
