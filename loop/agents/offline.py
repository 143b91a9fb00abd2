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

Task-aware (the space: loop/agents/space.py): given a `TaskProfile` (from the data report), the
image sizes tried sit around the
data's native size, RGB tasks get a flip/colour augmentation preset, and when the base config names
pretrained weights that exist, the pretrained backbone is one of the architectures. Without one
the space is the embedded digits task's.
"""
from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field

from loop.agents.cost import SAFETY, cost_model
from loop.agents.ladder import planned_epochs, promotable, screen_epochs, screens
from loop.agents.overlay import allowed_part
from loop.agents.schema import Decision, Review
from loop.agents.space import SPACE, TaskProfile, overlay_of, params_of, restricted_space, space_for, suggest
from loop.config import deep_merge
from loop.journal.fingerprint import Trained, repeat_reason
from loop.journal.history import RunRecord
from loop.trainer.config import resolved
from loop.verdict.keeps import incumbent, recipe_key, seed_sd
from loop.verdict.noise import KEEPS

REPLICA_AFTER_RUNS = 3          # runs after a new best before its seed replica (the first best: at once)
UNTRIED_TRIES = 60              # candidate points looked at for one that was never trained
log = logging.getLogger(__name__)


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
    trained: list[Trained] = field(default_factory=list)   # every run trained or in flight (the repeat rule)
    refused: frozenset[str] = frozenset()             # fingerprints a blocked failure holds back

    def repeats(self, overlay: dict, replica: bool = False) -> str | None:
        """Why `overlay` on the base config would repeat a run (None: it trains something new)."""
        try:
            config = resolved(deep_merge(self.base_config, overlay))
        except ValueError:
            return None                  # the gate names what is wrong with it
        return repeat_reason(config, self.trained, replica, self.refused)


# ------------------------------------------------------------- Builder ----

def best_run(history: list[RunRecord]) -> RunRecord | None:
    """The incumbent: the last run kept as a real gain (loop/verdict/keeps.py), never a tie."""
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
    """A seed replica of the incumbent, once: the seed spread is half of the noise band and only
    replicas measure it. The first best gets its replica at once, so a spread is measured before
    any gain is judged; later ones a few runs after they were kept."""
    if any(r is not best and r.full and r.config and recipe_key(r.config) == recipe_key(best.config)
           for r in history):
        return False
    wait = REPLICA_AFTER_RUNS if seed_sd(history) is not None else 0
    return len(history) - 1 - history.index(best) >= wait


def replica_overlay(best: RunRecord, history: list[RunRecord]) -> dict:
    """The best run's recipe (what a decision may set of it) with another seed."""
    config = allowed_part(copy.deepcopy(best.config))
    run = config.setdefault("run", {})
    run.pop("stop_after_epochs", None)
    run["seed"] = int(best.config.get("run", {}).get("seed", 42)) + 1 + len(history)
    return config


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
    repeat = ""
    if overlay is None and not cont:
        found = untried(inp, space, [(mode, dim, params, fidelity)], seed)
        if found is None:
            return nothing_new(inp)
        (found_mode, dim, params, fidelity, overlay, priced) = found
        if found_mode != mode:
            repeat = f" (the {mode} proposal would repeat a trained configuration: {found_mode} instead)"
            mode = found_mode
    else:
        priced = price_text(inp, overlay or (ready[0].config if cont else {}), fidelity, cont)
    label = f"{mode}-{dim}-c{inp.cycle}"
    rationale = rationale_text(mode, dim, best, inp, ready) + repeat + (f" {priced}" if priced else "")
    notes = (f"Best so far: {best.label} at {best.score:.4f} after {n} run(s)." if best
             else "Starting: no runs yet; baseline first.")
    todos = [f"Compare {dim} variants once three runs of that dimension exist"] if mode == "explore" else []
    resolve = [t.split(":")[0] for t in inp.open_todos if dim.replace("_", " ") in t.lower()
               or dim in t.lower()][:1]
    return Decision(action="train", rationale=rationale, run_label=label, train_overlay=overlay or {},
                    strategy_dimension=dim, fidelity=fidelity, continue_run=cont, todo_new=todos,
                    replica_of=best.label if mode == "replica" and best else "",
                    notes_update=notes, data_exploration_update="" if history else task_text(inp.profile),
                    resolve_shared_todo_ids=resolve)


