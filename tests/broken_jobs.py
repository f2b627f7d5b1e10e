"""A handler module that cannot boot, for the worker's boot-error tests.

``SANDBOXQ_BROKEN=import`` (the default): importing it raises.
``SANDBOXQ_BROKEN=fork``: it imports fine and registers the handlers of
``tests.jobs``, but every forked child dies at birth (exit code 1).
Only worker subprocesses import it; pytest never collects it.
"""

from __future__ import annotations

import os

MODE = os.environ.get("SANDBOXQ_BROKEN", "import")

if MODE == "import":
    raise RuntimeError("tests.broken_jobs: this module fails at import on purpose")

from tests import jobs  # noqa: E402,F401  (registers the handlers)

if MODE == "fork":
    os.register_at_fork(after_in_child=lambda: os._exit(1))
