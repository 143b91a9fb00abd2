"""The JSON contracts between the loop and its two agents (DESIGN.md "Contracts").

Decision (Builder, every cycle) and Review (Mentor, on cadence). Unknown extra fields from an LLM
are ignored; wrong types and values are validation errors (the cycle becomes a logged `wait`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loop.agents.overlay import overlay_problems

Action = Literal["train", "run_command", "wait", "research", "finish"]
StrategyDimension = Literal["augmentation", "preprocessing", "data_sampling", "loss", "model_arch",
                            "optimization", "evaluation"]
STRATEGY_DIMENSIONS: tuple[str, ...] = StrategyDimension.__args__  # type: ignore[attr-defined]


class Decision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: Action
    rationale: str = ""
    run_label: str = ""
    train_overlay: dict[str, Any] = Field(default_factory=dict)   # for `train`: trainer config overlay
    command: str = ""                                             # for `run_command`
    monitor_seconds: int | None = Field(None, ge=0)
    strategy_dimension: StrategyDimension | None = None
    # ---- fidelity (loop/agents/ladder.py): a cheap screen, a full run, or a screen continued ----
    fidelity: Literal["screen", "full"] = "full"
    continue_run: str = ""          # the label of a screen to resume from its checkpoint to full
    replica_of: str = ""            # the label of a run whose recipe this re-runs with another seed
    # ---- housekeeping ----
    todo_new: list[str] = Field(default_factory=list, max_length=2)
    notes_update: str = ""
    data_exploration_update: str = ""
    resolve_shared_todo_ids: list[str] = Field(default_factory=list)

    @field_validator("todo_new", "resolve_shared_todo_ids", mode="before")
    @classmethod
    def _strings(cls, v):
        return [str(x) for x in v] if isinstance(v, list) else v

    @field_validator("train_overlay")
    @classmethod
    def _overlay_shape(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Only what a decision may set (loop/agents/overlay.py), whatever the endpoint enforced;
        every trainer config section a mapping, the budget caps numbers (the daemon merges them with
        its own before the trainer's validation could say so)."""
        for section, value in v.items():
            if not isinstance(value, dict):
                raise ValueError(f"section {section!r} must be an object")
        problems = overlay_problems(v)
        if problems:
            raise ValueError("; ".join(problems[:3]))
        for key, cap in v.get("budget", {}).items():
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))):
                raise ValueError(f"budget.{key} must be a number or null")
        if not _all_finite(v):
            raise ValueError("NaN and infinity are not values")
        return v


class Review(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["on_track", "off_track"]
    critical_question: str = ""
    challenge: Decision | None = None        # a concrete replacement decision, when challenging
    todo_new: list[str] = Field(default_factory=list, max_length=1)
    notes: str = ""
    web_search_used: bool = False


def _all_finite(data: Any) -> bool:
    """No NaN or infinity anywhere in nested dicts and lists (walked without recursion)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def wait_decision(reason: str) -> Decision:
    """What a cycle does when it cannot get a valid decision."""
    return Decision(action="wait", rationale=reason, run_label="wait")


_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)


def extract_json(text: str) -> Any:
    """The first JSON object in `text` (bare, or in a ```json fence); ValueError if none. Raw control
    characters inside strings are accepted (strict=False): llama.cpp's schema grammars let a model
    write a bare newline in a rationale, and refusing that would cost a repair request for nothing."""
    text = text.strip()
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        pass
    match = _FENCE.search(text)
    if match:
        return json.loads(match.group(1), strict=False)
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        return json.loads(text[start:end + 1], strict=False)
    raise ValueError("no JSON object in the reply")


def parse_model(model: type[BaseModel], text: str) -> BaseModel:
    """Parse and validate an LLM reply; raises ValueError with a short reason."""
    try:
        data = extract_json(text)
        json.dumps(data, ensure_ascii=False).encode("utf-8")   # an unpaired surrogate fails here, not in a log write
    except RecursionError:
        raise ValueError("reply JSON is nested too deeply") from None
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"reply is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("reply JSON is not an object")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise ValueError(f"reply is nested too deeply for the {model.__name__} schema") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"reply does not match the {model.__name__} schema: "
                         f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def json_schema(model: type[BaseModel]) -> dict:
    """The schema sent to the endpoint (and into the prompt): pydantic's, with `train_overlay` narrowed
    to the trainer sections and keys a decision may set, and without titles. Constrained decoding
    (llama.cpp turns this into a grammar) then cannot write anything outside it: seen with a 270M
    model, a free-form `train_overlay` object came back as a copy of its own schema fragment
    ({"additionalProperties": true, "title": ...}). The model still validates the full contract."""
    schema = _without_titles(model.model_json_schema())
    for definition in [schema, *schema.get("$defs", {}).values()]:
        if "train_overlay" in definition.get("properties", {}):
            definition["properties"]["train_overlay"] = TRAIN_OVERLAY_SCHEMA
    return schema


def _without_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_titles(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_without_titles(v) for v in node]
    return node


def _section(**keys: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": keys}


_NUMBER, _INTEGER, _STRING = {"type": "number"}, {"type": "integer"}, {"type": "string"}
# What a decision's overlay may set (a subset of loop.trainer.config; the full overlay is still
# validated against the trainer config before anything runs).
TRAIN_OVERLAY_SCHEMA = _section(
    model=_section(name=_STRING, drop_rate=_NUMBER),
    optim=_section(name={"enum": ["sgd", "adamw"]}, lr=_NUMBER, momentum=_NUMBER, weight_decay=_NUMBER),
    schedule=_section(name={"enum": ["cosine", "onecycle", "constant"]}, warmup_epochs=_NUMBER),
    data=_section(image_size=_INTEGER, batch_size=_INTEGER, train_fraction=_NUMBER,
                  sampling=_section(strategy={"enum": ["uniform", "class_balanced", "hard_example_weighted",
                                                       "recent_weighted"]})),
    loss=_section(label_smoothing=_NUMBER),
    run=_section(epochs=_INTEGER, seed=_INTEGER),
)
