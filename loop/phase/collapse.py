"""The collapse: one domain's ModelResults become its fitness (the best model's mean), human
insights, promoted variants (CI overlaps the best's) and flagged variants (CI entirely below the
best's); a value only flagged models were trained with, where their domain's best was trained
with another, becomes a search-space recommendation to drop it, with its evidence."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loop.agents.space import SPACE, params_of
from loop.phase.results import DomainMetrics, DroppedValue, ModelResult

GAP_POINTS = 2.0            # a recall/delta gap this large (accuracy points) becomes an insight


def points(a: float, b: float) -> str:
    return f"{abs(a - b) * 100:.1f} points"


def who(name: str, result: ModelResult) -> str:
    return f"GEN_HEAD ({name})" if result.is_head else name


def collapse_domain(label: str, models: dict[str, ModelResult], confidence: float
                    ) -> tuple[DomainMetrics, list[str], list[str]]:
    """Fitness, insights, promoted (tied with the best, best first) and flagged (CI below the best's)."""
    best_name = max(models, key=lambda k: (models[k].accuracy_mean, models[k].is_head, k))   # ties: HEAD
    best = models[best_name]
    ranked = [best_name] + sorted((k for k in models if k != best_name), key=lambda k: (-models[k].accuracy_mean, k))
    promoted = [k for k in ranked if models[k].ci_high >= best.ci_low]
    flagged = [k for k in ranked if models[k].ci_high < best.ci_low]
    insights = [f"{label}: fitness {best.accuracy_mean:.4f} from {who(best_name, best)} "
                f"({confidence:.0%} CI {best.ci_low:.4f}-{best.ci_high:.4f}, n={best.n})"]
    for name in ranked:
        if name == best_name:
            continue
        m = models[name]
        gap = points(best.accuracy_mean, m.accuracy_mean)
        if name in flagged:
            insights.append(f"{who(best_name, best)} beats {who(name, m)} by {gap} and the intervals do not "
                            f"overlap: {name} is flagged as underperforming")
        else:
            insights.append(f"{who(best_name, best)} beats {who(name, m)} by {gap} but the intervals overlap "
                            "(statistically tied)")
    if best.is_head and len(models) > 1:
        insights.append(f"GEN_HEAD ({best_name}) is the best model in {label}")
    for name in ranked:
        m = models[name]
        if abs(m.recall - m.generalize) * 100 >= GAP_POINTS:
            side = "below" if m.recall < m.generalize else "above"
            insights.append(f"{who(name, m)}'s recall accuracy is {points(m.recall, m.generalize)} {side} "
                            "its delta accuracy" + (" (forgetting older data)" if side == "below" else
                                                    " (the newest data is harder)"))
    return DomainMetrics(fitness=best.accuracy_mean, insights=insights, models=models), promoted, flagged


def recommendations(metrics: dict[str, DomainMetrics], promoted: list[str], flagged: list[str],
                    folders: dict[str, Path]) -> dict[str, list[DroppedValue]]:
    """Per search-space parameter, the values to leave out of the search, each with its evidence. A
    value goes only when every evaluated model trained with it was flagged and its domain's best was
    trained with another value of that parameter; a parameter with one evaluated value gets nothing.
    A flagged model that differs from the best in several parameters counts against each of them: that
    evidence is confounded, says so (`confounded_with`), and expires like the rest."""
    params = {name: params_at(folder) for name, folder in folders.items()}
    home = {name: label for label, d in metrics.items() for name in d.models}
    best = {label: next((n for n in promoted if n in d.models), None) for label, d in metrics.items()}
    out: dict[str, list[DroppedValue]] = {}
    for param, _ in SPACE.values():
        holders: dict[Any, list[str]] = {}          # value -> the evaluated models trained with it
        for name in home:
            if param in params.get(name, {}):
                holders.setdefault(params[name][param], []).append(name)
        for names in holders.values():
            if any(name not in flagged for name in names):
                continue                            # a model not flagged was trained with it
            evidence = [evidence_for(param, name, best[home[name]], metrics[home[name]], params, home[name])
                        for name in names]
            if all(evidence):
                out.setdefault(param, []).append(min(evidence, key=lambda e: e.margin))  # the closest call
    return out


def params_at(folder: Path) -> dict[str, Any]:
    """The search-space parameters a model was trained at ({} when its train_args.json is unreadable)."""
    try:
        return params_of(json.loads((folder / "train_args.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def evidence_for(param: str, name: str, best: str | None, domain: DomainMetrics,
                 params: dict[str, dict[str, Any]], label: str) -> DroppedValue | None:
    """The flagged model `name` against its domain's best, when the best has another known value of `param`."""
    value, other = params[name][param], params.get(best or "", {}).get(param)
    if best is None or other is None or other == value:
        return None
    m, b = domain.models[name], domain.models[best]
    mine, theirs = params[name], params[best]
    confounded = [p for p in mine if p != param and p in theirs and mine[p] != theirs[p]]
    return DroppedValue(value=value, model=name, ci=(m.ci_low, m.ci_high), against=best, against_value=other,
                        against_ci=(b.ci_low, b.ci_high), domain=label, confounded_with=confounded)
