"""One run as a tracker sees it (`TrackedRun`), and the two text rules every value obeys on its
way out: configs flattened to dotted keys, credentials stripped from anything URL-shaped."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from loop.journal.metrics import EpochRecord
from loop.util.secrets import redact

MAX_VALUE_CHARS = 6000          # MLflow's limit for a param value; tags allow more, params set the bar
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\- /]")


class TrackedRun(BaseModel):
    """A training run or an archived candidate, ready for any tracker; built from workspace files."""

    # ---- identity ----
    key: str                                    # run:<trace>:<label> | candidate:<entry name>
    kind: Literal["training", "candidate"]
    name: str                                   # the run's label or the archive entry's name
    trace: str = ""                             # cycle_trace_id
    cycle: int | None = None
    # ---- what ran ----
    params: dict[str, str] = Field(default_factory=dict)     # the resolved trainer config, dotted keys
    curve: list[EpochRecord] = Field(default_factory=list)   # per epoch: step = epoch
    summary: dict[str, float] = Field(default_factory=dict)  # end-of-run figures, logged at the last step
    ok: bool = False
    # ---- what the loop made of it ----
    tags: dict[str, str] = Field(default_factory=dict)       # llmloop.* (trace id, gates, promotion state)
    entry: str | None = None                    # its archive entry, when it was archived
    artifacts: list[Path] = Field(default_factory=list)      # the entry's EVAL.md and model card
    # ---- when ----
    start_ms: int | None = None
    end_ms: int | None = None


def public(text: Any, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` fit to leave the machine: no user:password@ in URLs, no known secret, no key-shaped token."""
    return redact(_USERINFO.sub(r"\1***@", str(text)), secrets)


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """{"data": {"image_size": 16}} -> {"data.image_size": "16"}; lists as JSON; values capped."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{_KEY_CHARS.sub('_', str(key))}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_VALUE_CHARS]
    return out
