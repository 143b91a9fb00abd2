"""The offline policy: plays Builder and Mentor with the same JSON contracts and no network, so the
loop always runs. Deterministic for a seed and a history.

Builder, one branch per situation (the AIDE shape: draft, improve, explore):
  baseline  no finished run yet: the embedded config as it is
  exploit   every 5th run: the best config so far, trained longer (dimension `evaluation`)
  explore   no gain in the last `stagnation_runs` runs: a whole new point from Optuna's TPE
  mutate    otherwise: the best config with one dimension changed, the least-tried dimension
            first, the new value suggested by TPE from every past run
Mentor: `on_track` while the best keeps improving; on stagnation `off_track` with one question and
a concrete challenge: a different model architecture.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import optuna

from loop.agents.schema import STRATEGY_DIMENSIONS, Decision, Review
from loop.journal.history import RunRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)

# ---- the search space: one parameter per strategy dimension ----
AUGMENT_PRESETS: dict[str, list[dict]] = {
    "none": [],
    "light": [{"name": "Affine", "args": {"translate_percent": [-0.05, 0.05], "rotate": [-6, 6], "p": 0.5}}],
    "medium": [{"name": "Affine", "args": {"translate_percent": [-0.08, 0.08], "rotate": [-10, 10],
                                           "scale": [0.9, 1.1], "p": 0.7}}],
    "strong": [{"name": "Affine", "args": {"translate_percent": [-0.1, 0.1], "rotate": [-15, 15],
                                           "scale": [0.85, 1.15], "shear": [-8, 8], "p": 0.8}},
               {"name": "CoarseDropout", "args": {"num_holes_range": [1, 2], "hole_height_range": [0.1, 0.2],
                                                  "hole_width_range": [0.1, 0.2], "p": 0.3}}],
}
OPTIMIZERS: dict[str, dict] = {
    "sgd_0.02": {"name": "sgd", "lr": 0.02}, "sgd_0.05": {"name": "sgd", "lr": 0.05},
    "sgd_0.1": {"name": "sgd", "lr": 0.1}, "adamw_0.001": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05},
    "adamw_0.003": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
}
SPACE: dict[str, tuple[str, list]] = {      # dimension -> (parameter, choices)
    "augmentation": ("augment", list(AUGMENT_PRESETS)),
    "preprocessing": ("image_size", [24, 32, 40]),
    "data_sampling": ("sampling", ["uniform", "class_balanced", "hard_example_weighted", "recent_weighted"]),
    "loss": ("label_smoothing", [0.0, 0.05, 0.1, 0.15]),
    "model_arch": ("model", ["resnet10t", "regnetx_002", "mobilenetv3_small_075", "resnet14t"]),
    "optimization": ("optim", list(OPTIMIZERS)),
    "evaluation": ("epochs", [6, 10, 14]),
}
assert set(SPACE) == set(STRATEGY_DIMENSIONS)


@dataclass
class PolicyInput:
    cycle: int
    history: list[RunRecord] = field(default_factory=list)
    open_todos: list[str] = field(default_factory=list)
    search_space_hint: dict[str, list] = field(default_factory=dict)   # from PHASE, later
    stagnation_runs: int = 4


# ---------------------------------------------------- config <-> params ----

def params_of(config: dict) -> dict[str, Any]:
    """The search-space parameters a resolved trainer config sits at (unknown values left out)."""
    data, optim = config.get("data", {}), config.get("optim", {})
    found = {
        "augment": next((k for k, v in AUGMENT_PRESETS.items() if v == data.get("augment", [])), None),
        "image_size": data.get("image_size"),
        "sampling": data.get("sampling", {}).get("strategy"),
        "label_smoothing": config.get("loss", {}).get("label_smoothing"),
        "model": config.get("model", {}).get("name"),
        "optim": next((k for k, v in OPTIMIZERS.items()
                       if v["name"] == optim.get("name") and abs(v["lr"] - optim.get("lr", -1)) < 1e-12), None),
        "epochs": config.get("run", {}).get("epochs"),
    }
    choices = dict(SPACE.values())
    return {k: v for k, v in found.items() if v in choices[k]}


def overlay_of(params: dict[str, Any]) -> dict:
    """A trainer config overlay that puts a run at `params`."""
    overlay: dict[str, Any] = {}
    if "augment" in params:
        overlay.setdefault("data", {})["augment"] = AUGMENT_PRESETS[params["augment"]]
    if "image_size" in params:
        overlay.setdefault("data", {})["image_size"] = params["image_size"]
    if "sampling" in params:
        overlay.setdefault("data", {})["sampling"] = {"strategy": params["sampling"]}
    if "label_smoothing" in params:
        overlay["loss"] = {"label_smoothing": params["label_smoothing"]}
    if "model" in params:
        overlay["model"] = {"name": params["model"]}
    if "optim" in params:
        overlay["optim"] = dict(OPTIMIZERS[params["optim"]])
    if "epochs" in params:
        overlay["run"] = {"epochs": params["epochs"]}
    return overlay


def suggest(history: list[RunRecord], seed: int, space: dict[str, tuple[str, list]] | None = None) -> dict:
    """One point from Optuna's TPE sampler, told every past run that lies in the space."""
    space = space or SPACE
    dists = {param: optuna.distributions.CategoricalDistribution(choices) for param, choices in space.values()}
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    for rec in history:
        params = params_of(rec.config)
        if set(params) == set(dists) and all(params[p] in dists[p].choices for p in params):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=rec.score))
    return study.ask(dists).params


