"""The PHASE command line: `python -m loop.phase run ...`, also reached as `llmloop phase run ...`.

Usage: python -m loop.phase run --daemon-config FILE [--workspace WS] [--run-id ID] [--quiet]
"""
from __future__ import annotations

import argparse

from loop.config import add_daemon_config_arguments, load_daemon_config
from loop.errors import exits_with_code
from loop.phase.marker import record_start
from loop.phase.results import default_run_id, read_results
from loop.phase.run import run_phase
from loop.util.workspace import workspace_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`run` under `parser` (used by `python -m loop.phase` and `llmloop phase`)."""
    sub = parser.add_subparsers(dest="phase_command", required=True)
    p = sub.add_parser("run", help="run the PHASE deep evaluation now")
    add_daemon_config_arguments(p)
    p.add_argument("--run-id", help="names the results folder and the signal (default: UTC time, 20261122-030000)")
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal (the log file still gets it)")


@exits_with_code
def run_command(args: argparse.Namespace) -> int:
    from loop.domains import trust_from

    cfg = load_daemon_config(args.daemon_config, root=args.root)
    workspace = workspace_of(cfg, args.workspace).root
    trust_from(cfg, workspace)     # the models' folders were written by runs
    run_id = args.run_id or default_run_id()
    record_start(workspace, run_id)     # a daemon that did not start this run pauses for it (loop/phase/marker.py)
    path = run_phase(cfg, workspace, run_id, progress=not args.quiet)
    results = read_results(path)
    for label in results.domains_tested:
        print(f"{label}: fitness {results.metrics[label].fitness:.4f}")
    print(f"promoted: {', '.join(results.promoted_variants) or '-'}; "
          f"flagged: {', '.join(results.flagged_variants) or '-'}")
    for line in results.insights:
        print(line)
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.phase", description="PHASE deep evaluation.")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
