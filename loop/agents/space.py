"""The search space the offline policy (and the Builder's context) works in: one parameter per
strategy dimension, adapted to the task (`TaskProfile`, from the data report), and the mapping
between a trainer config and its point in the space; TPE suggestions over past runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from loop.agents.schema import STRATEGY_DIMENSIONS
from loop.journal.history import RunRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)

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
    """The task's search space as the Builder's context shows it, PHASE's narrowing applied, with
    the evidence behind each dropped value and the cycle the narrowing lasts to."""
    full = space_for(profile)
    space = restricted_space(hint or {}, full)
    lines = [f"- {dim} -> {param}: {', '.join(str(c) for c in choices)}" for dim, (param, choices) in space.items()]
    head = ("Search space for this task (image sizes around the native size"
            + (", RGB augmentations" if profile and profile.channels == 3 else "")
            + (", the pretrained backbone" if profile and profile.has_weights else "") + "):"
            if profile else "Search space (the embedded digits task):")
    for dim, (param, choices) in full.items():
        for e in (hint or {}).get(param, []):
            if not (isinstance(e, dict) and e.get("value") in choices):
                continue
            try:
                why = (f"{e['model']} (CI {e['ci'][0]:.4f}-{e['ci'][1]:.4f}) is flagged below {e['against']} with "
                       f"{param} {e['against_value']} (CI {e['against_ci'][0]:.4f}-{e['against_ci'][1]:.4f}) "
                       f"in {e['domain']}" + (f"; they also differ in {', '.join(e['confounded_with'])}"
                                                 if e.get("confounded_with") else ""))
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            until = f", until cycle {e['expires_after_cycle']}" if e.get("expires_after_cycle") is not None else ""
            kept = e["value"] in space[dim][1]
            lines.append(f"- PHASE {'would drop' if kept else 'dropped'} {param} {e['value']}{until}: {why}"
                         + (" (kept: a dimension keeps at least two choices)" if kept else ""))
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


def restricted_space(hint: dict[str, list], full: dict[str, tuple[str, list]] | None = None,
                     min_choices: int = 2) -> dict[str, tuple[str, list]]:
    """The space (`full`, else the embedded one) less the values PHASE measured below another value of
    the same parameter (`hint`: a parameter -> evidence records, each with the `value` to drop and the
    intervals `ci` and `against_ci`). Every dimension keeps at least `min_choices` choices. Anything
    else in `hint` (the lists of values to keep that older PHASE results held) narrows nothing."""
    def margin(e: dict) -> float:               # how far below the best the flagged interval lies
        try:
            return float(e["against_ci"][0]) - float(e["ci"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return 0.0

    space = {}
    for dim, (param, choices) in (full or SPACE).items():
        entries = hint.get(param)
        evidence = [e for e in entries if isinstance(e, dict) and "value" in e] if isinstance(entries, list) else []
        dropped = [c for c in choices if any(e["value"] == c for e in evidence)]
        keep = [c for c in choices if c not in dropped]
        # one PHASE never fixes a dimension: the dropped values with the weakest evidence come back
        for c in sorted(dropped, key=lambda c: min(margin(e) for e in evidence if e["value"] == c)):
            if len(keep) >= min_choices:
                break
            keep.append(c)
        space[dim] = (param, [c for c in choices if c in keep])
    return space
