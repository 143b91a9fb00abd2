"""`llmloop`: the one entry point. Each sub-command is a thin call into the module that owns it."""
from __future__ import annotations

import argparse

from loop.errors import ExitCode


def build_parser() -> argparse.ArgumentParser:
    from loop.trainer.command import add_train_arguments

    parser = argparse.ArgumentParser(prog="llmloop", description="An autonomous LLM research loop for CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train one model with the shared KD/CNN trainer"))
    from loop.cli.pipeline import add_arguments as add_evolution_arguments

    add_evolution_arguments(sub)
    from loop.cli.daemon import add_arguments as add_daemon_arguments

    add_daemon_arguments(sub)
    from loop.cli.deploy import add_arguments as add_deploy_arguments

    add_deploy_arguments(sub)
    from loop.cli.dashboard import add_arguments as add_dashboard_arguments

    add_dashboard_arguments(sub)
    from loop.cli.service import add_arguments as add_service_arguments

    add_service_arguments(sub)
    phase = sub.add_parser("phase", help="PHASE deep evaluation: `llmloop phase run [--workspace WS]`")
    phase.add_argument("phase_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from loop.trainer.command import run_train

        return run_train(args)
    if args.command in ("evolve", "promote", "rollback", "archive"):
        from loop.cli.pipeline import run as run_evolution

        return run_evolution(args)
    if args.command == "phase":
        from loop.phase.command import main as phase_main

        return phase_main(args.phase_args)
    if args.command == "service":
        from loop.cli.service import run as run_service

        return run_service(args)
    if args.command in ("predict", "export"):
        from loop.cli.deploy import run as run_deploy

        return run_deploy(args)
    if args.command == "dashboard":
        from loop.cli.dashboard import run as run_dashboard

        return run_dashboard(args)
    from loop.cli.daemon import COMMANDS

    if args.command in COMMANDS:
        from loop.cli.daemon import run as run_daemon_command

        return run_daemon_command(args)
    return ExitCode.CONFIG


def entry() -> None:
    """The `llmloop` console script: `main`, then the process ends (loop/util/exiting.py). Tests call
    `main` in-process, where freezing the collector would keep every later cycle alive."""
    from loop.util.exiting import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
