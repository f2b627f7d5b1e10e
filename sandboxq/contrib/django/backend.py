"""``SandboxqBackend``: Django's tasks framework on sandboxq queues.

A task's ``queue_name`` is the sandboxq queue. Each enqueued task is one job
named ``django.task`` whose data is the task's path, arguments and backend
alias (JSON); the job's id is the ``TaskResult``'s id. Workers run it with
``sandboxq worker sandboxq.contrib.django`` (see :mod:`.worker`).

Priorities: Django's run from -100 to 100, higher first; sandboxq's lower
first. A task of Django priority ``p`` is a job of priority ``-p``.
"""

from __future__ import annotations

import builtins
import re
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sandboxq import errors
from sandboxq.aio import AsyncQueue
from sandboxq.contrib.django.compat import (
    DEFAULT_TASK_QUEUE_NAME,
    BaseTaskBackend,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)
from sandboxq.core import check_defaults
from sandboxq.job import JobRecord
from sandboxq.keys import QueueKeys
from sandboxq.payload import to_json
from sandboxq.queue import Job, Queue

#: The name of every job that runs a Django task.
JOB_NAME = "django.task"

#: The task statuses (``Any``: Django's enums are untyped, and a type
#: checker takes their members for the tuples that define them).
READY: Any = TaskResultStatus.READY
RUNNING: Any = TaskResultStatus.RUNNING
SUCCESSFUL: Any = TaskResultStatus.SUCCESSFUL
FAILED: Any = TaskResultStatus.FAILED

#: sandboxq job states as task statuses (the framework has no "cancelled").
STATUSES = {
    "waiting": READY,
    "delayed": READY,
    "waiting-children": READY,
    "waiting-deps": READY,
    "active": RUNNING,
    "completed": SUCCESSFUL,
    "failed": FAILED,
    "cancelled": FAILED,
}

#: The exception classes named for a job that failed without a Python
#: exception of its own (a timeout, a crashed child, a stall), and for a
#: cancelled one.
WORKER_FAILURE = f"{errors.JobFailed.__module__}.{errors.JobFailed.__qualname__}"
CANCELLED = f"{errors.JobCancelled.__module__}.{errors.JobCancelled.__qualname__}"

#: The framework keeps nothing about which worker ran an attempt; sandboxq
#: counts them. ``worker_ids`` holds this once per attempt, so the result's
#: ``attempts`` (its length) is right.
WORKER_ID = "sandboxq"


def improperly_configured(message: str) -> Exception:
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    return ImproperlyConfigured(message)  # type: ignore[no-any-return]


def use_tz() -> bool:
    from django.conf import settings  # type: ignore[import-untyped]

    return bool(settings.USE_TZ)


