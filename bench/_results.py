"""Shared by the bench scripts: machine facts and writing one `## <name>` section of bench/RESULTS.md
(replaced on each run; every other section is kept as it is)."""
from __future__ import annotations

import datetime
import fcntl
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path

import torch

# LLMLOOP_BENCH_RESULTS redirects the file (tests point it at a temporary path to prove nothing is written)
RESULTS = Path(os.environ.get("LLMLOOP_BENCH_RESULTS") or Path(__file__).resolve().parent / "RESULTS.md")
SMOKE_FLAG = "--smoke"
HEADER = """# Benchmark results

Measured by hand with the scripts in `bench/` (CI runs only their smoke sizes, which write nothing).
Each script owns one `## <name>` section below and replaces it on every run; see each script's
docstring for what it measures.
"""


def smoke() -> bool:
    """True for a smoke run (`--smoke` or LLMLOOP_BENCH_SMOKE=1): seconds of work, no RESULTS.md write."""
    return SMOKE_FLAG in sys.argv or os.environ.get("LLMLOOP_BENCH_SMOKE") == "1"


def machine_facts() -> str:
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU ({platform.processor() or platform.machine()})")
    return (f"nproc {os.cpu_count()}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
            f"python {platform.python_version()}, device {device}, load average at start "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def command() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def spread(values: list[float]) -> str:
    """mean, std (sample), min, max of a list, as one line."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"mean {statistics.mean(values):.4f}, std {std:.4f}, "
            f"min {min(values):.4f}, max {max(values):.4f}")


def write_section(name: str, body: str, load_at_start: str) -> None:
    """Replace (or append) `## name` in RESULTS.md with a dated section holding `body`.
    The read-modify-write holds an exclusive flock on the file, so benchmarks finishing at the
    same time do not drop each other's sections. A smoke run writes nothing."""
    if smoke():
        print(f"smoke run: section '{name}' not written")
        return
    section = (f"## {name}\n\n"
               f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
               f"- machine: {load_at_start}; load average at end "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
               f"- command: `{command()}`\n"
               f"- caveat: 2-core machine shared with other work (another engineer may run tests "
               f"at the same time); figures can be noisy, compare within one run only.\n\n"
               f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    with open(RESULTS, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes
        f.seek(0)
        text = f.read() or HEADER
        if pattern.search(text):
            text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
        else:
            text = text.rstrip() + "\n\n" + section
        f.seek(0)
        f.truncate()
        f.write(text)
    print(f"wrote section '{name}' of {RESULTS}")