def untried(inp: PolicyInput, space: dict, first: list[tuple[str, str, dict, str]], seed: int
            ) -> tuple[str, str, dict, str, dict, str] | None:
    """The first proposal, fitted under the walltime cap, that trains something never trained:
    `first`, then each single change of the best configuration (least-tried dimension first), then
    TPE points and seeded random points of the whole space. None when all of them repeat."""
    def candidates():
        yield from first
        best = best_run(inp.history)
        if best is not None:
            base = params_of(best.config)
            for dim in sorted(space, key=lambda d: sum(1 for r in inp.history if r.dimension == d)):
                param, choices = space[dim]
                for choice in choices:
                    if base.get(param) != choice:
                        yield "mutate", dim, {**base, param: choice}, "screen"
        for k in range(UNTRIED_TRIES // 3):
            point = suggest(inp.history, seed + len(inp.history) + 7919 * (k + 1), space)
            yield "explore", "model_arch", point, "screen"
        rng = random.Random(seed + len(inp.history))
        for _ in range(UNTRIED_TRIES):
            yield "explore", "model_arch", {param: rng.choice(choices) for param, choices in space.values()}, "screen"

    for mode, dim, params, fidelity in candidates():
        fitted, fid, priced = fit_to_cap(params, fidelity, inp, space)
        overlay = overlay_of(fitted, inp.profile)
        if inp.repeats(overlay) is None:
            return mode, dim, fitted, fid, overlay, priced
    return None


def nothing_new(inp: PolicyInput) -> Decision:
    return Decision(action="wait", run_label=f"nothing-new-c{inp.cycle}",
                    rationale=f"Every configuration the offline policy looked at ({UNTRIED_TRIES}+ points of the "
                              "search space) was trained already or is held back while blocked: wait rather than "
                              "repeat one.", notes_update="The offline policy found no untried configuration.")


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

FAILING_RUNS = 2                 # this many failed runs in a row and the Mentor never says on_track


def failing(history: list[RunRecord], runs: int = FAILING_RUNS) -> list[RunRecord]:
    """The last `runs` runs when every one of them failed, else []."""
    tail = history[-runs:]
    return tail if len(tail) == runs and not any(r.ok for r in tail) else []


def failure_review(failed: list[RunRecord]) -> Review:
    """off_track while the runs fail: the question names the failure, whoever's fault it is."""
    sig = failed[-1].failure or {}
    what = f"{sig.get('exc_type', 'a failure')}: {sig.get('message', '')}".strip(": ")
    infra = sig.get("category") == "infrastructure"
    return Review(verdict="off_track",
                  critical_question=f"The last {len(failed)} runs failed ({what}); "
                                    + ("what in the machine or sandbox must change before more runs are worth it?"
                                       if infra else "which setting causes it, and what configuration avoids it?"),
                  notes=f"Failing: {', '.join(r.label for r in failed)}; signature {sig.get('key', '?')} "
                        f"({sig.get('category', 'unknown')}). Not on track until a run succeeds.")


def mentor_review(inp: PolicyInput, decision: Decision, seed: int = 0) -> Review:
    history = inp.history
    failed = failing(history)
    if failed:
        return failure_review(failed)
    best = best_run(history)
    if best is None or not stagnating(history, max(2, inp.stagnation_runs - 1)):
        return Review(verdict="on_track", notes=f"Progress is steady; best {best.score:.4f}." if best else
                      "Baseline pending; nothing to challenge yet.")
    current = params_of(best.config).get("model")
    options = [m for m in space_for(inp.profile)["model_arch"][1] if m != current]
    start = (seed + len(history)) % len(options)
    untried_options = [m for m in options[start:] + options[:start]
                       if inp.repeats(overlay_of({**params_of(best.config), "model": m}, inp.profile)) is None]
    if not untried_options:        # every architecture was tried on this recipe: a question, no challenge
        return Review(verdict="off_track", critical_question=f"Every architecture was tried on the best recipe "
                      f"({best.score:.4f}); which other dimension has room left?",
                      notes="Stagnation, with no untried architecture to challenge with.")
    alternative = untried_options[0]
    params = {**params_of(best.config), "model": alternative}
    challenge = Decision(action="train", run_label=f"mentor-arch-{alternative}-c{inp.cycle}",
                         rationale=f"Runs have stalled at {best.score:.4f} with {current}; try the {alternative} "
                                   "architecture on the best recipe before more hyper-parameter tweaks.",
                         train_overlay=overlay_of(params, inp.profile), strategy_dimension="model_arch",
                         fidelity="screen")
    return Review(verdict="off_track", critical_question=f"What evidence says {current} is not the bottleneck?",
                  challenge=challenge, todo_new=[f"Evaluate {alternative} against {current} on the best recipe"],
                  notes="Stagnation: challenge with a concrete architecture change.")
