"""`llmloop service install | status | uninstall`: the daemon and its PHASE timer as systemd units
(loop/ops/service.py writes them; loop/ops/units.py says what they hold)."""
from __future__ import annotations

import argparse
from pathlib import Path

from loop.config import DEFAULT_DAEMON_CONFIG, add_daemon_config_arguments, load_daemon_config
from loop.errors import exits_with_code


def add_arguments(sub) -> None:
    p = sub.add_parser("service", help="run the daemon as a systemd service, with a PHASE timer "
                                       "(install [--dry-run] | status | uninstall)")
    p.add_argument("action", choices=["install", "status", "uninstall"])
    add_daemon_config_arguments(p)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--user", dest="scope", action="store_const", const="user",
                       help="your own units, ~/.config/systemd/user (the default; no root)")
    scope.add_argument("--system", dest="scope", action="store_const", const="system",
                       help="system units in /etc/systemd/system (as root; they run as the project's owner)")
    p.set_defaults(scope="user")
    p.add_argument("--dry-run", action="store_true", help="install: print the unit files, write nothing")
    p.add_argument("--name", default="llmloop",
                   help="the units' prefix: <name>-daemon.service, <name>-phase.timer (one name per workspace)")
    p.add_argument("--python", help="the interpreter the units run (default: <root>/.venv/bin/python)")
    p.add_argument("--run-as", help="--system: the user the units run as (default: the project root's owner)")


@exits_with_code
def run(args: argparse.Namespace) -> int:
    from loop.ops import service
    from loop.util.workspace import workspace_of

    if args.action == "status":
        print(service.render_status(service.status(args.scope, args.name)))
        return 0
    if args.action == "uninstall":
        return service.uninstall(args.scope, args.name, say=print)
    cfg = load_daemon_config(args.daemon_config, root=args.root)
    config_path = Path(args.daemon_config) if args.daemon_config else cfg.root / DEFAULT_DAEMON_CONFIG
    spec = service.build_spec(cfg, workspace_of(cfg, args.workspace), config_path, args.scope, args.name,
                              python=args.python, run_as=args.run_as)
    return service.install(spec, args.dry_run, say=print)
