from loop.trainer.command import main
from loop.util.exiting import exit_process

exit_process(main())
