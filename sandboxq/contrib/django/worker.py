"""The worker side: ``DJANGO_SETTINGS_MODULE=mysite.settings sandboxq worker
sandboxq.contrib.django -q default``.

Importing :mod:`sandboxq.contrib.django` calls :func:`prepare`: in a process
where Django is not set up yet (the worker's parent, which imports handler
modules before it forks) it runs ``django.setup()``, so every child starts
with the apps loaded; it registers :func:`run_task` for every queue of every
``SandboxqBackend`` in ``TASKS``; and it has each child forget the database
connections it inherited.
"""

from __future__ import annotations

import os
import time
import traceback
from contextvars import ContextVar
from typing import Any

from sandboxq import handler, on_child_start
from sandboxq.contrib.django.backend import (
    FAILED,
    JOB_NAME,
    RUNNING,
    SUCCESSFUL,
    SandboxqBackend,
    task_result,
)
from sandboxq.contrib.django.compat import (
    DEFAULT_TASK_QUEUE_NAME,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    normalize_json,
    task_finished,
    task_started,
)
from sandboxq.handlers import JobContext

#: DB-API connections a child inherited, kept referenced so that nothing
#: finalizes (closes) them: see :func:`forget_inherited_connections`.
_inherited: list[Any] = []

#: The job a task runs as, while it runs (:func:`current_job`).
_running: ContextVar[JobContext | None] = ContextVar("sandboxq_django_job", default=None)


def current_job() -> JobContext:
    """The sandboxq job the calling task runs as, for what the framework
    has no word for: ``current_job().update_progress(40)``, ``.log(...)``.
    Raises RuntimeError outside a task run by a sandboxq worker."""
    job = _running.get()
    if job is None:
        raise RuntimeError("current_job() is for a Django task that a sandboxq worker runs")
    return job


def prepare() -> None:
    """Set Django up unless something began to already, then register the
    handler and the child hook. Raises ``ImproperlyConfigured`` when there
    are no settings, or (in the worker) no sandboxq backend in them."""
    import django  # type: ignore[import-untyped]
    from django.apps import apps  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    # apps.loading stays set once populating began: a project that set itself
    # up, or one importing this module as its TASKS backend while it sets up.
    setting_up = not apps.loading
    if setting_up:
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ImproperlyConfigured(
                "sandboxq.contrib.django sets Django up for the worker: set "
                "DJANGO_SETTINGS_MODULE (e.g. DJANGO_SETTINGS_MODULE=mysite.settings "
                "sandboxq worker sandboxq.contrib.django)"
            )
        django.setup()
        from django.db import connections  # type: ignore[import-untyped]

        # No child forks yet: closing here says goodbye on no shared socket.
        connections.close_all()
    queues = served_queues()
    if setting_up and not queues:
        raise ImproperlyConfigured(
            "no TASKS backend is sandboxq.contrib.django.SandboxqBackend: "
            "the worker has no queue to serve"
        )
    for name in sorted(queues):
        handler(name, JOB_NAME)(run_task)
    on_child_start(forget_inherited_connections)


def served_queues() -> set[str]:
    """The queues of every ``SandboxqBackend`` (or subclass) in ``TASKS``."""
    from django.conf import settings
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]

    queues: set[str] = set()
    for params in (getattr(settings, "TASKS", None) or {}).values():
        try:
            backend = import_string(params["BACKEND"])
        except ImportError:
            continue  # the framework reports it when that backend is used
        if isinstance(backend, type) and issubclass(backend, SandboxqBackend):
            queues.update(params.get("QUEUES", [DEFAULT_TASK_QUEUE_NAME]))
    return queues


def forget_inherited_connections() -> None:
    """In each child, before its first job: drop the database connections
    inherited from the parent without closing them.

    ``connections.close_all()`` would close them, and closing a PostgreSQL or
    MySQL connection sends the server a goodbye on its socket, which the
    parent shares: the parent's session would end under it. Forgetting them
    is enough (Django connects again when a task uses the database), and
    keeping them referenced means no finalizer closes them later (a child
    leaves with ``os._exit``). The parent closes its connections before the
    first fork, so usually there is nothing to forget.
    """
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


def run_task(job: JobContext) -> Any:
    """The handler of ``django.task`` jobs: import the task by its path and
    call it with the job's arguments; return its value (JSON).

    Database connections are checked before and after, as Django does
    around each request (``close_old_connections``): a connection past
    ``CONN_MAX_AGE`` or broken by the last task is closed, so a long-lived
    child neither keeps one forever nor hands a broken one to the next task.
    """
    from django.db import close_old_connections
    from django.utils.module_loading import import_string

    data = job.data
    path, args, kwargs = data["task"], data["args"], data["kwargs"]
    found = import_string(path)
    if not isinstance(found, Task):
        raise TypeError(f"{path} is not a task: decorate it with @task")
    task = found.using(queue_name=job.queue, backend=data["backend"])
    started = SandboxqBackend.time(time.time())
    result = task_result(
        task, job.id, RUNNING, args, kwargs, started=started, attempts=job.attempts_made + 1
    )
    sender = type(task.get_backend())
    task_started.send(sender, task_result=result)
    close_old_connections()
    running = _running.set(job)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        try:
            value = normalize_json(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {path} returned a value JSON cannot hold: {exc}") from None
    except Exception as exc:
        error = TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback=traceback.format_exc(),
        )
        finish(result, sender, FAILED, errors=[error])
        raise
    finally:
        _running.reset(running)
        close_old_connections()
    finish(result, sender, SUCCESSFUL, _return_value=value)
    return value


def finish(result: TaskResult[Any], sender: type, status: Any, **changes: Any) -> None:
    """Send ``task_finished`` for the run that just ended."""
    changes |= {"status": status, "finished_at": SandboxqBackend.time(time.time())}
    for name, value in changes.items():
        object.__setattr__(result, name, value)
    task_finished.send(sender, task_result=result)
