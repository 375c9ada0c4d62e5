"""``python -m kdistill``: the same as the ``kdistill`` command (torchrun launches it this way)."""

import sys

from kdistill.cli.main import main

sys.exit(main())
