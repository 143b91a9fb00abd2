"""The adaptive timer (dream_phase.md): no fixed sleep between cycles. The pause comes from

  recent durations     base + 10% of the rolling average of recent cycle and run durations
  fitness trend        x2 when the best score has stopped improving (converging), x0.5 while it rises
  resources            x0.5 when the machine is idle (CPU, GPU if any, memory), x1.5 when it is busy
  an open circuit      at least until the Builder's LLM circuit half-opens (past `max_seconds` too:
                       a cycle before then could only wait again, without a request)
  the next PHASE       never more than half the time left until the PHASE window opens

bounded by `adaptive_timer.min_seconds` / `max_seconds`. Every decision is returned with its inputs
so the daemon can log it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

IDLE_CPU, BUSY_CPU, BUSY_MEMORY = 30.0, 85.0, 90.0


@dataclass
class TimerInputs:
    base_seconds: float
    cycle_seconds: list[float] = field(default_factory=list)    # recent cycles, oldest first
    run_seconds: list[float] = field(default_factory=list)      # recent runs
    best_scores: list[float] = field(default_factory=list)      # best score so far after each recent run
    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_percent: float | None = None
    seconds_to_phase: float | None = None
    llm_circuit_open_seconds: float | None = None               # until the Builder's circuit half-opens


@dataclass
class TimerDecision:
    seconds: float
    reasons: list[str]
    inputs: dict


def improvement_rate(best_scores: list[float]) -> float | None:
    """Gain of the best score per run over the window; None with fewer than 3 points."""
    if len(best_scores) < 3:
        return None
    return (best_scores[-1] - best_scores[0]) / (len(best_scores) - 1)


def next_pause(inputs: TimerInputs, min_seconds: float, max_seconds: float,
               converged_below: float = 1e-3) -> TimerDecision:
    reasons = []
    durations = inputs.cycle_seconds + inputs.run_seconds
    pause = inputs.base_seconds
    if durations:
        avg = sum(durations) / len(durations)
        pause += 0.1 * avg
        reasons.append(f"recent durations average {avg:.1f}s -> +{0.1 * avg:.1f}s")
    rate = improvement_rate(inputs.best_scores)
    if rate is not None and rate < converged_below:
        pause *= 2.0
        reasons.append(f"converging (best improves {rate:.4f}/run) -> x2")
    elif rate is not None:
        pause *= 0.5
        reasons.append(f"improving ({rate:.4f}/run) -> x0.5")
    busy = [v for v in (inputs.cpu_percent, inputs.gpu_percent) if v is not None]
    if inputs.cpu_percent is not None:
        if max(busy) >= BUSY_CPU or (inputs.memory_percent or 0) >= BUSY_MEMORY:
            pause *= 1.5
            reasons.append(f"machine busy (cpu {inputs.cpu_percent:.0f}%, "
                           f"memory {inputs.memory_percent or 0:.0f}%) -> x1.5")
        elif max(busy) < IDLE_CPU:
            pause *= 0.5
            reasons.append(f"machine idle (cpu {inputs.cpu_percent:.0f}%) -> x0.5")
    circuit_wait = _circuit_wait(inputs.llm_circuit_open_seconds)
    if circuit_wait > pause:
        pause = circuit_wait
        reasons.append(f"Builder LLM circuit open for {circuit_wait:.1f}s more -> wait it out")
    if inputs.seconds_to_phase is not None and pause > inputs.seconds_to_phase / 2:
        pause = max(0.0, inputs.seconds_to_phase / 2)
        reasons.append(f"PHASE opens in {inputs.seconds_to_phase:.0f}s -> at most half of that")
    bounded = min(max(pause, min_seconds), max(max_seconds, circuit_wait))
    if bounded != pause:
        reasons.append(f"bounded to [{min_seconds}, {max_seconds}]s")
    return TimerDecision(seconds=round(bounded, 3), reasons=reasons, inputs=asdict(inputs))


def _circuit_wait(open_seconds: float | None) -> float:
    # Rounded up to the millisecond, so the next cycle never finds the circuit still open by a hair.
    return math.ceil(open_seconds * 1000) / 1000 if open_seconds else 0.0


def sample_resources() -> dict[str, float | None]:
    """CPU and memory use now (psutil), and the GPU's when torch sees one."""
    import psutil

    out: dict[str, float | None] = {"cpu_percent": psutil.cpu_percent(interval=0.1),
                                    "memory_percent": psutil.virtual_memory().percent, "gpu_percent": None}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu_percent"] = float(torch.cuda.utilization())
    except Exception:       # no NVML or no driver: the GPU input is simply absent
        pass
    return out