class SandboxqBackend(BaseTaskBackend):
    """Run Django tasks on sandboxq.

    ``TASKS = {"default": {"BACKEND": "sandboxq.contrib.django.SandboxqBackend",
    "QUEUES": ["default", "emails"], "OPTIONS": {"url": "redis://...",
    "attempts": 3, "timeout": 60}}}``: ``url`` is the Redis URL (default
    ``$SANDBOXQ_REDIS_URL``); the other options are ``Queue`` defaults (any
    option of ``Queue.add`` except ``job_id`` and ``priority``, which comes
    from the task). ``ENQUEUE_ON_COMMIT: True`` (beside ``OPTIONS``) holds
    ``enqueue()`` inside a transaction until it commits.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if not self.queues:
            raise improperly_configured(
                f"TASKS[{alias!r}]['QUEUES'] is empty: list the queues sandboxq serves "
                f"(default: [{DEFAULT_TASK_QUEUE_NAME!r}])"
            )
        for name in sorted(self.queues):
            try:
                QueueKeys.for_queue(name)
            except (TypeError, ValueError) as exc:
                raise improperly_configured(f"TASKS[{alias!r}]['QUEUES']: {exc}") from None
        options = dict(params.get("OPTIONS") or {})
        self.url: str | None = options.pop("url", None)
        if "priority" in options:
            raise improperly_configured(
                f"TASKS[{alias!r}]['OPTIONS'] sets a priority: a task's priority comes "
                "from the task (@task(priority=...) or .using(priority=...))"
            )
        try:
            self.defaults = check_defaults(options)
        except (TypeError, ValueError) as exc:
            raise improperly_configured(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from None
        #: Older versions of the framework read ENQUEUE_ON_COMMIT (default
        #: True) themselves; Django 6.0 dropped it, and here it is opt-in.
        self.enqueue_on_commit = bool(params.get("ENQUEUE_ON_COMMIT", False))
        self._queues: dict[str, Queue] = {}
        self._async_queues: dict[str, AsyncQueue] = {}

    # -- the queues ------------------------------------------------------------------
    def queue(self, name: str) -> Queue:
        """The sandboxq queue of that name (one per name, made on first use)."""
        if name not in self._queues:
            self._queues[name] = Queue(name, self.url, defaults=self.defaults)
        return self._queues[name]

    def async_queue(self, name: str) -> AsyncQueue:
        """The asyncio queue of that name (one per name, made on first use;
        it keeps a client per event loop)."""
        if name not in self._async_queues:
            self._async_queues[name] = AsyncQueue(name, self.url, defaults=self.defaults)
        return self._async_queues[name]

    def close(self) -> None:
        """Close the clients of the blocking queues (``task_backends.close_all()``)."""
        for queue in self._queues.values():
            queue.client.close()
        self._queues.clear()

    async def aclose(self) -> None:
        """Close the clients of the running event loop's queues (e.g. when an
        ASGI app shuts down); other loops' clients are left alone."""
        for queue in self._async_queues.values():
            await queue.close()

    # -- enqueueing ------------------------------------------------------------------
    def _prepare(
        self, task: Task[Any, Any], args: Any, kwargs: Any
    ) -> tuple[TaskResult[Any], dict[str, Any], dict[str, Any]]:
        """The new result, the job's data and its ``add`` options; raises
        before anything is written."""
        self.validate_task(task)
        path = task.module_path
        try:  # as the result will (the framework's JSON types), saying which task
            args, kwargs = normalize_json(args), normalize_json(kwargs)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the arguments of task {path} are not JSON-serializable: {exc}"
            ) from None
        result = task_result(task, uuid.uuid4().hex, READY, args, kwargs)
        data = {"task": path, "args": result.args, "kwargs": result.kwargs, "backend": self.alias}
        to_json(data, f"the arguments of task {path}")  # also refuses NaN and infinities
        options: dict[str, Any] = {"job_id": result.id, "priority": -task.priority}
        if task.run_after is not None:
            options["delay"] = seconds_until(task.run_after)
        return result, data, options

    def _enqueued(self, result: TaskResult[Any], job: JobRecord) -> None:
        object.__setattr__(result, "enqueued_at", self.time(job.created_at))
        task_enqueued.send(type(self), task_result=result)

    def _add(self, result: TaskResult[Any], data: Any, options: dict[str, Any]) -> None:
        job = self.queue(result.task.queue_name).add(JOB_NAME, data, **options)
        self._enqueued(result, job)

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Add the task's job, or with ENQUEUE_ON_COMMIT inside a transaction,
        add it when the transaction commits (never, if it rolls back). The
        result's ``id`` is known at once; ``enqueued_at`` is set once added."""
        result, data, options = self._prepare(task, args, kwargs)
        add = partial(self._add, result, data, options)
        if self.enqueue_on_commit:
            from django.db import transaction  # type: ignore[import-untyped]

            transaction.on_commit(add)  # runs at once outside a transaction
        else:
            add()
        return result

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """``enqueue`` on ``sandboxq.aio``. It adds at once: async code holds
        no transaction (Django's transactions are sync-only)."""
        result, data, options = self._prepare(task, args, kwargs)
        job = await self.async_queue(task.queue_name).add(JOB_NAME, data, **options)
        self._enqueued(result, job)
        return result

    # -- results ---------------------------------------------------------------------
    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The result of a task enqueued on any of this backend's queues;
        :class:`TaskResultDoesNotExist` if there is none (any more)."""
        return self.to_result(self.get_job(result_id))

    def get_job(self, result_id: str) -> Job:
        """The sandboxq job behind a result, for what the framework's result
        does not carry (``progress``, ``logs()``, ``cancel()``);
        :class:`TaskResultDoesNotExist` if there is none (any more)."""
        for name in sorted(self.queues):
            job = self.queue(name).get_job(result_id)
            if job is not None and job.name == JOB_NAME:
                return job
        raise TaskResultDoesNotExist(result_id)

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        """``get_result`` on ``sandboxq.aio``."""
        for name in sorted(self.queues):
            job = await self.async_queue(name).get_job(result_id)
            if job is not None and job.name == JOB_NAME:
                return self.to_result(job)
        raise TaskResultDoesNotExist(result_id)

    def to_result(self, job: JobRecord) -> TaskResult[Any]:
        """A job of this backend as the framework's result."""
        from django.utils.module_loading import import_string  # type: ignore[import-untyped]

        data = job.data
        task = import_string(data["task"]).using(
            priority=-job.priority, queue_name=job.queue.name, backend=self.alias
        )
        status = STATUSES.get(job.state, READY)
        result = task_result(
            task,
            job.id,
            status,
            data["args"],
            data["kwargs"],
            enqueued=self.time(job.created_at),
            started=self.time(job.started_at),
            finished=self.time(job.finished_at),
            errors=job_errors(job),
            attempts=job.attempts_made + (status == RUNNING),
        )
        if status == SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.result)
        return result

    @staticmethod
    def time(epoch: float | None) -> datetime | None:
        """A job's time as Django's ``timezone.now()`` gives times: aware
        (UTC) with ``USE_TZ``, naive local time without."""
        if epoch is None:
            return None
        return datetime.fromtimestamp(epoch, UTC) if use_tz() else datetime.fromtimestamp(epoch)


