"""The collapse: one domain's ModelResults become its fitness (the best model's mean), human
insights, promoted variants (CI overlaps the best's) and flagged variants (CI entirely below the
best's); the promoted variants' training parameters become the search-space recommendations."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loop.agents.space import SPACE, params_of
from loop.phase.results import DomainMetrics, ModelResult

GAP_POINTS = 2.0            # a recall/delta gap this large (accuracy points) becomes an insight


def points(a: float, b: float) -> str:
    return f"{abs(a - b) * 100:.1f} points"


def who(name: str, result: ModelResult) -> str:
    return f"GEN_HEAD ({name})" if result.is_head else name


def judge(label: str, models: dict[str, ModelResult], confidence: float
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


def recommendations(folders: list[Path]) -> dict[str, list[Any]]:
    """Per search-space parameter, the values the given models were trained with (first seen first)."""
    out: dict[str, list[Any]] = {param: [] for param, _ in SPACE.values()}
    for folder in folders:
        try:
            config = json.loads((folder / "train_args.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for param, value in params_of(config).items():
            if value not in out[param]:
                out[param].append(value)
    return {param: values for param, values in out.items() if values}
