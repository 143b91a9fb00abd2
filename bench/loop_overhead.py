"""A cycle's own cost and the Builder prompt's size, as the history grows.

loop_overhead  `run_cycle()` with an instant in-process LLM (a stub object whose complete_json
               returns a fixed `research` decision at once: no HTTP, no training), so what is timed
               is the loop's own work: context building (notes tails, TODO summary, run history,
               signals), the gate, housekeeping, the event append (fsync), storyline, state.json
               and heartbeat (atomic writes). Measured after 10 and after 1,000 cycles of history
               (runs index, events, notes, TODOs); target: median < 50 ms at 1,000. The 10-cycle
               figure is the reference in the same run.
prompt_size    tokens (characters / 4) of the Builder's full prompt (system + context) after 10,
               100 and 1,000 cycles of realistic notes, TODOs, storyline and run history;
               target: flat, < 4,000.

Run from the repo root: .venv/bin/python bench/loop_overhead.py
Smoke size (tests/test_bench_smoke.py; no RESULTS.md write): add --smoke (5, 10, 20 cycles of
history, 3 cycles timed).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_facts, smoke, write_section  # noqa: E402

from loop.agents import prompts  # noqa: E402
from loop.agents.context import build_context  # noqa: E402
from loop.agents.schema import Decision  # noqa: E402
from loop.agents.usage import estimate_tokens  # noqa: E402
from loop.config import DaemonConfig, read_yaml  # noqa: E402
from loop.cycle.cycle import Loop, run_cycle  # noqa: E402
from loop.cycle.state import LoopState  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from loop.journal.history import append_history, read_history  # noqa: E402
from loop.journal.notes import add_todos, append_storyline, append_workpad, resolve_todos  # noqa: E402
from loop.util.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = read_yaml(REPO / "config/trainer/digits.yaml")
SMALL, MID, LARGE, TIMED = (5, 10, 20, 3) if smoke() else (10, 100, 1000, 30)  # history sizes; cycles timed


class InstantLLM:
    """Stands in for the endpoint: answers at once (the cost being measured is the loop's own)."""

    def __init__(self):
        self.reply = Decision(action="research", run_label="bench-research",
                              rationale="Benchmark cycle: read the leaderboard and write a note about it.",
                              notes_update="bench note", todo_new=["bench todo"])

    def complete_json(self, system, user, model_cls):
        from loop.agents.llm import LLMResult, Usage

        usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, calls=1)
        return LLMResult(parsed=self.reply, raw="{}", usage=usage, attempts=1, repaired=False, mode="json_schema")


def grow_history(ws: Workspace, events: EventLog, start: int, stop: int) -> None:
    """Add cycles start..stop-1 of realistic history: runs, events, notes, TODOs, storyline."""
    for i in range(start, stop):
        append_history(ws, {"label": f"run-{i}", "cycle": i, "trace": f"c{i:05d}-bench", "config": BASE,
                            "ok": i % 9 != 0, "score": 0.9 + (i % 13) * 0.005, "dimension": "optimization"})
        events.append("cycle", f"c{i:05d}-bench", cycle=i, decision={"action": "train", "run_label": f"run-{i}"},
                      run_outcome={"status": "ok", "val_accuracy": 0.95})
        append_workpad(ws.workpad, "## Notes", f"cycle {i}: learned that lr {0.01 * (i % 5):.2f} behaves so-so", i)
        append_storyline(ws.storyline, f"- c{i:05d} [c{i:05d}-bench] AI-Builder: train `run-{i}` -> ok val_acc 0.95")
        add_todos(ws.todo, [f"follow-up {i} on topic {i % 97} variant {i}"], "AI-Builder", i, 2)
        if i % 3 == 0:
            resolve_todos(ws.todo, [f"T{max(1, i // 2):04d}"], i)


def time_cycles(loop: Loop, n: int) -> list[float]:
    times = []
    for _ in range(n):
        state = LoopState.load(loop.ws.state)
        t0 = time.perf_counter()
        run_cycle(loop, state)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def builder_prompt_tokens(cfg: DaemonConfig, ws: Workspace, cycle: int) -> int:
    history = read_history(ws)
    ctx = build_context(ws, cycle, history, ["train"] * 20,
                        {"label": "x", "status": "failed", "log_path": str(ws.root / "fail.log")}, None)
    system, user = prompts.builder_prompt(cfg, REPO, ctx.render())
    return estimate_tokens(system + user)


def main() -> None:
    facts = machine_facts()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp)).ensure()
        (ws.root / "fail.log").write_text("Traceback (most recent call last):\n" + "  frame\n" * 200 + "ValueError\n")
        # No evolution window or PHASE: the cost measured is the cycle itself.
        cfg = DaemonConfig(workspace=str(ws.root), mentor_enabled=False, evo_period_cycles=10**9,
                           phase={"schedule": "off"})
        events = EventLog(ws.events)
        loop = Loop(cfg=cfg, repo_root=REPO, ws=ws, events=events, builder=InstantLLM(), say=lambda *_: None)
        tokens, timing = {}, {}
        done = 0
        for target in (SMALL, MID, LARGE):
            grow_history(ws, events, done, target)
            done = target
            state = LoopState.load(ws.state)
            state.cycle = target
            state.save(ws.state)
            tokens[target] = builder_prompt_tokens(cfg, ws, target)
            if target in (SMALL, LARGE):
                timing[target] = time_cycles(loop, TIMED)
    med = {k: statistics.median(v) for k, v in timing.items()}
    fast = "meets" if med[LARGE] < 50 else "MISSES"
    flat = "meets" if max(tokens.values()) < 4000 and tokens[LARGE] <= 1.25 * tokens[SMALL] else "MISSES"
    p90 = {k: sorted(v)[int(0.9 * len(v))] for k, v in timing.items()}
    body = f"""
### loop_overhead

One cycle with an instant in-process LLM and a `research` decision (no training), {TIMED} cycles
timed at each history size.

| history | median | p90 | target |
|---|---|---|---|
| {SMALL:,} cycles (reference) | {med[SMALL]:.1f} ms | {p90[SMALL]:.1f} ms | - |
| {LARGE:,} cycles | {med[LARGE]:.1f} ms | {p90[LARGE]:.1f} ms | < 50 ms median: {fast} |

Ratio {LARGE:,} / {SMALL:,} cycles of history: {med[LARGE] / med[SMALL]:.2f}.

### prompt_size

Builder prompt (system + context), tokens estimated as characters / 4, with a failed run's log
tail and the storyline included (the largest case).

| after | tokens |
|---|---|
| {SMALL:,} cycles | {tokens[SMALL]} |
| {MID:,} cycles | {tokens[MID]} |
| {LARGE:,} cycles | {tokens[LARGE]} |

Target flat and < 4,000: {flat}
({LARGE:,} / {SMALL:,} = {tokens[LARGE] / tokens[SMALL]:.2f}).
"""
    print(body)
    write_section("loop_overhead", body, facts)


if __name__ == "__main__":
    main()
