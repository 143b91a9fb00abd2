"""`llmloop start | stop | status | watch | unblock | finishup | report | reset | policy check | sandbox run | login`:
thin calls into the modules that own each job."""
from __future__ import annotations

import argparse
import getpass
import json
import shlex
import sys
from pathlib import Path

from loop.config import DEFAULT_DAEMON_CONFIG, add_daemon_config_arguments, load_daemon_config
from loop.dashboard.server import DEFAULT_PORT as DASHBOARD_PORT
from loop.errors import ExitCode, exits_with_code

COMMANDS = ("start", "stop", "status", "watch", "unblock", "finishup", "report", "reset", "policy", "sandbox", "login",
            "llm")


def add_arguments(sub) -> None:
    def common(p):
        add_daemon_config_arguments(p)
        return p

    p = common(sub.add_parser("start", help="start the research loop (in the background)"))
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops after the cycle")
    p.add_argument("--max-cycles", type=int, help="stop after this many cycles")
    p.add_argument("--run-hours", type=float, help="schedule finish-up so the whole run takes this long")
    p.add_argument("--finishup-minutes", type=float, help="the finish-up window (with --run-hours; default 60)")
    p.add_argument("--finishup-final-training-rounds", type=int, default=1)
    p.add_argument("--finishup-top-k", type=int, default=10)
    p.add_argument("--finishup-note", default="")
    p.add_argument("--dashboard", action="store_true",
                   help="also serve the dashboard on 127.0.0.1 in the background (left running by `llmloop stop`; "
                        "`llmloop dashboard --stop` stops it)")
    p.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT, help="the dashboard's port (with --dashboard)")
    p.add_argument("--phase-scheduler", choices=["daemon", "systemd"],
                   help="who starts PHASE (overrides phase.scheduler): the daemon, or a systemd timer the daemon "
                        "only pauses for (`llmloop service install` sets this)")
    p.add_argument("--tee-log", action="store_true",
                   help="with --foreground: also append the output to <workspace>/logs/daemon.log (a service's "
                        "output goes to the journal)")
    p = common(sub.add_parser("stop", help="ask the daemon to finish its cycle and exit"))
    p.add_argument("--wait", type=float, default=0, help="seconds to wait until it has stopped")
    p = common(sub.add_parser("status", help="what the loop is doing"))
    p.add_argument("--json", action="store_true")
    p = common(sub.add_parser("watch", help="the status, refreshed in place"))
    p.add_argument("--interval-seconds", type=float, default=10)
    p.add_argument("--once", action="store_true")
    common(sub.add_parser("unblock", help="clear the blocked state (the same failure too many times in a row) "
                                          "once its cause is fixed"))
    p = common(sub.add_parser("finishup", help="request, show or cancel finish-up mode"))
    p.add_argument("--minutes-left", type=float)
    p.add_argument("--run-hours", type=float)
    p.add_argument("--final-training-rounds", type=int, default=1)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--note", default="")
    p.add_argument("--activate-in-minutes", type=float)
    p.add_argument("--activate-at-utc")
    p.add_argument("--force-report-now", action="store_true")
    p.add_argument("--show", action="store_true")
    p.add_argument("--cancel", action="store_true")
    p = common(sub.add_parser("report", help="write the final reports now"))
    p.add_argument("--workspace-root", help="the repo root (the workspace is <root>/artifacts unless --workspace)")
    p.add_argument("--top-k", type=int, default=10)
    p = common(sub.add_parser("reset", help="wipe the workspace for a fresh start (the daemon must be stopped)"))
    p.add_argument("--keep-login", action="store_true", help="keep the stored API key")
    p.add_argument("--keep-data-link", action="store_true", help="keep <workspace>/data (a link to your data)")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = common(sub.add_parser("policy", help="try the command policy"))
    p.add_argument("action", choices=["check"])
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND")
    p = common(sub.add_parser("sandbox", help="run a command exactly as the daemon runs a run_command"))
    p.add_argument("action", choices=["run"])
    p.add_argument("--policy", action="store_true", help="refuse first, as the daemon does, if the policy refuses")
    p.add_argument("--timeout", type=float, help="seconds before the command is killed")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND (one shell line, as an LLM would write it)")
    p = common(sub.add_parser("llm", help="`llm probe`: which structured-output mode each role's endpoint "
                                          "takes, its latency, and whether a sample decision validates"))
    p.add_argument("action", choices=["probe"])
    p.add_argument("--role", choices=["builder", "mentor", "both"], default="both")
    p.add_argument("--json", action="store_true")
    p = common(sub.add_parser("login", help="store the endpoint and API key (0600 file)"))
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="the model name to use for both roles")
    p.add_argument("--key-env", help="the variable name to store the key under (default: builder.api_key_env)")
    p.add_argument("--key-stdin", action="store_true", help="read the key from standard input")


@exits_with_code
def run(args: argparse.Namespace) -> int:
    from loop.daemon import process as daemon
    split_command_options(args)
    cfg = load_daemon_config(args.daemon_config, root=args.root)
    ws = daemon.workspace_of(cfg, args.workspace)
    return HANDLERS[args.command](args, cfg, ws)


