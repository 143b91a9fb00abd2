import sys

from loop.trainer.command import main

sys.exit(main())
