"""Every benchmark in bench/ runs at its smoke size as a real subprocess, so a change that breaks a
benchmark fails the suite instead of the next person who measures (issue 22 item 9).

Each smoke run gets LLMLOOP_BENCH_RESULTS pointed at a temporary file that must not appear: a
smoke run never writes bench/RESULTS.md. Benchmarks that need a peer (Ray, the llama venv, the
dashboard extra, bubblewrap) skip with the reason when it is missing.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SMOKE_TIMEOUT_S = 900       # a smoke run takes seconds to two minutes; this only stops a hang
HELPERS = {"_results.py"}   # imported by the benchmarks, not run

# name -> (command, what the output must hold when it ran to its end)
PY = sys.executable
WRITES = "smoke run: section"          # write_section reached and refused to write
SMOKES = {
    "trainer_throughput": ([PY, "bench/trainer_throughput.py", "--smoke"], WRITES),
    "loop_overhead": ([PY, "bench/loop_overhead.py", "--smoke"], WRITES),
    "kd_gain": ([PY, "bench/kd_gain.py", "--smoke"], WRITES),
    "lifecycle": ([PY, "bench/lifecycle.py", "--smoke"], WRITES),
    "dashboard_load": ([PY, "bench/dashboard_load.py", "--smoke"], WRITES),
    "data_scale": ([PY, "bench/data_scale.py", "--smoke"], WRITES),
    "search_efficiency": ([PY, "bench/search_efficiency.py", "--smoke"], WRITES),
    "scale_out": ([PY, "bench/scale_out.py", "--smoke"], WRITES),
    "reliability": ([PY, "bench/reliability.py", "--smoke"], WRITES),
    "retention": ([PY, "bench/retention.py", "--smoke"], WRITES),
    "startup": ([PY, "bench/startup.py", "--smoke"], WRITES),
    "gpu_check": (["bash", "bench/gpu_check.sh", "--cpu-dry-run"], '{"failed": []}'),
    "llm_compat": ([PY, "bench/llm_compat.py", "--smoke"], "wrote "),
    "llama_server": ([PY, "bench/llama_server.py", "--probe", "--max-tokens", "16"], "--- e garbage type"),
}
# benchmarks whose smoke run is a test of its own elsewhere (not run twice)
COVERED = {"night": "tests/test_real_nights.py::test_the_short_night_on_an_image_folder (its short tier)"}


def _missing_peer(name: str) -> str | None:
    """Why this benchmark cannot run here, or None."""
    if name == "scale_out" and importlib.util.find_spec("ray") is None:
        return "the cluster extra is not installed (pip install -e '.[cluster]')"
    if name == "dashboard_load" and importlib.util.find_spec("uvicorn") is None:
        return "the dashboard extra is not installed: pip install -e '.[dashboard]'"
    if name in ("llm_compat", "llama_server"):
        sys.path.insert(0, str(BENCH))
        try:
            from llama_server import env_ready, venv_python
        finally:
            sys.path.remove(str(BENCH))
        if not env_ready(venv_python()):
            return f"the llama venv is not built ({venv_python()}): python bench/llama_server.py --build"
    return None


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.stem for p in BENCH.glob("*.py") if p.name not in HELPERS}
    assert scripts - set(SMOKES) - set(COVERED) == set(), "add a smoke size and a SMOKES entry for each new benchmark"
    assert set(SMOKES) | set(COVERED) <= scripts, "SMOKES names a benchmark that no longer exists"


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(SMOKES))
def test_benchmark_smoke(name, tmp_path):
    why = _missing_peer(name)
    if why:
        pytest.skip(why)
    argv, marker = SMOKES[name]
    results = tmp_path / "RESULTS.md"
    # OpenMP threads that sleep at a barrier instead of spinning: beside the other test worker a
    # benchmark's 2-thread training spun for seconds of CPU (the weights it trains are the same, bit for bit)
    env = dict(os.environ, LLMLOOP_BENCH_RESULTS=str(results), PYTHONPATH=str(REPO),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{output[-4000:]}"
    assert marker in output, f"{' '.join(argv)} did not reach its end ({marker!r} missing):\n{output[-4000:]}"
    assert not results.exists(), f"the smoke run wrote results:\n{results.read_text()[:2000]}"
