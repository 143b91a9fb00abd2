"""The command-line entry shared by `llmloop report` and scripts/generate_finishup_report.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loop.errors import ExitCode
from loop.report.generate import generate_reports


def report_command(workspace_root: Path, top_k: int, workspace: Path | None = None, note: str = "") -> int:
    """`llmloop report` and scripts/generate_finishup_report.py: 0 done, 2 no such workspace or bad k."""
    ws = Path(workspace) if workspace is not None else Path(workspace_root) / "artifacts"
    if not ws.is_dir():
        print(f"error: workspace {ws} does not exist (give --workspace, or a --workspace-root with artifacts/)",
              file=sys.stderr)
        return ExitCode.CONFIG
    if top_k < 1:
        print(f"error: --top-k must be at least 1, not {top_k}", file=sys.stderr)
        return ExitCode.CONFIG
    paths = generate_reports(ws, top_k=top_k, note=note)
    for path in paths.values():
        print(path)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's arguments, shared by the script and `llmloop report`."""
    parser.add_argument("--workspace-root", default=".", help="the repo root (default: the current folder)")
    parser.add_argument("--top-k", type=int, default=10, help="leaderboard size (default 10)")
    parser.add_argument("--workspace", help="the workspace folder (default: <workspace-root>/artifacts)")
    parser.add_argument("--note", default="", help="a note shown at the top of the reports")


def run_args(args: argparse.Namespace) -> int:
    return report_command(Path(args.workspace_root), args.top_k,
                          Path(args.workspace) if args.workspace else None, args.note)
