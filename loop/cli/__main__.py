"""`python -m loop.cli ...` is `llmloop ...`."""
from loop.cli.main import entry

entry()