# ------------------------------------------------------------- Builder ----

def best_run(history: list[RunRecord]) -> RunRecord | None:
    ok = [r for r in history if r.ok]
    return max(ok, key=lambda r: (r.score, -r.cycle)) if ok else None


def stagnating(history: list[RunRecord], window: int) -> bool:
    """True when none of the last `window` runs beat the best from before them."""
    if len(history) <= window:
        return False
    before = [r.score for r in history[:-window] if r.ok]
    recent = [r.score for r in history[-window:] if r.ok]
    return bool(before) and (not recent or max(recent) <= max(before))


def restricted_space(hint: dict[str, list]) -> dict[str, tuple[str, list]]:
    """The space narrowed by PHASE recommendations (a parameter -> preferred choices)."""
    space = {}
    for dim, (param, choices) in SPACE.items():
        keep = [c for c in choices if c in hint.get(param, choices)]
        space[dim] = (param, keep or choices)
    return space


def builder_decision(inp: PolicyInput, seed: int = 0) -> Decision:
    history = inp.history
    space = restricted_space(inp.search_space_hint)
    best = best_run(history)
    n = len(history)
    if best is None:
        mode, dim, params = "baseline", "evaluation", {}
    elif n % 5 == 4:
        base = params_of(best.config)
        longer = min((e for e in SPACE["evaluation"][1] if e > base.get("epochs", 10)), default=None)
        mode, dim = "exploit", "evaluation"
        params = {**base, "epochs": longer or base.get("epochs", 10)}
    elif stagnating(history, inp.stagnation_runs):
        mode, dim = "explore", "model_arch"
        params = suggest(history, seed + n, space)
    else:
        tried = {d: sum(1 for r in history if r.dimension == d) for d in SPACE}
        dim = min(SPACE, key=lambda d: (tried[d], list(SPACE).index(d)))
        param = SPACE[dim][0]
        proposal = suggest(history, seed + n, space)
        base = params_of(best.config)
        if proposal[param] == base.get(param):     # TPE agreed with the best: take the next choice
            choices = space[dim][1]
            proposal[param] = choices[(choices.index(proposal[param]) + 1) % len(choices)] \
                if proposal[param] in choices else choices[0]
        mode, params = "mutate", {**base, param: proposal[param]}
    label = f"{mode}-{dim}-c{inp.cycle}"
    rationale = {
        "baseline": "No finished run yet: train the embedded configuration as a baseline to measure against.",
        "exploit": f"Every fifth run re-checks the best configuration ({best.label if best else '-'}, "
                   f"{best.score if best else 0:.4f}) with longer training to see whether it still has headroom.",
        "explore": f"The last {inp.stagnation_runs} runs did not beat the best ({best.score if best else 0:.4f}); "
                   "sample a fresh configuration across every dimension instead of small mutations.",
        "mutate": f"Keep the best configuration ({best.label if best else '-'}, {best.score if best else 0:.4f}) "
                  f"and change only the least-explored dimension, {dim}, to measure its effect in isolation.",
    }[mode]
    notes = (f"Best so far: {best.label} at {best.score:.4f} after {n} run(s)." if best
             else "Starting: no runs yet; baseline first.")
    todos = [f"Compare {dim} variants once three runs of that dimension exist"] if mode == "explore" else []
    resolve = [t.split(":")[0] for t in inp.open_todos if dim.replace("_", " ") in t.lower()
               or dim in t.lower()][:1]
    return Decision(action="train", rationale=rationale, run_label=label, train_overlay=overlay_of(params),
                    strategy_dimension=dim, todo_new=todos, notes_update=notes,
                    data_exploration_update="" if history else
                    "Embedded task: 10 digit classes, 8x8 grayscale upsampled; fixed val/recall/delta/drift sets.",
                    resolve_shared_todo_ids=resolve)


# -------------------------------------------------------------- Mentor ----

def mentor_review(inp: PolicyInput, decision: Decision, seed: int = 0) -> Review:
    history = inp.history
    best = best_run(history)
    if best is None or not stagnating(history, max(2, inp.stagnation_runs - 1)):
        return Review(verdict="on_track", notes=f"Progress is steady; best {best.score:.4f}." if best else
                      "Baseline pending; nothing to challenge yet.")
    current = params_of(best.config).get("model")
    options = [m for m in SPACE["model_arch"][1] if m != current]
    alternative = options[(seed + len(history)) % len(options)]
    params = {**params_of(best.config), "model": alternative}
    challenge = Decision(action="train", run_label=f"mentor-arch-{alternative}-c{inp.cycle}",
                         rationale=f"Runs have stalled at {best.score:.4f} with {current}; try the {alternative} "
                                   "architecture on the best recipe before more hyper-parameter tweaks.",
                         train_overlay=overlay_of(params), strategy_dimension="model_arch")
    return Review(verdict="off_track", critical_question=f"What evidence says {current} is not the bottleneck?",
                  challenge=challenge, todo_new=[f"Evaluate {alternative} against {current} on the best recipe"],
                  notes="Stagnation: challenge with a concrete architecture change.")
