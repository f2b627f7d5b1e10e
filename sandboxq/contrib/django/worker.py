"""The worker side: ``python manage.py sandboxq_worker`` (with
``"sandboxq.contrib.django"`` in ``INSTALLED_APPS``), or
``DJANGO_SETTINGS_MODULE=mysite.settings sandboxq worker sandboxq.contrib.django``.

Importing :mod:`sandboxq.contrib.django` calls :func:`prepare`: in a process
where Django is not set up yet (the worker's parent, which imports handler
modules before it forks) it runs ``django.setup()``, so every child starts
with the apps loaded; it registers :func:`run_task` for every queue of every
``SandboxqBackend`` in ``TASKS``; it has each child forget the database
connections it inherited; and it has the worker serve the queues and the
Redis its backends name (:func:`settle_worker_arguments`).
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sandboxq import handler, logs, on_child_start
from sandboxq.addresses import redact
from sandboxq.cli import on_worker_arguments
from sandboxq.connection import resolve_url
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


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxqTaskContext(TaskContext):
    """The context a task declared with ``@task(takes_context=True)`` gets
    from this backend: the framework's (``task_result``, ``attempt``) and
    the sandboxq job's progress and log, so a task reports them without
    importing sandboxq: ``context.update_progress(40)``,
    ``context.log("...")``. (Other backends' contexts have neither.)"""

    job: JobContext

    def update_progress(self, progress: Any) -> None:
        """Report progress (a number or any JSON), as
        :meth:`sandboxq.JobContext.update_progress`; read back with
        ``backend.get_job(result.id).progress``."""
        self.job.update_progress(progress)

    def log(self, line: str) -> None:
        """Add a line to the job's log, as :meth:`sandboxq.JobContext.log`."""
        self.job.log(line)


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
    on_worker_arguments(settle_worker_arguments)


def served_queues() -> set[str]:
    """The queues of every ``SandboxqBackend`` (or subclass) in ``TASKS``."""
    queues: set[str] = set()
    for params in sandboxq_settings().values():
        queues.update(params.get("QUEUES", [DEFAULT_TASK_QUEUE_NAME]))
    return queues


def sandboxq_settings() -> dict[str, dict[str, Any]]:
    """The ``TASKS`` entries whose backend is a ``SandboxqBackend`` (or a
    subclass), by alias."""
    from django.conf import settings
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]

    found = {}
    for alias, params in (getattr(settings, "TASKS", None) or {}).items():
        try:
            backend = import_string(params["BACKEND"])
        except ImportError:
            continue  # the framework reports it when that backend is used
        if isinstance(backend, type) and issubclass(backend, SandboxqBackend):
            found[alias] = params
    return found


def settle_worker_arguments(args: argparse.Namespace) -> None:
    """Have the worker serve the queues and the Redis of the backends in
    ``TASKS``: run by ``sandboxq worker`` (and ``manage.py sandboxq_worker``)
    on its parsed command line.

    The backends served are ``args.backend`` (``--backend`` of the manage.py
    command) if set, else those with a queue in ``--queue``, else all. With
    no ``--queue`` the worker serves all their queues. Their Redis is their
    ``OPTIONS["url"]``; ``--url``, then ``$SANDBOXQ_REDIS_URL``, then the
    local default, only for a backend without one. Raises ValueError when
    the backends served are on different Redis servers (one worker serves
    one), or when ``--url`` names another Redis than a backend's URL.
    """
    alias = getattr(args, "backend", None)
    asked = set(args.queues or ())
    backends = chosen_backends(alias, asked)
    if not backends:
        return  # the queues asked for are no task queues: nothing to settle
    if alias is not None and asked - backends[alias].queues:
        outside = ", ".join(sorted(asked - backends[alias].queues))
        raise ValueError(f"--queue {outside}: not a queue of TASKS[{alias!r}]['QUEUES']")
    if not asked:
        args.queues = sorted(set().union(*(backend.queues for backend in backends.values())))
    args.url = backends_url(backends, args.url)
    logs.log.info(
        "serving TASKS %s at %s", ", ".join(map(repr, sorted(backends))), redact(args.url)
    )


def chosen_backends(alias: str | None, asked: set[str]) -> dict[str, SandboxqBackend]:
    """The backend named ``alias``, else those with a queue in ``asked``,
    else all sandboxq backends, by alias (made, so their settings are
    checked: a bad one is a ValueError naming it)."""
    from django.core.exceptions import ImproperlyConfigured

    from sandboxq.contrib.django.compat import task_backends

    found = sandboxq_settings()
    if alias is not None and alias not in found:
        names = ", ".join(map(repr, sorted(found))) or "none"
        raise ValueError(f"--backend {alias!r}: no SandboxqBackend of that name in TASKS ({names})")
    if alias is not None:
        wanted = [alias]
    else:
        queues = {
            name: set(params.get("QUEUES", [DEFAULT_TASK_QUEUE_NAME]))
            for name, params in found.items()
        }
        wanted = [name for name in found if not asked or asked & queues[name]]
    try:
        return {name: task_backends[name] for name in wanted}
    except ImproperlyConfigured as exc:
        raise ValueError(str(exc)) from None


def backends_url(backends: dict[str, SandboxqBackend], given: str | None) -> str:
    """The one Redis URL the backends enqueue to; ``given`` (``--url``)
    stands in for ``$SANDBOXQ_REDIS_URL`` for those without a URL."""
    for alias, backend in backends.items():
        if given and backend.url and backend.url != given:
            raise ValueError(
                f"--url {redact(given)} is not the Redis TASKS[{alias!r}] enqueues to "
                f"({redact(backend.url)}): leave --url out, the worker serves the Redis "
                "of the backends' OPTIONS"
            )
    urls = {alias: backend.url or resolve_url(given) for alias, backend in backends.items()}
    if len(set(urls.values())) > 1:
        listed = ", ".join(f"{alias!r} at {redact(url)}" for alias, url in sorted(urls.items()))
        raise ValueError(
            f"the TASKS backends served are on different Redis servers ({listed}); a worker "
            "serves one: run one worker per backend (manage.py sandboxq_worker --backend "
            "NAME, or --queue with the queues of one backend)"
        )
    return next(iter(urls.values()))


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
            value = task.call(SandboxqTaskContext(task_result=result, job=job), *args, **kwargs)
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
