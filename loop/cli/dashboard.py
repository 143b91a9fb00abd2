"""`llmloop dashboard`: the live web page of the workspace (loop/dashboard/); `--stop` stops the one
serving it (started by hand or by `llmloop start --dashboard`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from loop.config import add_daemon_config_arguments, load_daemon_config
from loop.dashboard.server import DEFAULT_PORT
from loop.errors import exits_with_code


def add_arguments(sub) -> None:
    p = sub.add_parser("dashboard", help=f"a live web page of the run (127.0.0.1:{DEFAULT_PORT}; read-only "
                                         f"without its token)")
    add_daemon_config_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (a loopback one unless --allow-remote)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token-file", help="where to write the action token (default: <workspace>/logs/dashboard.token)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (plain HTTP: the page is readable by anyone who reaches it)")
    p.add_argument("--poll-seconds", type=float, default=3.0, help="how often the page refreshes")
    p.add_argument("--stop", action="store_true",
                   help="stop the dashboard serving this workspace (`llmloop stop` leaves it running)")


@exits_with_code
def run(args: argparse.Namespace) -> int:
    from loop.util.workspace import workspace_of

    cfg = load_daemon_config(args.daemon_config, root=args.root)
    ws = workspace_of(cfg, args.workspace)
    if args.stop:
        return stop(ws)
    from loop.dashboard.server import ServeOptions, serve

    options = ServeOptions(host=args.host, port=args.port, allow_remote=args.allow_remote,
                           token_file=Path(args.token_file).expanduser() if args.token_file else None,
                           poll_seconds=max(1.0, args.poll_seconds))
    return serve(cfg, ws, options, say=lambda line: print(line, flush=True))


def stop(ws) -> int:
    from loop.dashboard import background

    stopped = background.stop(ws)
    print(f"dashboard stopped (pid {stopped.pid}, {stopped.url})" if stopped
          else f"no dashboard is serving {ws.root}")
    return 0
