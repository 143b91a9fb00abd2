"""The 11-state candidate lifecycle (extended_lifecycle.md), read for a model candidate:

  DORMANT        spec written, nothing started          GERMINATED  queued for training
  TRAINING       trained, probed, gated (waits here for a proposal decision)
  GRAFTING       approved: shadow evaluation + alpha-ramped blend into GEN_HEAD's outputs
  STABILIZATION  atomic cutover of GEN_HEAD done, settling
  EVALUATING     burn-in evaluation of the new GEN_HEAD
  FINE_TUNING    deployed as GEN_HEAD, burn-in passed, still the one a rollback would undo
  FOSSILIZED     superseded by a successor: permanent history
  CULLED         failed gates, budget, burn-in, or not selected
  CANCELLED      proposal rejected or window cancelled
  ROLLED_BACK    graft, burn-in or a person reverted it

The store keeps one row per candidate in compact numpy columns (about 40 bytes a candidate):
state, epochs in state, grafting strategy, parent state, checkpoint id, score, error count, and
the last 10 transitions as (from, to) pairs in a ring buffer.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Lifecycle(IntEnum):
    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    GRAFTING = 3
    STABILIZATION = 4
    EVALUATING = 5
    FINE_TUNING = 6
    FOSSILIZED = 7
    CULLED = 8
    CANCELLED = 9
    ROLLED_BACK = 10


S = Lifecycle
VALID_TRANSITIONS: dict[Lifecycle, tuple[Lifecycle, ...]] = {
    S.DORMANT: (S.GERMINATED,),
    S.GERMINATED: (S.TRAINING, S.CANCELLED),
    S.TRAINING: (S.GRAFTING, S.CULLED, S.CANCELLED),
    S.GRAFTING: (S.STABILIZATION, S.ROLLED_BACK),
    S.STABILIZATION: (S.EVALUATING, S.ROLLED_BACK),
    S.EVALUATING: (S.FINE_TUNING, S.CULLED, S.ROLLED_BACK),
    S.FINE_TUNING: (S.FOSSILIZED, S.CULLED, S.ROLLED_BACK),
    S.FOSSILIZED: (), S.CULLED: (), S.CANCELLED: (), S.ROLLED_BACK: (),
}
TERMINAL = frozenset(s for s, nxt in VALID_TRANSITIONS.items() if not nxt)
GRAFT_STRATEGIES = ("linear", "drift_controlled", "momentum", "adaptive")
HISTORY = 10

# A dense lookup table makes the matrix check one array index (batch transitions use it too).
_ALLOWED = np.zeros((len(Lifecycle), len(Lifecycle)), dtype=bool)
for _src, _dsts in VALID_TRANSITIONS.items():
    for _dst in _dsts:
        _ALLOWED[_src, _dst] = True


@dataclass(frozen=True)
class TransitionContext:
    """What the context validators look at. Unset fields fail the validators that need them."""

    trained_ok: bool | None = None          # TRAINING -> GRAFTING: the run finished and its gates passed
    evaluation_passed: bool | None = None   # EVALUATING -> FINE_TUNING / CULLED
    score: float | None = None
    reason: str = ""


def validate_transition(src: Lifecycle, dst: Lifecycle, ctx: TransitionContext) -> tuple[bool, str | None]:
    """(allowed, reason if refused): the matrix first, then the context validators."""
    if not _ALLOWED[src, dst]:
        return False, f"Invalid transition: {src.name} -> {dst.name}"
    if (src, dst) == (S.TRAINING, S.GRAFTING) and not ctx.trained_ok:
        return False, "TRAINING -> GRAFTING needs a finished run that passed its gates"
    if (src, dst) == (S.EVALUATING, S.FINE_TUNING) and ctx.evaluation_passed is not True:
        return False, "EVALUATING -> FINE_TUNING needs a positive evaluation"
    if (src, dst) == (S.EVALUATING, S.CULLED) and ctx.evaluation_passed is not False:
        return False, "EVALUATING -> CULLED needs a negative evaluation"
    return True, None


class TransitionRefused(ValueError):
    pass


class LifecycleStore:
    """Lifecycle rows for many candidates in compact arrays; candidates are looked up by name."""

    COLUMNS = ("state", "epochs_in_state", "strategy", "parent_state", "checkpoint_id", "score",
               "error_count", "history", "history_pos")

    def __init__(self, capacity: int = 64):
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.state = np.zeros(capacity, np.int8)
        self.epochs_in_state = np.zeros(capacity, np.int32)
        self.strategy = np.zeros(capacity, np.int8)
        self.parent_state = np.full(capacity, -1, np.int8)
        self.checkpoint_id = np.full(capacity, -1, np.int32)
        self.score = np.zeros(capacity, np.float32)
        self.error_count = np.zeros(capacity, np.int16)
        self.history = np.full((capacity, HISTORY, 2), -1, np.int8)
        self.history_pos = np.zeros(capacity, np.int8)

    def __len__(self) -> int:
        return len(self.names)

    def _grow(self) -> None:
        old = {c: getattr(self, c) for c in self.COLUMNS}
        self._alloc(max(64, 2 * len(old["state"])))
        n = len(self.names)
        for c, arr in old.items():
            getattr(self, c)[:n] = arr[:n]

    def nbytes_per_candidate(self) -> float:
        return sum(getattr(self, c).nbytes for c in self.COLUMNS) / len(self.state)

    # ---- rows ----
    def add(self, name: str, strategy: str = "linear") -> int:
        if name in self.index:
            raise ValueError(f"candidate {name} is already in the lifecycle store")
        if len(self.names) == len(self.state):
            self._grow()
        row = len(self.names)
        self.names.append(name)
        self.index[name] = row
        self.strategy[row] = GRAFT_STRATEGIES.index(strategy)
        return row

    def add_many(self, names: list[str]) -> np.ndarray:
        return np.array([self.add(n) for n in names], dtype=np.int64)

    def row(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise KeyError(f"candidate {name} is not in the lifecycle store") from None

    def get(self, name: str) -> Lifecycle:
        return Lifecycle(int(self.state[self.row(name)]))

    def info(self, name: str) -> dict:
        r = self.row(name)
        hist = [(Lifecycle(int(a)).name, Lifecycle(int(b)).name) for a, b in self.history[r] if a >= 0]
        pos = int(self.history_pos[r])
        hist = hist[pos:] + hist[:pos] if len(hist) == HISTORY else hist
        return {"name": name, "state": Lifecycle(int(self.state[r])).name,
                "epochs_in_state": int(self.epochs_in_state[r]),
                "strategy": GRAFT_STRATEGIES[int(self.strategy[r])],
                "parent_state": Lifecycle(int(self.parent_state[r])).name if self.parent_state[r] >= 0 else None,
                "checkpoint_id": int(self.checkpoint_id[r]), "score": float(self.score[r]),
                "error_count": int(self.error_count[r]), "history": hist}

    # ---- transitions ----
    def transition(self, name: str, dst: Lifecycle, ctx: TransitionContext = TransitionContext()) -> None:
        """Move one candidate; an invalid move raises TransitionRefused with the reason."""
        r = self.row(name)
        src = Lifecycle(int(self.state[r]))
        ok, reason = validate_transition(src, dst, ctx)
        if not ok:
            self.error_count[r] += 1
            raise TransitionRefused(f"{name}: {reason}")
        self._apply(np.array([r]), np.array([dst], np.int8))
        if ctx.score is not None:
            self.score[r] = ctx.score

    def transition_many(self, rows: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Matrix-checked batch move (no context validators): returns a mask of rows moved."""
        rows = np.asarray(rows, np.int64)
        dst = np.broadcast_to(np.asarray(dst, np.int8), rows.shape)
        ok = _ALLOWED[self.state[rows], dst]
        self.error_count[rows[~ok]] += 1
        self._apply(rows[ok], dst[ok])
        return ok

    def _apply(self, rows: np.ndarray, dst: np.ndarray) -> None:
        pos = self.history_pos[rows].astype(np.int64)
        self.history[rows, pos, 0] = self.state[rows]
        self.history[rows, pos, 1] = dst
        self.history_pos[rows] = (pos + 1) % HISTORY
        self.parent_state[rows] = self.state[rows]
        self.state[rows] = dst
        self.epochs_in_state[rows] = 0

    def tick(self) -> None:
        """One heartbeat cycle passed: every live candidate spent one more epoch in its state."""
        n = len(self.names)
        live = ~np.isin(self.state[:n], list(TERMINAL))
        self.epochs_in_state[:n][live] += 1

    def set_checkpoint(self, name: str, checkpoint_id: int) -> None:
        self.checkpoint_id[self.row(name)] = checkpoint_id

    def in_state(self, state: Lifecycle) -> list[str]:
        n = len(self.names)
        return [self.names[i] for i in np.flatnonzero(self.state[:n] == state)]
