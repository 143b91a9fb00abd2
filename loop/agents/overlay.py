"""What a decision's `train_overlay` may set: the recipe (model, optimizer, schedule, loss, data
sampling and augmentation, epochs, seed) and tighter budget caps, never what the task is or where
code and files come from. The Decision validator applies it to every decision, whatever the endpoint
enforced (an LLM that writes `data.domain: "artifacts.cache.pixels.x:Evil"` would otherwise have the
trainer, and then the daemon as root, import a module a run wrote).

  allowed keys   ALLOWED below: a section maps to its keys; `...` means any value of the right type
  never          data.domain, data.domain_args (the operator's task), kd.* (the evolution window's),
                 run.resume_from (only `continue_run` resumes), model.kwargs, anything unknown
"""
from __future__ import annotations

from typing import Any

NUMBER, INTEGER, TEXT, FLAG, ANY_LIST = (int, float), (int,), (str,), (bool,), (list,)
ALLOWED: dict[str, dict[str, Any]] = {
    "data": {"image_size": INTEGER, "batch_size": INTEGER, "eval_batch_size": INTEGER, "train_fraction": NUMBER,
             "num_workers": INTEGER, "augment": ANY_LIST,
             "sampling": {"strategy": TEXT, "recent_boost": NUMBER, "hard_power": NUMBER, "hard_floor": NUMBER,
                          "hard_momentum": NUMBER}},
    "model": {"name": TEXT, "drop_rate": NUMBER, "pretrained": FLAG + TEXT},
    "optim": {"name": TEXT, "lr": NUMBER, "momentum": NUMBER, "nesterov": FLAG, "weight_decay": NUMBER,
              "grad_clip": NUMBER},
    "schedule": {"name": TEXT, "warmup_epochs": NUMBER, "min_lr_ratio": NUMBER, "pct_start": NUMBER},
    "loss": {"label_smoothing": NUMBER},
    "run": {"epochs": INTEGER, "seed": INTEGER, "stop_after_epochs": INTEGER},
    "budget": {"max_steps": INTEGER, "max_walltime_minutes": NUMBER, "max_cpu_memory_gb": NUMBER,
               "max_gpu_memory_gb": NUMBER, "max_tokens_processed": INTEGER, "max_disk_gb": NUMBER},
}
WHY = {"data.domain": "the task is the operator's (the default trainer config)",
       "data.domain_args": "the task is the operator's (the default trainer config)",
       "kd": "distillation is the evolution window's", "run.resume_from": "only continue_run resumes a run",
       "model.kwargs": "model constructor arguments are the operator's"}


def overlay_problems(overlay: dict, allowed: dict = ALLOWED, where: str = "train_overlay") -> list[str]:
    """Every key of `overlay` a decision may not set, or of the wrong type, named with the rule."""
    problems = []
    for key, value in overlay.items():
        path = f"{where}.{key}"
        short = path.split(".", 1)[1]
        rule = allowed.get(key)
        if rule is None:
            why = WHY.get(short) or WHY.get(short.split(".")[0]) or "not a key a decision may set"
            problems.append(f"{path}: {why}")
        elif isinstance(rule, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                problems.append(f"{path}: must be an object")
            else:
                problems += overlay_problems(value, rule, path)
        elif value is not None and (not isinstance(value, rule) or (rule is INTEGER and isinstance(value, bool))
                                    or (rule is NUMBER and isinstance(value, bool))):
            problems.append(f"{path}: must be {'/'.join(t.__name__ for t in rule)}, got {type(value).__name__}")
    return problems


def allowed_part(config: dict, allowed: dict = ALLOWED) -> dict:
    """The part of a (resolved) trainer config a decision may set: how a run's recipe is re-proposed
    (a seed replica, finish-up's final round) without carrying its task or its teacher along."""
    out: dict[str, Any] = {}
    for key, rule in allowed.items():
        if key not in config:
            continue
        value = config[key]
        if isinstance(rule, dict):
            if isinstance(value, dict):
                part = allowed_part(value, rule)
                if part:
                    out[key] = part
        elif value is not None:
            out[key] = value
    return out
