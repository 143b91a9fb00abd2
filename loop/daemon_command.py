"""`llmloop start | stop | status | policy check | login`: thin calls into the daemon."""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path

from loop.config import add_daemon_config_arguments, load_daemon_config
from loop.errors import LoopError


def add_arguments(sub) -> None:
    def common(p):
        add_daemon_config_arguments(p)
        return p

    p = common(sub.add_parser("start", help="start the research loop (in the background)"))
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops after the cycle")
    p.add_argument("--max-cycles", type=int, help="stop after this many cycles")
    p = common(sub.add_parser("stop", help="ask the daemon to finish its cycle and exit"))
    p.add_argument("--wait", type=float, default=0, help="seconds to wait until it has stopped")
    p = common(sub.add_parser("status", help="what the loop is doing"))
    p.add_argument("--json", action="store_true")
    p = common(sub.add_parser("policy", help="try the command policy"))
    p.add_argument("action", choices=["check"])
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND")
    p = common(sub.add_parser("login", help="store an API key for the endpoint (0600 file)"))
    p.add_argument("--key-env", help="the variable name to store the key under (default: builder.api_key_env)")
    p.add_argument("--key-stdin", action="store_true", help="read the key from standard input")


def run(args: argparse.Namespace) -> int:
    from loop import daemon

    try:
        cfg = load_daemon_config(args.daemon_config)
        ws = daemon.workspace_of(cfg, args.workspace)
        if args.command == "start":
            if args.foreground:
                daemon.run_daemon(cfg, ws, args.max_cycles)
                return 0
            extra = ["--max-cycles", str(args.max_cycles)] if args.max_cycles else []
            pid = daemon.start_background(args.daemon_config, ws, extra)
            print(f"llmloop started (pid {pid}); log: {ws.daemon_log}; `llmloop status` shows it, `llmloop stop` stops it")
            return 0
        if args.command == "stop":
            if daemon.running_pid(ws) is None:
                print("llmloop is not running")
                return 0
            stopped = daemon.request_stop(ws, args.wait)
            print("llmloop stopped" if stopped else "stop requested: the daemon exits after its current cycle")
            return 0
        if args.command == "status":
            info = status_info(cfg, ws)
            print(json.dumps(info, indent=2, default=str) if args.json else render_status(info))
            return 0
        if args.command == "policy":
            from loop.daemon import REPO_ROOT
            from loop.gate import policy_check

            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                print("usage: llmloop policy check -- COMMAND", file=sys.stderr)
                return 2
            return policy_check(" ".join(cmd) if len(cmd) > 1 else cmd[0], cfg, REPO_ROOT)
        if args.command == "login":
            from loop.agents.llm import write_credentials

            key = sys.stdin.readline().strip() if args.key_stdin else getpass.getpass("API key: ").strip()
            if not key:
                print("no key given", file=sys.stderr)
                return 2
            env_name = args.key_env or cfg.builder.api_key_env
            write_credentials(Path(cfg.credentials_file).expanduser(), env_name, key)
            print(f"stored {env_name} in {Path(cfg.credentials_file).expanduser()} (mode 0600)")
            return 0
    except LoopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 2


def status_info(cfg, ws) -> dict:
    from loop import daemon
    from loop.evolution.paths import ModelPaths
    from loop.notes import todo_summary
    from loop.state import LoopState

    state = LoopState.load(ws.state)
    pid = daemon.running_pid(ws)
    try:
        beat = json.loads(ws.heartbeat.read_text())
        heartbeat_age = round(time.time() - beat["ts"], 1)
    except (OSError, ValueError, KeyError):
        heartbeat_age = None
    models = ModelPaths(ws.root)
    open_todos, _ = todo_summary(ws.todo)
    run = state.active_run
    return {"running": pid is not None, "pid": pid, "cycle": state.cycle, "heartbeat_age_seconds": heartbeat_age,
            "active_run": None if run is None else {"label": run.label, "pid": run.pid, "log": run.log_path,
                                                    "elapsed_seconds": round(time.time() - run.started_at)},
            "last_decision": state.last_decision, "last_outcome": state.last_outcome,
            "gen_head": models.head_name(), "proposal_pending": models.proposal.exists(),
            "open_todos": open_todos, "tokens": {k: v.model_dump() for k, v in state.tokens.items()},
            "builder": "LLM" if cfg.builder.base_url else "offline policy"}


def render_status(info: dict) -> str:
    lines = [f"llmloop: {'RUNNING (pid %s)' % info['pid'] if info['running'] else 'stopped'}; cycle {info['cycle']}; "
             f"heartbeat {info['heartbeat_age_seconds']}s ago; Builder: {info['builder']}"]
    run = info["active_run"]
    lines.append(f"active run: {run['label']} pid {run['pid']} {run['elapsed_seconds']}s, log {run['log']}" if run
                 else "active run: none")
    if info["last_decision"]:
        d = info["last_decision"]
        lines.append(f"last decision: {d.get('action')} `{d.get('label')}` ({d.get('source')}), gate ok {d.get('gate_ok')}")
    if info["last_outcome"]:
        o = info["last_outcome"]
        lines.append(f"last outcome: {o.get('label')} {o.get('status')} val_acc {o.get('val_accuracy')}")
    lines.append(f"GEN_HEAD: {info['gen_head'] or 'none'}; proposal pending: {info['proposal_pending']}; "
                 f"open TODOs: {info['open_todos']}")
    lines.append("tokens: " + ", ".join(f"{k} {v['total_tokens']}" for k, v in info["tokens"].items()))
    return "\n".join(lines)
