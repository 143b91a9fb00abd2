"""Reliability figures: runs the fault-injection and sandbox suites and writes `## Reliability`.

    .venv/bin/python bench/reliability.py            # CI tier (what every CI run does)
    .venv/bin/python bench/reliability.py --tier long
    .venv/bin/python bench/reliability.py --smoke        # the harness on one fast suite, no RESULTS.md

Each suite is a pytest file that runs as part of CI; with LLMLOOP_RELIABILITY_OUT set, the fault
campaigns also write their counts (kills survived, faults injected, cases refused ...) there as
JSON, which this script gathers with each suite's pass/fail counts and wall time into
bench/RESULTS.md. The command under each suite reproduces it alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_facts, smoke, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUITES = [
    ("sandbox escape suite", "tests/test_sandbox.py", None),
    ("process trees", "tests/test_process_trees.py", None),
    ("kill -9 campaign", "tests/test_kill_campaign.py", "kill_campaign"),
    ("disk full / file-size limits", "tests/test_disk_faults.py", "disk_faults"),
    ("LLM endpoint faults", "tests/test_llm_faults.py", "llm_faults"),
    ("decision/review fuzzing", "tests/test_fuzz_payloads.py", "payload_fuzz"),
    ("archive tamper", "tests/test_archive_tamper.py", "archive_tamper"),
    ("secrets canary", "tests/test_secrets_canary.py", None),
    ("supply chain", "tests/test_supply_chain.py", None),
]


def run_suite(test_file: str, tier: str, out: Path) -> dict:
    junit = out / (Path(test_file).stem + ".xml")
    env = dict(os.environ, LLMLOOP_FAULT_TIER=tier, LLMLOOP_RELIABILITY_OUT=str(out), PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "-o", "timeout=3600"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - t0
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    return {**counts, "seconds": round(seconds, 1), "returncode": done.returncode,
            "tail": done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []}


def render(name: str, test_file: str, figures_name: str | None, result: dict, out: Path, tier: str) -> str:
    passed = result["tests"] - result["failures"] - result["errors"] - result["skipped"]
    lines = [f"### {name}", "",
             f"- `{test_file}`: {passed} passed, {result['failures'] + result['errors']} failed, "
             f"{result['skipped']} skipped in {result['seconds']} s",
             f"- reproduce: `{'LLMLOOP_FAULT_TIER=long ' if tier == 'long' else ''}.venv/bin/python -m pytest "
             f"{test_file} -q`"]
    figures_file = out / f"{figures_name}.json" if figures_name else None
    if figures_file and figures_file.exists():
        figures = json.loads(figures_file.read_text())
        for key, value in figures.items():
            shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            lines.append(f"- {key.replace('_', ' ')}: {shown}")
    elif figures_name:
        lines.append("- (no figures recorded: the suite did not reach its campaign)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["ci", "long"], default="ci")
    parser.add_argument("--only", help="run only the suites whose file name contains this")
    parser.add_argument("--smoke", action="store_true", help="only the supply-chain suite (seconds); "
                        "a missing suite file is an error; RESULTS.md is not written")
    args = parser.parse_args()
    if smoke():
        missing = [f for _, f, _ in SUITES if not (REPO / f).exists()]
        if missing:     # a normal run skips them silently: the smoke is where a renamed suite shows
            print(f"[reliability] suite files missing: {missing}", file=sys.stderr)
            return 1
        args.only = args.only or "test_supply_chain"
    load_at_start = machine_facts()
    sections, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, test_file, figures_name in SUITES:
            if args.only and args.only not in test_file:
                continue
            if not (REPO / test_file).exists():
                continue
            print(f"[reliability] {name}: {test_file} ...", flush=True)
            result = run_suite(test_file, args.tier, out)
            # pytest exit 2-4 (interrupted, internal or usage error) can leave no junit counts at all
            failed += max(result["failures"] + result["errors"], result["returncode"] not in (0, 1, 5))
            print(f"[reliability]   {result}", flush=True)
            sections.append(render(name, test_file, figures_name, result, out, args.tier))
    body = (f"Tier: **{args.tier}** (`LLMLOOP_FAULT_TIER`; CI runs the `ci` tier on every push). "
            "Every number below comes from the named test file in this run.\n\n" + "\n".join(sections))
    write_section("Reliability" if args.tier == "ci" else "Reliability (long tier)", body, load_at_start)
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    gc.freeze()      # the exit skips the collector's walk over torch's objects (loop/util/exiting.py)
    sys.exit(code)
