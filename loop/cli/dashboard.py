"""`llmloop dashboard`: the live web page of the workspace (loop/dashboard/)."""
from __future__ import annotations

import argparse
from pathlib import Path

from loop.config import add_daemon_config_arguments, load_daemon_config
from loop.errors import exits_with_code


def add_arguments(sub) -> None:
    p = sub.add_parser("dashboard", help="a live web page of the run (127.0.0.1:8765; read-only without its token)")
    add_daemon_config_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (a loopback one unless --allow-remote)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token-file", help="where to write the action token (default: <workspace>/logs/dashboard.token)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (plain HTTP: the page is readable by anyone who reaches it)")
    p.add_argument("--poll-seconds", type=float, default=3.0, help="how often the page refreshes")


@exits_with_code
def run(args: argparse.Namespace) -> int:
    from loop.dashboard.server import ServeOptions, serve
    from loop.util.workspace import workspace_of

    cfg = load_daemon_config(args.daemon_config, root=args.root)
    ws = workspace_of(cfg, args.workspace)
    options = ServeOptions(host=args.host, port=args.port, allow_remote=args.allow_remote,
                           token_file=Path(args.token_file).expanduser() if args.token_file else None,
                           poll_seconds=max(1.0, args.poll_seconds))
    return serve(cfg, ws, options, say=lambda line: print(line, flush=True))
