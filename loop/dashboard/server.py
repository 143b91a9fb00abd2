"""Start the dashboard: the loopback check, the token (generated per start, printed once, written to a
0600 file), and uvicorn serving the app. Starlette and uvicorn are the optional extra `dashboard`:
imported here, on use, so the rest of llmloop never needs them."""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loop.config import DaemonConfig
from loop.dashboard import background
from loop.errors import ExitCode, LoopError
from loop.util.workspace import Workspace

TOKEN_FILE = "dashboard.token"      # under <workspace>/logs/ unless --token-file
DEFAULT_PORT = 8765                 # `llmloop dashboard` and `llmloop start --dashboard`


class DashboardError(LoopError):
    exit_code = ExitCode.CONFIG


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_file: Path | None = None
    allow_remote: bool = False
    poll_seconds: float = 3.0


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False            # a name other than localhost may resolve anywhere


def check_host(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise DashboardError(
            f"refusing to bind {host}: not a loopback address. The dashboard speaks plain HTTP, so the page "
            f"and the action token would travel unencrypted on the network. Bind 127.0.0.1 (the default) and "
            f"reach it through an SSH tunnel, or pass --allow-remote to bind {host} anyway.")


def allowed_hosts(host: str, allow_remote: bool) -> list[str]:
    """Host headers the app answers (empty: any, when remote access was asked for)."""
    return [] if allow_remote else sorted({"127.0.0.1", "localhost", "::1", "[::1]", host})


def write_token(path: Path, token: str) -> None:
    """The token in a file only its owner reads (0600, set on an existing file too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)


def serve(cfg: DaemonConfig, ws: Workspace, options: ServeOptions, say: Callable[[str], None] = print) -> int:
    check_host(options.host, options.allow_remote)
    try:
        import uvicorn

        from loop.dashboard.app import create_app
    except ImportError as exc:
        raise DashboardError(f"the dashboard needs starlette and uvicorn ({exc.name} is not installed): "
                             f"pip install 'llmloop[dashboard]'") from None
    from loop.dashboard.views import DashboardSettings, collect_secrets

    if (serving := background.running(ws)) is not None:
        raise DashboardError(f"a dashboard already serves {ws.root} at {serving.url} (pid {serving.pid}; its token "
                             f"is in {serving.token_file}): open that one, or stop it with `llmloop dashboard --stop`")
    ws.root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    token_path = Path(options.token_file) if options.token_file else ws.logs / TOKEN_FILE
    write_token(token_path, token)
    settings = DashboardSettings(cfg=cfg, ws=ws, token=token, secrets=collect_secrets(cfg, token),
                                 poll_seconds=options.poll_seconds,
                                 allowed_hosts=allowed_hosts(options.host, options.allow_remote))
    app = create_app(settings, warm=True, say=say)      # the first read happens here, before the URL is out
    host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{host}:{options.port}/"
    say(f"llmloop dashboard for {ws.root}: {url} (read-only without the token)")
    say(f"actions: {url}?token={token} (the token is also in {token_path}, mode 0600)")
    if not is_loopback(options.host):
        say(f"warning: bound to {options.host}, not a loopback address (--allow-remote): anyone who can reach "
            f"it reads the page; only the token allows actions")
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False)
    me = background.record(ws, url, token_path)          # so `start --dashboard` and `--stop` find it
    try:
        make_server(uvicorn, config, lambda: background.forget(ws, me.pid)).run()
    finally:
        background.forget(ws, me.pid)
    return 0


def make_server(uvicorn, config, on_shutdown: Callable[[], None]):
    """uvicorn's Server, calling `on_shutdown` once it has shut down: after a SIGTERM uvicorn
    re-raises the signal before `run()` returns, so a `finally` around it would not run."""
    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            on_shutdown()

    return Server(config)
