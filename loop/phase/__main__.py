"""`python -m loop.phase run ...`: the PHASE command line (command.py)."""
from __future__ import annotations

from loop.phase.command import main
from loop.util.exiting import exit_process

if __name__ == "__main__":
    exit_process(main())
