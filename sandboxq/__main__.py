"""``python -m sandboxq``: the same as the ``sandboxq`` command."""

import sys

from sandboxq.cli import main

sys.exit(main())
