"""`python -m loop.phase run ...`: the PHASE command line (command.py)."""
from __future__ import annotations

import sys

from loop.phase.command import main

if __name__ == "__main__":
    sys.exit(main())
