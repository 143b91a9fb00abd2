"""Lifecycle store and checkpoint latency/memory against extended_lifecycle.md's targets.

What: a LifecycleStore holding 10,000 candidates.
  transition      one validated `store.transition()` (matrix + context validators + history
                  ring buffer), median over 10,000 calls         target < 0.1 ms
  batch           1,000 candidates moved by one `transition_many()` call, median of 50
  strategy        one grafting strategy's `next_alpha()`, median  target < 0.5 ms
  save            `CheckpointManager.save()` of the 10,000-candidate store, with fsync (atomic
                  write + rotation), median of 30                  target < 10 ms
  restore         `CheckpointManager.restore()` (read, checksum, decode), median of 30
                                                                   target < 20 ms
  memory          bytes per candidate of the numpy columns          target < 150 B
                  (the name index, a Python list + dict of strings, is reported separately)
Each timing is reported with the machine's own reference: the time of a bare Python dict
assignment loop of the same count, so the ratio reads the same on a slower machine.

Run from the repo root: .venv/bin/python bench/lifecycle.py
Smoke size (tests/test_bench_smoke.py): add --smoke; the full size already takes seconds, so the
smoke only leaves RESULTS.md alone.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_facts, write_section  # noqa: E402

from loop.archive.checkpoints import CheckpointManager  # noqa: E402
from loop.archive.grafting import STRATEGIES  # noqa: E402
from loop.archive.lifecycle import Lifecycle, LifecycleStore, TransitionContext  # noqa: E402

N = 10_000
S = Lifecycle


def ms(seconds: float) -> float:
    return seconds * 1000.0


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    facts = machine_facts()
    store = LifecycleStore()
    rows = store.add_many([f"llmloop-G{i // 3:03d}-{'abc'[i % 3]}-20261121-000000" for i in range(N)])

    # ---- single transitions: DORMANT -> GERMINATED -> TRAINING for every candidate ----
    ctx = TransitionContext(trained_ok=True)
    singles = []
    for name in store.names:
        for dst in (S.GERMINATED, S.TRAINING):
            t0 = time.perf_counter()
            store.transition(name, dst, ctx)
            singles.append(time.perf_counter() - t0)
    transition_ms = ms(statistics.median(singles))
    p99_ms = ms(sorted(singles)[int(0.99 * len(singles))])

    # ---- batch: 1,000 candidates, TRAINING <-> back via matrix-valid pairs ----
    batch_rows = rows[:1000]

    def batch_move():
        store.state[batch_rows] = S.TRAINING
        moved = store.transition_many(batch_rows, S.CULLED)
        assert moved.all()

    batch_ms = ms(timeit(batch_move, 50))

    # ---- grafting strategy computation ----
    strategy_ms = {}
    for name, cls in STRATEGIES.items():
        impl = cls(10)
        strategy_ms[name] = ms(timeit(lambda: impl.next_alpha(3, 0.3, {"performance_delta": 0.01,
                                                                       "drift_jump": 0.0}), 2000))

    # ---- checkpoints ----
    with tempfile.TemporaryDirectory() as tmp:
        manager = CheckpointManager(Path(tmp))
        save_ms = ms(timeit(lambda: manager.save(store), 30))
        restore_ms = ms(timeit(manager.restore, 30))
        restored = manager.restore().store
        assert restored.names == store.names and (restored.state[:N] == store.state[:N]).all()
        size = max(p.stat().st_size for p in Path(tmp).iterdir())

    # ---- memory ----
    per_candidate = store.nbytes_per_candidate()
    names_bytes = (sum(sys.getsizeof(n) for n in store.names) + sys.getsizeof(store.names)
                   + sys.getsizeof(store.index)) / N

    # ---- reference on this machine: a bare dict-assignment loop of N ----
    ref = {}

    def dict_loop():
        for i in range(N):
            ref[i] = i

    ref_us = ms(timeit(dict_loop, 20)) * 1000 / N

    def verdict(value, target):
        return "meets" if value < target else "MISSES"

    transition_median = f"{transition_ms:.4f} ms (p99 {p99_ms:.4f} ms)"
    transition_x = transition_ms * 1000 / ref_us
    slowest_ms = max(strategy_ms.values())
    body = f"""
Store of {N:,} candidates. Reference on this machine: one bare dict assignment in a Python loop
takes {ref_us:.3f} us (ratios below are against it).

| measure | median | target | verdict | x dict assignment |
|---|---|---|---|---|
| one validated transition | {transition_median} | < 0.1 ms | {verdict(transition_ms, 0.1)} | {transition_x:.0f} |
| 1,000 transitions, one `transition_many` call | {batch_ms:.3f} ms | one call | done | {batch_ms * 1000 / ref_us:.0f} |
| grafting strategy `next_alpha` (slowest of 4) | {slowest_ms:.4f} ms | < 0.5 ms | {verdict(slowest_ms, 0.5)} | - |
| checkpoint save, 10,000 candidates, fsync | {save_ms:.2f} ms | < 10 ms | {verdict(save_ms, 10)} | - |
| checkpoint restore, 10,000 candidates | {restore_ms:.2f} ms | < 20 ms | {verdict(restore_ms, 20)} | - |
| memory per candidate (numpy columns) | {per_candidate:.1f} B | < 150 B | {verdict(per_candidate, 150)} | - |

- Checkpoint file: {size / 1024:.0f} KiB for {N:,} candidates; save throughput about
  {1000 / save_ms:.0f} checkpoints/s (target 100/s).
- The name index (a Python list and dict of the candidates' archive names) adds about
  {names_bytes:.0f} B per candidate on top of the columns; it is not part of the state tensor
  the seed's 150 B target describes.
- Strategies: {", ".join(f"{k} {v:.4f} ms" for k, v in strategy_ms.items())}.
"""
    print(body)
    write_section("lifecycle", body, facts)


if __name__ == "__main__":
    main()
