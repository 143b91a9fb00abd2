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

Task-aware: given a `TaskProfile` (from the data report), the image sizes tried sit around the
data's native size, RGB tasks get a flip/colour augmentation preset, and when the base config names
pretrained weights that exist, the pretrained backbone is one of the architectures. Without one
the space is the embedded digits task's.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import optuna

from loop.agents.cost import SAFETY, cost_model
from loop.agents.ladder import planned_epochs, promotable, screen_epochs, screens
from loop.agents.schema import STRATEGY_DIMENSIONS, Decision, Review
from loop.config import deep_merge
from loop.journal.history import RunRecord
from loop.journal.keeps import incumbent, recipe_key
from loop.journal.noise import KEEPS

REPLICA_AFTER_RUNS = 3          # runs after a new best before its seed replica

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
# RGB tasks only: flips and colour jitter make no sense for grayscale digits
RGB_AUGMENT_PRESETS: dict[str, list[dict]] = {
    "flip_color": [{"name": "HorizontalFlip", "args": {"p": 0.5}},
                   {"name": "ColorJitter", "args": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
                                                    "hue": 0.02, "p": 0.5}}],
}
ALL_AUGMENT_PRESETS = {**AUGMENT_PRESETS, **RGB_AUGMENT_PRESETS}
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
PRETRAINED_TAG = "+pretrained"      # model choice "<backbone>+pretrained": the configured weights
IMAGE_SIZE_LIMITS = (8, 1024)       # the trainer's data.image_size bounds
LARGEST_NATIVE = 384                # larger images are tried downscaled: a compromise for a run's cost


@dataclass(frozen=True)
class TaskProfile:
    """What the offline policy knows of the task (from the data report), so its choices fit it."""

    native_size: int                  # median shorter side of the images, px
    channels: int
    num_classes: int
    train_images: int
    images: int = 0                   # every split
    domain: str = ""
    backbone: str | None = None       # the base config's model.name, which the pretrained weights fit
    pretrained: bool | str = False    # the base config's model.pretrained when usable; False: none
    leaks: str = ""                   # the data report's leak sentence ('' when none)

    @property
    def has_weights(self) -> bool:
        return self.pretrained is not False and bool(self.backbone)

    def describe(self) -> str:
        """The baseline's Data Exploration line."""
        text = (f"Task {self.domain or 'configured'}: {self.num_classes} classes, {self.images} images "
                f"({self.train_images} for training), native size about {self.native_size} px, "
                f"{self.channels} channel(s); training sizes tried {image_sizes_around(self.native_size)}; "
                "fixed val/recall/delta/drift sets.")
        if self.has_weights:
            text += f" Pretrained weights available for {self.backbone} ({self.pretrained})."
        if self.leaks:
            text += f" LEAK: {self.leaks}."
        return text


@dataclass
class PolicyInput:
    cycle: int
    history: list[RunRecord] = field(default_factory=list)
    open_todos: list[str] = field(default_factory=list)
    search_space_hint: dict[str, list] = field(default_factory=dict)   # from PHASE, later
    stagnation_runs: int = 4
    profile: TaskProfile | None = None      # None: the embedded digits task's space
    in_flight: int = 0                      # daemon runs still training (max_concurrent_runs > 1)
    continuing: tuple[str, ...] = ()        # run folders of screens whose continuation is training
    base_config: dict = field(default_factory=dict)   # the default trainer config the overlays go on
    walltime_cap_seconds: float | None = None         # the budget's walltime cap per run


def image_sizes_around(native: int) -> list[int]:
    """Three training sizes around the native one, multiples of 8, at least 16. Tiny images are
    upsampled (a CNN's strides need room: the digits' 8 px train at 24-40), mid-sized ones tried a
    quarter smaller and larger, large ones only downscaled, from at most LARGEST_NATIVE px."""
    def r8(x: float) -> int:
        return max(16, int(x / 8 + 0.5) * 8)

    if native <= 32:
        return [24, 32, 40]
    if native <= 128:
        return sorted({r8(native * 0.75), r8(native), r8(native * 1.25)})
    top = min(native, LARGEST_NATIVE)
    return sorted({r8(top * 5 / 7), r8(top * 6 / 7), r8(top)})


def space_for(profile: TaskProfile | None) -> dict[str, tuple[str, list]]:
    """The search space for a task: the embedded one, adapted to the profile when there is one."""
    if profile is None:
        return SPACE
    space = dict(SPACE)
    space["preprocessing"] = ("image_size", image_sizes_around(profile.native_size))
    if profile.channels == 3:
        space["augmentation"] = ("augment", list(ALL_AUGMENT_PRESETS))
    if profile.has_weights:
        space["model_arch"] = ("model", [profile.backbone + PRETRAINED_TAG, *SPACE["model_arch"][1]])
    return space