def task_result(
    task: Task[Any, Any],
    result_id: str,
    status: Any,
    args: Any,
    kwargs: Any,
    *,
    enqueued: datetime | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
    errors: list[TaskError] | None = None,
    attempts: int = 0,
) -> TaskResult[Any]:
    """The framework's result of one task run on ``task``'s backend."""
    return TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=enqueued,
        started_at=started,
        finished_at=finished,
        last_attempted_at=started,
        args=args,
        kwargs=kwargs,
        backend=task.backend,
        errors=errors or [],
        worker_ids=[WORKER_ID] * attempts,
    )


def seconds_until(when: datetime) -> float:
    """How long until ``when`` (0 if it is past): a ``run_after`` as a delay."""
    now = datetime.now(UTC) if when.tzinfo is not None else datetime.now()
    return max((when - now).total_seconds(), 0.0)


def job_errors(job: JobRecord) -> list[TaskError]:
    """The job's error as the framework's: sandboxq keeps the last attempt's
    error and traceback only."""
    if job.state == "cancelled":  # the error says by whom and why
        text = "\n".join(filter(None, [job.error, job.traceback])) or "cancelled"
        return [TaskError(exception_class_path=CANCELLED, traceback=text)]
    if not job.error:
        return []
    if job.traceback:
        path = exception_path(job.error, job.traceback) or WORKER_FAILURE
        return [TaskError(exception_class_path=path, traceback=job.traceback)]
    # Failed around the task, not in it: a timeout, a crashed child, a stall.
    return [TaskError(exception_class_path=WORKER_FAILURE, traceback=job.error)]


def exception_path(error: str, traceback: str) -> str | None:
    """The path of the exception class behind a job's error.

    The worker stores ``Name: message`` and the traceback, whose last
    ``Name`` line is qualified by the class's module (``myapp.tasks.Boom:
    message``), except for builtins (``ValueError: message``). None when
    the traceback does not name the class."""
    name = error.split(":", 1)[0]
    if not name.isidentifier():
        return None
    line = re.compile(rf"((?:\w+\.)*){re.escape(name)}(?::|$)")
    for text in reversed(traceback.splitlines()):
        found = line.match(text.lstrip(" |"))  # "|": lines of an exception group
        if found is None:
            continue
        if found.group(1):
            return found.group(1) + name
        return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else None
    return None
