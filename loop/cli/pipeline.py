"""`llmloop evolve | promote | rollback | archive verify`: thin calls into the pipeline."""
from __future__ import annotations

import argparse
import uuid

from loop.config import add_daemon_config_arguments, load_daemon_config
from loop.errors import ArchiveTampered, exits_with_code


def add_arguments(sub) -> None:
    def common(p):
        add_daemon_config_arguments(p)
        return p

    p = common(sub.add_parser("evolve", help="run one evolution window now"))
    p.add_argument("--candidates", type=int, help="how many (default: max_concurrent_experiments)")
    p.add_argument("--cycle", type=int, default=0, help="the heartbeat cycle to record")
    p = common(sub.add_parser("promote", help="decide the pending promotion proposal"))
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--approve", action="store_true")
    group.add_argument("--reject", action="store_true")
    group.add_argument("--show", action="store_true")
    p.add_argument("--note", default="")
    p = common(sub.add_parser("rollback", help="move GEN_HEAD back (previous promoted generation)"))
    p.add_argument("--to", "--target-gen", dest="to", help="an archive entry name instead of the previous generation")
    p.add_argument("--reason", default="manual rollback")
    p = common(sub.add_parser("archive", help="archive tools"))
    p.add_argument("action", choices=["verify", "list"])


def workspace_of(args) -> tuple:
    """The config and the workspace folder, resolved as every other command resolves them."""
    from loop.domains import trust_from
    from loop.util.workspace import workspace_of as resolve_workspace

    cfg = load_daemon_config(args.daemon_config, root=args.root)
    root = resolve_workspace(cfg, args.workspace).root
    trust_from(cfg, root)           # archive entries were written by runs: their task specs are not trusted
    return cfg, root


@exits_with_code
def run(args: argparse.Namespace) -> int:
    # `archive verify | list` only hash files and read CSV: they must not pay for torch (seconds),
    # which the promotion pipeline (and the evolution window) import; those come in per command.
    from loop.archive.freeze import verify_archive
    from loop.archive.lineage import read_lineage
    from loop.archive.paths import ModelPaths

    cfg, workspace = workspace_of(args)
    trace = f"manual-{uuid.uuid4().hex[:8]}"
    if args.command == "evolve":
        from loop.run.executor import check_executor

        check_executor(cfg)      # a Ray cluster out of reach: an error before any candidate is spawned (or torch)
        from loop.candidates.window import run_window

        result = run_window(cfg, workspace, args.cycle, args.candidates, trace)
        print(f"proposal: {result.proposal.proposed_head} (+{result.proposal.improvement:.4f}); "
              "review it, then `llmloop promote --approve` or `--reject`" if result.proposal else
              "no proposal: GEN_HEAD unchanged")
    elif args.command == "promote":
        from loop.archive import headswitch

        if args.show:
            from loop.archive.proposal import read_proposal

            proposal = read_proposal(ModelPaths(workspace))
            print(proposal.model_dump_json(indent=2) if proposal else "no pending proposal")
        elif args.approve:
            from loop.archive import promotion  # shadow, graft and burn-in load models: torch

            record = promotion.approve(cfg, workspace, trace)
            print(f"{record['action']}: {record.get('from')} -> {record.get('to')}"
                  if record["action"] == "PROMOTED"
                  else f"{record['action']}: GEN_HEAD stays {record.get('head')}: {record.get('reason')}")
            return 0 if record["action"] == "PROMOTED" else 10
        else:
            record = headswitch.reject(workspace, args.note, trace)
            print(f"rejected {record['candidate']}")
    elif args.command == "rollback":
        from loop.archive import headswitch

        record = headswitch.rollback(workspace, args.to, args.reason, trace)
        print(f"GEN_HEAD rolled back: {record['from']} -> {record['to']}")
    elif args.command == "archive":
        paths = ModelPaths(workspace)
        if args.action == "list":
            head = paths.head_name()
            for row in read_lineage(paths.lineage):
                mark = "HEAD " if row.name == head else ("prom " if row.promoted else "     ")
                print(f"{mark}{row.name}  {row.score:.4f}  {row.status}{pruned_note(paths.entry(row.name))}")
            return 0
        report = verify_archive(paths)
        bad = {name: probs for name, probs in report.items() if probs}
        for name in report:
            print(f"{'FAIL' if name in bad else 'ok  '} {name}{pruned_note(paths.entry(name))}")
            for problem in bad.get(name, []):
                print(f"     {problem}")
        print(f"{len(report) - len(bad)} of {len(report)} archive entries intact")
        return ArchiveTampered.exit_code if bad else 0
    return 0


def pruned_note(folder) -> str:
    """'  [pruned: model.safetensors by retention at ...]' for an entry retention pruned, else ''."""
    from loop.archive.pruned import read_marker

    marker = read_marker(folder)
    return "" if marker is None else \
        f"  [pruned: {', '.join(sorted(marker.names()))} by retention at {marker.pruned_at}]"
