"""``python manage.py sandboxq_worker [--backend NAME] [MODULE...] [worker options]``:
``sandboxq worker`` inside the Django project, serving the queues and the
Redis of its ``SandboxqBackend`` entries in ``TASKS``.

The worker options are those of ``sandboxq worker`` (one definition, in
:func:`sandboxq.cli.add_worker_options`); ``--backend`` picks one backend
of several. The exit code is the worker's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand  # type: ignore[import-untyped]

from sandboxq.cli import add_worker_options, run_worker


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run a sandboxq worker for this project's tasks: the queues and the Redis of the "
        "SandboxqBackend entries in TASKS (--url and $SANDBOXQ_REDIS_URL only for a "
        "backend whose OPTIONS name no url)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "modules",
            nargs="*",
            metavar="MODULE",
            help="more modules to import in the worker's parent before it forks, e.g. "
            "task modules (myapp.tasks), so that children start with them loaded",
        )
        parser.add_argument(
            "--backend",
            metavar="NAME",
            help="serve this TASKS backend only [every SandboxqBackend; they must share one Redis]",
        )
        add_worker_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        from django.db import connections  # type: ignore[import-untyped]

        # As the worker's import of sandboxq.contrib.django does when it sets
        # Django up: no connection of this process is shared with children.
        connections.close_all()
        options["modules"] = ["sandboxq.contrib.django", *options["modules"]]
        code = run_worker(argparse.Namespace(**options))
        if code:
            sys.exit(code)
