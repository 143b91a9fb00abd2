"""The sections of the daemon's config: the LLM roles and their cost, the command policy, the
per-run budget caps, evolution, PHASE and the adaptive timer."""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loop.config.load import StrictModel

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
    # who starts PHASE: the daemon at the window, or a systemd timer (`llmloop service install`), in
    # which case the daemon only pauses for and ingests the run the timer started (one owner)
    scheduler: Literal["daemon", "systemd"] = "daemon"
    daily_start: str = Field("03:00", pattern=r"^\d{2}:\d{2}$")    # local time
    daily_end: str = Field("07:00", pattern=r"^\d{2}:\d{2}$")
    every_n_cycles: int = Field(50, ge=1)
    top_k: int = Field(3, ge=0)                 # archive entries evaluated besides GEN_HEAD
    epochs: int = Field(2, ge=1)                # QTIME: passes over each slice
    slices: int = Field(5, ge=1)                # QTIME: bootstrap slices of the evaluation sets
    replicas: int = Field(3, ge=1)              # QTIME: seeds (test-time jitter and slice draws)
    confidence: float = Field(0.95, gt=0, lt=1)
    sleep_chunk_seconds: float = Field(60.0, gt=0, le=60)   # a stop request is honoured within one chunk
    # cycles a recommendation narrows the search after its ingest (the next PHASE replaces it sooner)
    recommendation_cycles: int = Field(20, ge=1)


class AdaptiveTimerConfig(StrictModel):
    """Bounds of the pause between cycles; the pause itself is computed (loop/daemon/timer.py)."""

    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(120.0, gt=0)
    window: int = Field(10, ge=1)               # cycles in the rolling averages


# Environment variables a sandboxed run keeps (everything else, secrets included, is dropped).
# OMP_WAIT_POLICY is passed, never set: on a machine shared with other work PASSIVE keeps a run's idle
# OpenMP threads from spinning (beside a one-core hog: 6-7 s an epoch, 3 minutes spinning); alone, a
# run is faster spinning (bench/RESULTS.md, test suite, fifth slice).
SANDBOX_ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
                         "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY",
                         "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "VIRTUAL_ENV", "LLMLOOP_FAULT")




class ExecutorConfig(StrictModel):
    """Where runs execute (loop/run/executor.py): this machine, or a Ray cluster."""

    kind: Literal["local", "ray"] = "local"
    address: str = "auto"                       # ray: auto | ray://host:port | host:port
    namespace: str = "llmloop"                  # ray: where the run actors are named
    num_cpus_per_run: float = Field(1.0, gt=0)
    num_gpus_per_run: float = Field(0.0, ge=0)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    shared_storage: bool = True                 # ray: workers see the workspace at the same path
    # ---- ray: a cluster out of reach (loop/run/ray_link.py) ----
    # At start it is an error. Mid-night: one executor_degraded event, then a new run waits for the
    # cluster (`wait`: at most one monitor window per cycle) or runs on this machine (`local`).
    when_unavailable: Literal["wait", "local"] = "wait"
    connect_timeout_seconds: float = Field(30.0, gt=0, le=50)   # the driver joining; with the probe, under 60 s
    retry_seconds: float = Field(5.0, gt=0)     # after a loss: the first wait before reconnecting, doubling ...
    max_retry_seconds: float = Field(60.0, gt=0)   # ... up to this

    @model_validator(mode="after")
    def _ray_installed(self) -> "ExecutorConfig":
        import importlib.util

        if self.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("kind: ray needs Ray, which is not installed here: pip install -e '.[cluster]' "
                             "(or pip install 'ray==2.60.0')")
        return self


# ---------------------------------------------------------- tracking ----
# Optional and best-effort (loop/tracking/): a tracker that is down never stops a cycle.
TRACKING_INSTALL_HINT = "pip install -e '.[tracking]'"
TRACKING_PINS = {"mlflow": "mlflow==3.17.2", "tensorboard": "tensorboard==2.21.0"}


class MlflowTracking(StrictModel):
    """Where the night is logged: one parent run per daemon start, a nested run per training and candidate."""

    tracking_uri: str                         # sqlite:///artifacts/mlflow.db (relative: the project root), http(s)://...
    experiment: str = Field("llmloop", min_length=1)
    artifact_location: str | None = None      # None: beside a sqlite file (<its folder>/mlartifacts), else the server's