def space_text(profile: TaskProfile | None, hint: dict | None = None) -> str:
    """The task's search space as the Builder's context shows it (PHASE's narrowing applied)."""
    space = restricted_space(hint or {}, space_for(profile))
    lines = [f"- {dim} -> {param}: {', '.join(str(c) for c in choices)}" for dim, (param, choices) in space.items()]
    head = ("Search space for this task (image sizes around the native size"
            + (", RGB augmentations" if profile and profile.channels == 3 else "")
            + (", the pretrained backbone" if profile and profile.has_weights else "") + "):"
            if profile else "Search space (the embedded digits task):")
    return "\n".join([head, *lines])


# ---------------------------------------------------- config <-> params ----

def params_of(config: dict) -> dict[str, Any]:
    """The search-space parameters a resolved trainer config sits at (unknown values left out). Any
    valid image size and any pretrained backbone are recognised, whatever space a task uses, so a
    run from another space still counts as the best to mutate."""
    data, optim, model = config.get("data", {}), config.get("optim", {}), config.get("model", {})
    pretrained = model.get("pretrained") not in (None, False)
    found = {
        "augment": next((k for k, v in ALL_AUGMENT_PRESETS.items() if v == data.get("augment", [])), None),
        "image_size": data.get("image_size"),
        "sampling": data.get("sampling", {}).get("strategy"),
        "label_smoothing": config.get("loss", {}).get("label_smoothing"),
        "model": f"{model.get('name')}{PRETRAINED_TAG}" if pretrained and model.get("name") else model.get("name"),
        "optim": next((k for k, v in OPTIMIZERS.items()
                       if v["name"] == optim.get("name") and abs(v["lr"] - optim.get("lr", -1)) < 1e-12), None),
        "epochs": config.get("run", {}).get("epochs"),
    }
    return {k: v for k, v in found.items() if recognised(k, v)}


def recognised(param: str, value: Any) -> bool:
    """Whether `value` is a known value of a search-space parameter, in any task's space."""
    if param == "image_size":
        lo, hi = IMAGE_SIZE_LIMITS
        return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    if param == "model":
        return isinstance(value, str) and (value in SPACE["model_arch"][1] or value.endswith(PRETRAINED_TAG))
    if param == "augment":
        return value in ALL_AUGMENT_PRESETS
    return value in dict(SPACE.values())[param]


def model_overlay(choice: str, profile: TaskProfile | None) -> dict:
    """`model` overlay for a model_arch choice. With a profile, a from-scratch choice says
    `pretrained: false`, so weights configured for the backbone never load into another model."""
    if choice.endswith(PRETRAINED_TAG):
        name = choice[:-len(PRETRAINED_TAG)]
        if profile and profile.has_weights and profile.backbone == name:
            return {"name": name, "pretrained": profile.pretrained}
        return {"name": name}        # weights the profile does not know: the base config's stand
    return {"name": choice} if profile is None else {"name": choice, "pretrained": False}


def overlay_of(params: dict[str, Any], profile: TaskProfile | None = None) -> dict:
    """A trainer config overlay that puts a run at `params`."""
    overlay: dict[str, Any] = {}
    if "augment" in params:
        overlay.setdefault("data", {})["augment"] = ALL_AUGMENT_PRESETS[params["augment"]]
    if "image_size" in params:
        overlay.setdefault("data", {})["image_size"] = params["image_size"]
    if "sampling" in params:
        overlay.setdefault("data", {})["sampling"] = {"strategy": params["sampling"]}
    if "label_smoothing" in params:
        overlay["loss"] = {"label_smoothing": params["label_smoothing"]}
    if "model" in params:
        overlay["model"] = model_overlay(params["model"], profile)
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
    # one rung only: scores of different fidelities are never compared as equals
    rung = [r for r in history if r.verdict == "screen"] or [r for r in history if r.full]
    for rec in rung:
        params = params_of(rec.config)
        if set(params) == set(dists) and all(params[p] in dists[p].choices for p in params):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=rec.score))
    return study.ask(dists).params


# ------------------------------------------------------------- Builder ----

def best_run(history: list[RunRecord]) -> RunRecord | None:
    """The incumbent: the last run kept as a real gain (loop/journal/keeps.py), never a tie."""
    return incumbent(history)


