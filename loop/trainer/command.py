"""`llmloop train` and `python -m loop.trainer`: the same arguments, the same exit codes.

Exit codes: 0 done, 2 bad config, 3 unsupported model name, 4 budget exceeded (hard fail),
5 domain refused or unreadable, 1 anything else.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from loop.errors import ConfigError, exits_with_code


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="trainer YAML (default with --resume: the run's train_args.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted (repeatable): --set optim.lr=0.01")
    parser.add_argument("--out", help="run folder (default: artifacts/runs/<label>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


@exits_with_code
def run_train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:     # before the imports below: a usage error costs no torch import
        raise ConfigError("--resume needs --out: the run folder to continue")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")    # no update check over the network at import
    from loop.trainer.config import load_trainer_config
    from loop.trainer.train import TRAIN_ARGS_FILE, train

    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise ConfigError("--config is required (a trainer YAML, e.g. config/trainer/digits.yaml)")
        config_path = str(Path(args.out) / TRAIN_ARGS_FILE)
    cfg = load_trainer_config(config_path, args.overrides)
    out = args.out or default_out_dir(cfg.run.label or Path(config_path).stem)
    train(cfg, out, resume=args.resume)
    return 0


def default_out_dir(label: str) -> str:
    return str(Path("artifacts") / "runs" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}")


def main(argv: list[str] | None = None) -> int:
    from loop.util.netwatch import watch_network

    watch_network()     # the daemon's runs start here: a network attempt shows in the run's log
    parser = argparse.ArgumentParser(prog="python -m loop.trainer", description="The shared KD/CNN trainer.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))