class TrackingConfig(StrictModel):
    """Experiment trackers the daemon logs into; both off by default."""

    mlflow: MlflowTracking | None = None
    tensorboard: bool = False                 # per-epoch scalars per run folder, linked from <workspace>/tensorboard
    retry_seconds: float = Field(60.0, ge=0)  # after a failure: the first wait before trying again, doubling ...
    max_retry_seconds: float = Field(900.0, ge=0)   # ... up to this

    @model_validator(mode="after")
    def _installed(self) -> "TrackingConfig":
        import importlib.util

        for key, module, wanted in (("mlflow", "mlflow", self.mlflow is not None),
                                    ("tensorboard", "tensorboard", self.tensorboard)):
            if wanted and importlib.util.find_spec(module) is None:
                raise ValueError(f"tracking.{key} needs {module}, which is not installed here: {TRACKING_INSTALL_HINT} "
                                 f"(or pip install '{TRACKING_PINS[module]}')")
        return self


# ---------------------------------------------------------- notifications ----
# Sent through apprise (loop/notify/notifier.py) from what the event log records (loop/notify/mapping.py).
NOTIFY_URLS_ENV = "LLMLOOP_NOTIFY_URLS"      # more URLs, space or comma separated: tokens stay out of YAML
NOTIFY_EVENTS = ("new_best", "blocked", "run_stalled", "run_timed_out", "disk_low", "disk_ok", "budget_spent",
                 "report_written", "crash_restart")
NotifyEvent = Literal["new_best", "blocked", "run_stalled", "run_timed_out", "disk_low", "disk_ok", "budget_spent",
                      "report_written", "crash_restart"]


def split_urls(text: str) -> list[str]:
    """URLs from one string, separated by spaces, commas or newlines (apprise URLs hold neither)."""
    return [part for part in text.replace(",", " ").split() if part]


class NotifyConfig(StrictModel):
    """Notifications; off while no URL is configured (here or in LLMLOOP_NOTIFY_URLS)."""

    urls: list[str] = Field(default_factory=list)          # apprise URLs: slack://, tgram://, ntfy://, json:// ...
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))   # which are sent
    queue_size: int = Field(100, ge=1)        # notifications held while the receiver is down; the oldest go first
    retry_seconds: float = Field(30.0, gt=0)  # after a failed send: the first wait before trying again, doubling ...
    max_retry_seconds: float = Field(900.0, gt=0)   # ... up to this
    stop_flush_seconds: float = Field(10.0, ge=0)   # at a stop: how long the last notifications may take to go out

    @field_validator("urls", mode="before")
    @classmethod
    def _one_string(cls, value: Any) -> Any:
        return split_urls(value) if isinstance(value, str) else value

    def all_urls(self, environ: dict[str, str] | None = None) -> list[str]:
        """The configured URLs, then those of LLMLOOP_NOTIFY_URLS, each once."""
        env = os.environ if environ is None else environ
        return list(dict.fromkeys([*self.urls, *split_urls(env.get(NOTIFY_URLS_ENV, ""))]))
# ---------------------------------------------------------- retention ----
# A disk that never fills (loop/retention/sweep.py, loop/retention/disk.py). The defaults keep a week of
# nights on a laptop disk and prune nothing in a small workspace (20 runs and 20 PASS entries or
# fewer, no failure older than a week). None switches a rule off.

class RetentionConfig(StrictModel):
    """What the sweep after each cycle may remove (weights and checkpoints, never metrics, configs
    or logs), and the free space below which the daemon starts no new run."""

    max_workspace_gb: float | None = Field(50.0, gt=0)     # over it: the sweep prunes past keep_top_k too
    keep_top_k: int | None = Field(20, ge=1)                # ok runs and PASS entries kept whole, by score
    keep_failed_runs_days: float | None = Field(7.0, ge=0)  # failed runs and FAIL entries keep weights this long
    min_free_gb: float | None = Field(1.0, ge=0)            # free space on the workspace's disk; below: wait
    disk_poll_seconds: float = Field(30.0, gt=0)            # while waiting: how often free space is checked