def split_command_options(args: argparse.Namespace) -> None:
    """`llmloop policy check|sandbox run [OPTIONS] -- CMD`: the REMAINDER that collects CMD also
    swallows OPTIONS written after the action word; parse those here (only the ones given)."""
    cmd = getattr(args, "cmd", None)
    if not cmd or "--" not in cmd:
        return
    cut = cmd.index("--")
    before = cmd[:cut]
    if before and not before[0].startswith("-"):
        return                  # `policy check git log -- file`: that `--` belongs to the command
    args.cmd = cmd[cut + 1:]
    if not before:
        return
    options = argparse.ArgumentParser(prog=f"llmloop {args.command}", argument_default=argparse.SUPPRESS)
    options.add_argument("--daemon-config")
    options.add_argument("--root")
    options.add_argument("--workspace")
    if args.command == "sandbox":
        options.add_argument("--policy", action="store_true")
        options.add_argument("--timeout", type=float)
    for key, value in vars(options.parse_args(before)).items():
        setattr(args, key, value)


# ---------------------------------------------------------------- handlers ----

def cmd_start(args, cfg, ws) -> int:
    from loop.cycle import finishup
    from loop.daemon import process as daemon
    from loop.dashboard.background import start_detached as start_dashboard
    if daemon.running_pid(ws) is not None:
        raise daemon.AlreadyRunning(f"the daemon is already running on {ws.root} (pid {daemon.running_pid(ws)})")
    if args.run_hours:
        ws.ensure()
        request = finishup.schedule(finishup.now_utc(), minutes_left=args.finishup_minutes, run_hours=args.run_hours,
                                    final_training_rounds=args.finishup_final_training_rounds,
                                    top_k=args.finishup_top_k, note=args.finishup_note)
        finishup.save(ws.finish_up, request)
        print(finishup.describe(request, finishup.now_utc()))
    config_path = args.daemon_config or cfg.root / DEFAULT_DAEMON_CONFIG
    if args.phase_scheduler:
        cfg.phase = cfg.phase.model_copy(update={"scheduler": args.phase_scheduler})
    if args.foreground and args.tee_log:
        from loop.cli.tee import tee_output

        tee_output(ws.ensure().daemon_log)
    if args.foreground:
        if args.dashboard:          # first: the cycles hold this process until they stop
            start_dashboard(ws, config_path, cfg.root, args.dashboard_port, say=print)
        try:
            daemon.run_daemon(cfg, ws, args.max_cycles)
        except OSError as exc:      # the cycles handle their own (degraded); this is start-up or shutdown
            print(f"error: the daemon could not start or stop cleanly: {exc}. Free disk space (or fix the "
                  f"file named) and start again; state.json and events.jsonl keep the last good state.",
                  file=sys.stderr)
            return 1
        return 0
    extra = ["--max-cycles", str(args.max_cycles)] if args.max_cycles else []
    extra += ["--phase-scheduler", args.phase_scheduler] if args.phase_scheduler else []
    from loop.daemon.control import start_background

    pid = start_background(str(config_path), cfg.root, ws, extra)
    print(f"llmloop started (pid {pid}); log: {ws.daemon_log}; `llmloop status` shows it, `llmloop stop` stops it")
    if args.dashboard:              # its own process: a dashboard that fails to start is said, never fatal
        start_dashboard(ws, config_path, cfg.root, args.dashboard_port, say=print)
    return 0


def cmd_stop(args, cfg, ws) -> int:
    from loop.daemon import process as daemon
    if daemon.running_pid(ws) is None:
        print("llmloop is not running")
        return 0
    from loop.daemon.control import request_stop

    stopped = request_stop(ws, args.wait)
    print("llmloop stopped" if stopped else "stop requested: the daemon exits after its current cycle")
    return 0


def cmd_status(args, cfg, ws) -> int:
    from loop.daemon import status
    info = status.status_info(cfg, ws)
    print(json.dumps(info, indent=2, default=str) if args.json else status.render(info))
    return 0


def cmd_unblock(args, cfg, ws) -> int:
    from loop.cycle.failures import unblock
    from loop.cycle.state import LoopState
    from loop.daemon import process as daemon
    from loop.journal.events import EventLog

    if daemon.running_pid(ws) is not None:     # the daemon owns state.json: it clears it at its next cycle
        ws.unblock_request.write_text("requested\n")
        print("unblock requested: the daemon clears the blocked state at its next cycle")
        return 0
    state = LoopState.load(ws.state)
    if state.blocked is None:
        print("llmloop is not blocked")
        return 0
    print(unblock(state, EventLog(ws.events), "operator: llmloop unblock (daemon stopped)"))
    state.save(ws.state)
    return 0


def cmd_watch(args, cfg, ws) -> int:
    from loop.daemon import status
    return status.watch(cfg, ws, args.interval_seconds, args.once)


