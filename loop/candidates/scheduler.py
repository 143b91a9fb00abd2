"""The cycle clock and the SPAWN step (evolution_scheduler.md steps 1-2). Heartbeat cycles are the
only time unit: a window opens when the cycle is a multiple of `evo_period_cycles`."""
from __future__ import annotations

import time

from pydantic import BaseModel

from loop.errors import ExitCode, LoopError

BASE_SEED = 424242


class EvolutionError(LoopError):
    exit_code = ExitCode.EVOLUTION


class CandidateSpec(BaseModel):
    gen_id: int
    branch_id: str          # a, b, c, ...
    seed: int               # 424242 + branch index
    strategy: str           # sampling strategy
    parent: str = ""        # GEN_HEAD's archive name ("" for the first generation)
    grandparent: str = ""   # GEN_HEAD's parent (the stabilizer)
    timestamp: float


def window_open(heartbeat_cycle: int, evo_period_cycles: int) -> bool:
    """True on cycles that are a positive multiple of the period."""
    if evo_period_cycles <= 0:
        raise EvolutionError(f"evo_period_cycles must be positive, got {evo_period_cycles}")
    return heartbeat_cycle > 0 and heartbeat_cycle % evo_period_cycles == 0


def spawn_candidates(gen_id: int, count: int, max_concurrent: int, strategies: list[str],
                     parent: str = "", grandparent: str = "") -> list[CandidateSpec]:
    """1..max_concurrent candidates with distinct seeds and sampling strategies (rotating through
    `strategies`); asking for more than the hard cap is an error."""
    if count < 1:
        raise EvolutionError(f"a window needs at least one candidate, asked for {count}")
    if count > max_concurrent:
        raise EvolutionError(f"asked for {count} candidates; max_concurrent_experiments is {max_concurrent}")
    now = time.time()
    specs = [CandidateSpec(gen_id=gen_id, branch_id=chr(ord("a") + i), seed=BASE_SEED + i,
                           strategy=strategies[i % len(strategies)], parent=parent, grandparent=grandparent,
                           timestamp=now) for i in range(count)]
    pairs = {(s.seed, s.strategy) for s in specs}
    if len(pairs) != len(specs) or len({s.seed for s in specs}) != len(specs):
        raise EvolutionError("two candidates share a seed and strategy")
    return specs
