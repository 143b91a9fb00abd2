"""`python -m loop.cli ...` is `llmloop ...`."""
import sys

from loop.cli.main import main

sys.exit(main())
