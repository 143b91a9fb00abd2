#!/usr/bin/env python3
"""Write the final reports (condensed story, paper-style report, top-k leaderboard, plots) of a
workspace: `python scripts/generate_finishup_report.py --workspace-root DIR --top-k K [--workspace WS]`.
A thin wrapper around loop.report.report_command, the same call `llmloop report` makes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))      # runs from a checkout without installing the package

from loop.report import add_arguments, run_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate_finishup_report.py",
                                     description="Write the final reports of a workspace.")
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
