"""Say so in the log when a process reaches for the network: a Python audit hook that prints one
line per host a socket lookup or connect names. Runs have no network (sandbox_network: false), so
every such line is an attempt that could only fail, slow a run, or hang it; the line makes it
visible instead of a library's warning buried in a traceback."""
from __future__ import annotations

import socket
import sys

MARK = "[llmloop] network attempt:"
_seen: set[str] = set()


def _hook(event: str, args: tuple) -> None:
    if event == "socket.getaddrinfo":
        where = f"lookup {args[0]}:{args[1]}"
    elif event == "socket.connect" and len(args) > 1 and isinstance(args[1], tuple) \
            and getattr(args[0], "family", None) in (socket.AF_INET, socket.AF_INET6):
        where = f"connect {args[1][0]}:{args[1][1]}"        # Unix sockets (loader workers' fd passing) are local
    else:
        return
    if where not in _seen:
        _seen.add(where)
        print(f"{MARK} {where}", file=sys.stderr, flush=True)


def watch_network() -> None:
    """Install the hook for the rest of this process (audit hooks cannot be removed)."""
    sys.addaudithook(_hook)
