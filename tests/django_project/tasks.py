"""Tasks of the test project. Each is a module-level function, as the
framework requires, run by a real ``sandboxq worker`` in the tests."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sandboxq.contrib.django.compat import TaskContext, task
from tests.appending import append_line

#: With $SANDBOXQ_TEST_PARENT_DB set, the worker's parent opens a database
#: connection as it imports this module, before it forks: every child
#: inherits it, and ``inherited_connection`` says what became of it there.
PARENT_CONNECTION: Any = None
if os.environ.get("SANDBOXQ_TEST_PARENT_DB"):
    from django.db import connection as _connection

    _connection.ensure_connection()
    PARENT_CONNECTION = _connection.connection


class TaskBoom(Exception):
    """What ``explode`` raises (a class of the project, not a builtin)."""


@task()
def add(a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "pid": os.getpid()}


@task()
async def add_async(a: int, b: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"sum": a + b, "pid": os.getpid()}


@task()
def explode(message: str, builtin: bool = False) -> None:
    if builtin:
        raise ValueError(message)
    raise TaskBoom(message)


@task()
def unreturnable() -> object:
    return object()


@task()
def record(label: str, path: str) -> str:
    """Append ``label`` to the file at ``path``: the order tasks ran in."""
    append_line(path, label)
    return label


@task()
def read_note(pk: int) -> dict[str, Any]:
    from tests.django_project.models import Note

    return {"text": Note.objects.get(pk=pk).text, "pid": os.getpid()}


@task()
def wait_for_file(path: str, timeout: float = 20.0) -> str:
    """Run until the file at ``path`` exists (bounded), so a test sees the
    task RUNNING; returns its text."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)
    return Path(path).read_text()


@task()
def inherited_connection() -> dict[str, Any]:
    """Whether this child's queries run on a connection of its own, and
    whether the one inherited from the parent is still open (not closed)."""
    from django.db import connection

    from tests.django_project.models import Note

    Note.objects.count()
    try:
        PARENT_CONNECTION.execute("SELECT 1")
        inherited_open = True
    except Exception:
        inherited_open = False
    return {"own": connection.connection is not PARENT_CONNECTION, "inherited_open": inherited_open}


@task(takes_context=True)
def introspect(context: TaskContext) -> dict[str, Any]:
    return {"id": context.task_result.id, "attempt": context.attempt}


@task(takes_context=True)
def report(context: Any, percent: int) -> int:
    """Report progress and a log line through the task's context alone."""
    context.update_progress(percent)
    context.log(f"at {percent}%")
    return context.attempt  # type: ignore[no-any-return]
