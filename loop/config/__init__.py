"""Typed, validated configuration: YAML -> pydantic models with errors that name the file and key.

`load.py` (reading, validating, `--set` overrides, deep merge), `sections.py` (the daemon config's
sections: LLM roles and prices, command policy, budget caps, evolution, PHASE, timer), `pins.py`
(what auto-repair may install), `daemon.py` (`DaemonConfig`, the project root, the loader). The
trainer's config lives in `loop.trainer.config`. Every name is importable from `loop.config`.
"""
from loop.config.daemon import (  # noqa: F401
                                DEFAULT_DAEMON_CONFIG,
                                IGNORED_DAEMON_KEYS,
                                DaemonConfig,
                                add_daemon_config_arguments,
                                load_daemon_config,
                                project_root_of,
)
from loop.config.load import (  # noqa: F401
                                StrictModel,
                                apply_overrides,
                                deep_merge,
                                describe_validation_error,
                                load_model_file,
                                parse_override,
                                read_yaml,
                                validate,
)
from loop.config.pins import CloneSpec, PackagePin, check_package_pin  # noqa: F401
from loop.config.sections import (  # noqa: F401
                                SAMPLING_STRATEGIES,
                                SANDBOX_ENV_ALLOWLIST,
                                AdaptiveTimerConfig,
                                BudgetCaps,
                                CommandPolicyConfig,
                                EvolutionConfig,
                                ExecutorConfig,
                                GraftConfig,
                                LLMBudget,
                                LLMRole,
                                ModelPrice,
                                PhaseConfig,
                                ViolationRules,
)