def stagnating(history: list[RunRecord], window: int) -> bool:
    """True when none of the last `window` full-fidelity runs was kept as a real gain (rows from
    before verdicts existed: none beat the best from before them)."""
    fulls = [r for r in history if r.full]
    if len(fulls) <= window:
        return False
    recent = fulls[-window:]
    if any(r.verdict for r in recent):
        return not any(r.verdict in KEEPS for r in recent)
    before = [r.score for r in fulls[:-window] if r.ok]
    scores = [r.score for r in recent if r.ok]
    return bool(before) and (not scores or max(scores) <= max(before))


def needs_replica(history: list[RunRecord], best: RunRecord) -> bool:
    """A seed replica of the incumbent, once, a few runs after it was kept: the seed spread is half
    of the noise band and only replicas measure it."""
    if any(r is not best and r.full and r.config and recipe_key(r.config) == recipe_key(best.config)
           for r in history):
        return False
    return len(history) - 1 - history.index(best) >= REPLICA_AFTER_RUNS


def replica_overlay(best: RunRecord, history: list[RunRecord]) -> dict:
    config = copy.deepcopy(best.config)
    run = config.setdefault("run", {})
    for key in ("label", "resume_from", "stop_after_epochs"):
        run.pop(key, None)
    run["seed"] = int(run.get("seed", 42)) + 1 + len(history)
    return config


def restricted_space(hint: dict[str, list], full: dict[str, tuple[str, list]] | None = None
                     ) -> dict[str, tuple[str, list]]:
    """The space (`full`, else the embedded one) narrowed by PHASE recommendations (a parameter ->
    preferred choices)."""
    space = {}
    for dim, (param, choices) in (full or SPACE).items():
        keep = [c for c in choices if c in hint.get(param, choices)]
        space[dim] = (param, keep or choices)
    return space


def builder_decision(inp: PolicyInput, seed: int = 0) -> Decision:
    """Successive halving on the fidelity ladder (loop/agents/ladder.py): the embedded config as a
    full baseline, then cheap screens (mutations of the incumbent, TPE points on stagnation); a
    screen in the top third is continued to full; the incumbent gets one seed replica. Every
    proposal is priced with the cost model and fitted under the walltime cap."""
    history = inp.history
    space = restricted_space(inp.search_space_hint, space_for(inp.profile))
    best = best_run(history)
    n = len(history)
    ready = promotable(history, set(inp.continuing))
    fidelity, cont, overlay = "screen", "", None
    if best is None and not screens(history) and not inp.in_flight:
        mode, dim, params, fidelity = "baseline", "evaluation", {}, "full"
    elif ready:
        mode, dim, cont, fidelity = "continue", ready[0].dimension or "evaluation", ready[0].label, "full"
        params = params_of(ready[0].config)
    elif best is not None and needs_replica(history, best):
        mode, dim, fidelity = "replica", "evaluation", "full"
        params, overlay = params_of(best.config), replica_overlay(best, history)
    elif best is None or stagnating(history, inp.stagnation_runs):
        mode, dim = "explore", "model_arch"
        params = suggest(history, seed + n + inp.in_flight, space)
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
    if overlay is None and not cont:
        params, fidelity, priced = fit_to_cap(params, fidelity, inp, space)
        overlay = overlay_of(params, inp.profile)
    else:
        priced = price_text(inp, overlay or (ready[0].config if cont else {}), fidelity, cont)
    label = f"{mode}-{dim}-c{inp.cycle}"
    rationale = rationale_text(mode, dim, best, inp, ready) + (f" {priced}" if priced else "")
    notes = (f"Best so far: {best.label} at {best.score:.4f} after {n} run(s)." if best
             else "Starting: no runs yet; baseline first.")
    todos = [f"Compare {dim} variants once three runs of that dimension exist"] if mode == "explore" else []
    resolve = [t.split(":")[0] for t in inp.open_todos if dim.replace("_", " ") in t.lower()
               or dim in t.lower()][:1]
    return Decision(action="train", rationale=rationale, run_label=label, train_overlay=overlay or {},
                    strategy_dimension=dim, fidelity=fidelity, continue_run=cont, todo_new=todos,
                    notes_update=notes, data_exploration_update="" if history else task_text(inp.profile),
                    resolve_shared_todo_ids=resolve)