def cmd_finishup(args, cfg, ws) -> int:
    from loop.cycle import finishup
    from loop.daemon import process as daemon
    now = finishup.now_utc()
    if args.show:
        print(finishup.describe(finishup.load(ws.finish_up), now))
        return 0
    if args.cancel:
        request = finishup.cancel(ws.finish_up)
        print(f"finish-up cancelled (was due {request.deadline_utc})")
        return 0
    ws.ensure()
    request = finishup.schedule(now, args.minutes_left, args.run_hours, args.activate_in_minutes, args.activate_at_utc,
                                args.final_training_rounds, args.top_k, args.note, args.force_report_now)
    finishup.save(ws.finish_up, request)
    print(finishup.describe(request, now))
    if args.force_report_now and daemon.running_pid(ws) is None:      # nobody else will write them
        from loop.report import generate_reports

        paths = generate_reports(ws.root, request.top_k, request.note)
        request.status, request.reports = "done", {k: str(v) for k, v in paths.items()}
        finishup.save(ws.finish_up, request)
        print(f"reports written to {ws.reports}")
    return 0


def cmd_report(args, cfg, ws) -> int:
    from loop.report import report_command

    root = Path(args.workspace_root) if args.workspace_root else cfg.root
    return report_command(root, args.top_k, Path(args.workspace) if args.workspace else
                          (None if args.workspace_root else ws.root))


def cmd_reset(args, cfg, ws) -> int:
    from loop.daemon.reset import refuse_while_running, reset_workspace
    from loop.dashboard import background

    refuse_while_running(ws)                # before asking, and before stopping anything
    if not args.yes and sys.stdin.isatty():
        if input(f"Delete everything in {ws.root}? (yes/no) ").strip() != "yes":
            print("reset cancelled")
            return 1
    serving = background.stop(ws)           # it reads the folders about to go, and its pid file is among them
    if serving is not None:
        print(f"stopped the dashboard serving {ws.root} (pid {serving.pid}, {serving.url})")
    removed = reset_workspace(ws, Path(cfg.credentials_file).expanduser(), args.keep_login, args.keep_data_link,
                              say=print)
    print(f"workspace {ws.root} reset ({removed} entries removed)")
    return 0


def shell_line(words: list[str]) -> str:
    """`-- 'one shell line'` is taken as written; `-- bash -c "echo x"` keeps each word's quoting."""
    return words[0] if len(words) == 1 else shlex.join(words)


def cmd_policy(args, cfg, ws) -> int:
    from loop.cli.policy import policy_check

    if not args.cmd:            # split_command_options already took the `--` off
        print("usage: llmloop policy check -- COMMAND", file=sys.stderr)
        return ExitCode.CONFIG
    return policy_check(shell_line(args.cmd), cfg, ws.root)


def cmd_sandbox(args, cfg, ws) -> int:
    from loop.cli.policy import policy_check
    from loop.run.sandbox_setup import run_by_hand

    if not args.cmd:
        print("usage: llmloop sandbox run [--policy] -- COMMAND", file=sys.stderr)
        return ExitCode.CONFIG
    # One word is the shell line itself (`-- "ls | wc"`); several words are an argv whose own
    # quoting must survive (`-- bash -c "echo inside"`), so quote them back into one line.
    command = shell_line(args.cmd)
    if args.policy and policy_check(command, cfg, ws.root) != 0:
        return ExitCode.POLICY
    return run_by_hand(cfg, cfg.root, ws.root, command, args.timeout)


def cmd_llm(args, cfg, ws) -> int:
    from loop.cli import llm as probe
    from loop.daemon.process import builder_role, mentor_role

    roles = {"builder": builder_role(cfg), "mentor": mentor_role(cfg)}
    if args.role != "both":
        roles = {args.role: roles[args.role]}
    results = probe.probe_roles(cfg, ws.ensure(), roles, cfg.root)
    print(json.dumps(probe.as_json(results), indent=2) if args.json else probe.render(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_login(args, cfg, ws) -> int:
    from loop.agents.credentials import write_credentials

    path = Path(cfg.credentials_file).expanduser()
    key = sys.stdin.readline().strip() if args.key_stdin else getpass.getpass("API key (empty for none): ").strip()
    env_name = args.key_env or cfg.builder.api_key_env
    if key:
        write_credentials(path, env_name, key)
    if args.base_url or args.model:
        for field, value in (("base_url", args.base_url), ("model", args.model)):
            if value:
                write_credentials(path, field, value)
    if not key and not args.base_url:
        print("nothing to store: give a key and/or --base-url", file=sys.stderr)
        return ExitCode.CONFIG
    print(f"stored {'key ' + env_name if key else ''}{' and ' if key and args.base_url else ''}"
          f"{'endpoint ' + args.base_url if args.base_url else ''} in {path} (mode 0600)")
    return 0


HANDLERS = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "watch": cmd_watch, "unblock": cmd_unblock,
            "finishup": cmd_finishup, "report": cmd_report, "reset": cmd_reset, "policy": cmd_policy,
            "sandbox": cmd_sandbox, "login": cmd_login, "llm": cmd_llm}
