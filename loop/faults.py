"""Named fault points for crash tests: when LLMLOOP_FAULT names a point, the process kills itself
there with SIGKILL (a real kill -9, no cleanup). Unset in normal use: one dict lookup."""
from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    if os.environ.get("LLMLOOP_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
