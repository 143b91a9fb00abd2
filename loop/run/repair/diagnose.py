"""Auto-repair, reading the failure: what a failed run's stderr/log says broke.

Three kinds are known: a missing module (`ModuleNotFoundError: No module named 'x.y'`, read as the
top-level module `x`), a model name the trainer refused (`Unsupported model.name: NAME`, exit 3), and
data-loader workers that cannot run where the run is (no semaphore, no shared memory, a worker
killed): the trainer's own setting `data.num_workers` names the fix.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

_MODULE_RE = re.compile(r"ModuleNotFoundError: No module named ['\"]([^'\"]+)['\"]")
_MODEL_RE = re.compile(r"Unsupported model\.name: (\S+)")
_LOADER_RE = re.compile(r"SemLock|unable to open shared memory|unable to write to file </torch_|"
                        r"DataLoader worker \(pid[^)]*\) (?:is killed|exited unexpectedly)|"
                        r"bus error.*shared memory|Too many open files")


class Failure(BaseModel):
    """What a failed run's log says broke."""

    kind: Literal["module", "model", "loader"]
    name: str        # the top-level module ('foo' for 'foo.bar'), the model name, or the setting
    evidence: str    # the log line it was read from


def diagnose(log_text: str) -> Failure | None:
    """The last known failure in `log_text` (a later traceback is the one that killed the run)."""
    found: list[tuple[int, Failure]] = []
    for m in _MODULE_RE.finditer(log_text):
        found.append((m.start(), Failure(kind="module", name=m.group(1).split(".")[0],
                                         evidence=_line_at(log_text, m.start()))))
    for m in _MODEL_RE.finditer(log_text):
        name = m.group(1).rstrip("'\".,;)")
        if name:
            found.append((m.start(), Failure(kind="model", name=name, evidence=_line_at(log_text, m.start()))))
    for m in _LOADER_RE.finditer(log_text):
        found.append((m.start(), Failure(kind="loader", name="data.num_workers",
                                         evidence=_line_at(log_text, m.start()))))
    return max(found, key=lambda item: item[0])[1] if found else None


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)].strip()
