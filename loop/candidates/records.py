"""What the candidate path hands back to the cycle, as the cycle event, state.json and the
Builder's next prompt keep it: a daemon run's hand-off (`Handoff`, intake.py) and an evolution
window (`WindowEntry`, window.py). Torch-free, so status and the reports read them without the
path's modules."""
from __future__ import annotations

from pydantic import BaseModel

from loop.journal.events import SparseRecord


class Handoff(SparseRecord):
    """What the hand-off did with one finished run: its archive entry and how it was judged, or why
    it was not handed off (`error`, nothing else set). The cycle's `promotion` field, state.json's
    `last_promotion`, and the Builder's next prompt."""

    name: str | None = None
    status: str | None = None                 # the entry's STATUS.txt: PASS / FAIL - <reason>
    score: float | None = None
    gates: dict[str, bool] | None = None
    failed_gates: list[str] | None = None
    archive_path: str | None = None
    head: str | None = None                   # GEN_HEAD it was judged against
    proposed: bool | None = None
    improvement: float | None = None
    auto_promotion: str | None = None         # approve()'s action when promotion_mode is auto
    error: str | None = None


class RankedCandidate(BaseModel):
    name: str
    status: str                   # PASS / FAIL - <reason>
    score: float


class WindowEntry(SparseRecord):
    """An evolution window as the cycle records it (its `evolution` field): the generation, the
    GEN_HEAD it was judged against, the ranking and the proposed head, or why it failed (`error`)."""

    gen_id: int | None = None
    head: str | None = None
    ranking: list[RankedCandidate] | None = None
    proposal: str | None = None
    error: str | None = None