def rationale_text(mode: str, dim: str, best: RunRecord | None, inp: PolicyInput, ready: list[RunRecord]) -> str:
    ref = f"{best.label}, {best.score:.4f}" if best else "-"
    return {
        "baseline": "No finished run yet: train the embedded configuration in full as a baseline to measure "
                    "against.",
        "continue": (f"Screen {ready[0].label} scored {ready[0].score:.4f}, in the top third of the screens: "
                     "continue it from its checkpoint to full fidelity (successive halving).") if ready else "",
        "replica": f"The best ({ref}) has no seed replica yet: re-run its recipe with another seed to measure "
                   "the seed spread, half of the noise band a new best must clear.",
        "explore": (f"No real gain over the best ({ref}) in the last {inp.stagnation_runs} full runs: screen a "
                    "fresh configuration across every dimension instead of small mutations.") if best else
                   ("A run is still training and nothing is measured yet: screen a different configuration "
                    "across every dimension beside it rather than repeat it."),
        "mutate": f"Keep the best configuration ({ref}) and change only the least-explored dimension, {dim}, "
                  "screened cheaply first to measure its effect in isolation.",
    }[mode]


def fit_to_cap(params: dict, fidelity: str, inp: PolicyInput, space: dict) -> tuple[dict, str, str]:
    """The proposal brought under the walltime cap with the cost model: fewer epochs first, then a
    screen instead of a full run, then a smaller image size. Returns it with a pricing sentence."""
    cap = inp.walltime_cap_seconds
    model = cost_model(inp.history)
    if not cap or not inp.base_config:
        return params, fidelity, ""

    def seconds(p: dict, fid: str) -> float | None:
        config = deep_merge(inp.base_config, overlay_of(p, inp.profile))
        epochs = planned_epochs(config)
        return model.run_seconds(config, screen_epochs(epochs) if fid == "screen" else epochs)

    limit = SAFETY * cap
    tries = [(params, fidelity)]
    for e in sorted(SPACE["evaluation"][1], reverse=True):
        if e < params.get("epochs", planned_epochs(inp.base_config)):
            tries.append(({**params, "epochs": e}, fidelity))
    tries += [(p, "screen") for p, _ in list(tries) if fidelity == "full"]
    for size in sorted(space["preprocessing"][1]):
        if size < params.get("image_size", 10 ** 6):
            tries.append(({**tries[-1][0], "image_size": size}, "screen"))
    for p, fid in tries:
        est = seconds(p, fid)
        if est is None:
            return params, fidelity, ""
        if est <= limit:
            note = "" if (p, fid) == (params, fidelity) else " (cut down to fit the walltime cap)"
            return p, fid, f"Predicted {est / 60:.1f} min of the {cap / 60:.0f}-min cap{note}."
    est = seconds(*tries[-1])
    return tries[-1][0], tries[-1][1], (f"Predicted {est / 60:.1f} min, over {SAFETY:.0%} of the {cap / 60:.0f}-min "
                                        "cap even cut down: the cheapest variant is proposed.")


def price_text(inp: PolicyInput, config: dict, fidelity: str, cont: str) -> str:
    cap = inp.walltime_cap_seconds
    if not cap or not config:
        return ""
    epochs = planned_epochs(config)
    todo = epochs - screen_epochs(epochs) if cont else epochs
    est = cost_model(inp.history).run_seconds(config, todo)
    return "" if est is None else f"Predicted {est / 60:.1f} min of the {cap / 60:.0f}-min cap."


def task_text(profile: TaskProfile | None) -> str:
    if profile is None:
        return "Embedded task: 10 digit classes, 8x8 grayscale upsampled; fixed val/recall/delta/drift sets."
    return profile.describe()


# -------------------------------------------------------------- Mentor ----

def mentor_review(inp: PolicyInput, decision: Decision, seed: int = 0) -> Review:
    history = inp.history
    best = best_run(history)
    if best is None or not stagnating(history, max(2, inp.stagnation_runs - 1)):
        return Review(verdict="on_track", notes=f"Progress is steady; best {best.score:.4f}." if best else
                      "Baseline pending; nothing to challenge yet.")
    current = params_of(best.config).get("model")
    options = [m for m in space_for(inp.profile)["model_arch"][1] if m != current]
    alternative = options[(seed + len(history)) % len(options)]
    params = {**params_of(best.config), "model": alternative}
    challenge = Decision(action="train", run_label=f"mentor-arch-{alternative}-c{inp.cycle}",
                         rationale=f"Runs have stalled at {best.score:.4f} with {current}; try the {alternative} "
                                   "architecture on the best recipe before more hyper-parameter tweaks.",
                         train_overlay=overlay_of(params, inp.profile), strategy_dimension="model_arch",
                         fidelity="screen")
    return Review(verdict="off_track", critical_question=f"What evidence says {current} is not the bottleneck?",
                  challenge=challenge, todo_new=[f"Evaluate {alternative} against {current} on the best recipe"],
                  notes="Stagnation: challenge with a concrete architecture change.")
