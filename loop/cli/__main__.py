"""`python -m loop.cli ...` is `llmloop ...`."""
from loop.cli.main import main
from loop.util.exiting import exit_process

exit_process(main())
