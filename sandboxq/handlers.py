"""Handlers: the functions that run jobs, and what they receive.

A user module registers handlers with the ``@handler`` decorator; a worker
imports the module and finds them in the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from sandboxq.caps import (
    MAX_LOG_LINE_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_STEP_KEY_BYTES,
    MAX_STEP_RESULT_BYTES,
    clip_json,
    clip_text,
)
from sandboxq.errors import StepNotRecorded
from sandboxq.keys import validate_name
from sandboxq.payload import to_json

#: How a step's result reaches Redis: ``record(job_id, key, result_json)``
#: returns step.lua's status ("recorded", "known", "lost" or "full").
StepRecorder = Callable[[str, str, str], str]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Handler:
    queue: str
    name: str
    func: Callable[[JobContext], Any]
    timeout: float | None = None


#: Every handler registered by ``@handler``, by (queue, job name).
REGISTRY: dict[tuple[str, str], Handler] = {}


def handler(
    queue: str, name: str | None = None, *, timeout: float | None = None
) -> Callable[[F], F]:
    """Register a function as the handler of job ``name`` (default: the
    function's name) in ``queue``. ``timeout`` (seconds) applies to every job
    of that name unless the job sets its own."""
    validate_name("queue name", queue)
    if timeout is not None and timeout <= 0:
        raise ValueError(f"handler timeout must be > 0 seconds, got {timeout}")

    def register(func: F) -> F:
        job_name = validate_name("job name", name or func.__name__)
        key = (queue, job_name)
        existing = REGISTRY.get(key)
        if existing is not None and existing.func is not func:
            raise ValueError(
                f"job {job_name!r} of queue {queue!r} already has a handler: "
                f"{existing.func.__module__}.{existing.func.__qualname__}"
            )
        REGISTRY[key] = Handler(queue, job_name, func, timeout)
        return func

    return register


def handlers_for(
    queue: str, handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None
) -> dict[str, Handler]:
    """The handlers of ``queue`` by job name: from a ``{name: function}``
    mapping, a list of :class:`Handler`, or (``None``) the registry."""
    if handlers is None:
        return {name: h for (q, name), h in REGISTRY.items() if q == queue}
    if isinstance(handlers, Mapping):
        return {name: Handler(queue, name, func) for name, func in handlers.items()}
    return {h.name: h for h in handlers if h.queue == queue}


class JobContext:
    """What a handler receives: the job's identity and data, and a way to
    report progress and log lines. In a worker child these travel to the
    parent, which writes them to Redis; children never talk to Redis.

    Attributes:
        queue: The name of the job's queue.
        id: The job's id.
        name: The job's name.
        data: The job's data, decoded from JSON.
        attempts_made: Attempts that ended (failed, or crashed) before this one.
        retries: Times the handler raised ``Retry`` for this job; they
            spend no attempt.
    """

    __slots__ = (
        "_children",
        "_record",
        "_report",
        "_steps",
        "attempts_made",
        "data",
        "id",
        "name",
        "queue",
        "retries",
    )

    def __init__(
        self,
        queue: str,
        job_id: str,
        name: str,
        data: Any,
        attempts_made: int,
        report: Callable[[str, str, str], None],
        retries: int = 0,
        children: dict[str, Any] | None = None,
        steps: dict[str, Any] | None = None,
        record: StepRecorder | None = None,
    ) -> None:
        self.queue = queue
        self.id = job_id
        self.name = name
        self.data = data
        #: Attempts that ended (failed, or crashed) before this one.
        self.attempts_made = attempts_made
        #: Times the handler raised Retry for this job (they spend no attempt).
        self.retries = retries
        self._children = children
        self._report = report
        #: Durable steps recorded by this job's earlier attempts (and this one).
        self._steps = dict(steps or {})
        self._record = record

    def __repr__(self) -> str:
        return f"<JobContext {self.queue}/{self.id} {self.name!r}>"

    def children_results(self) -> dict[str, Any]:
        """In a flow parent: each finished child's result, by ``"queue:id"``."""
        return dict(self._children or {})

    def update_progress(self, value: Any) -> None:
        """Record progress: any JSON value, e.g. a percentage or a dict. One
        over 4 KiB as JSON is stored as a string of its clipped text."""
        encoded = to_json(value, "progress").decode()
        self._report(self.id, "progress", clip_json(encoded, MAX_PROGRESS_BYTES))

    def log(self, message: str) -> None:
        """Append a line to the job's log (clipped to 8 KiB)."""
        self._report(self.id, "log", clip_text(str(message), MAX_LOG_LINE_BYTES))

    def step(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this job, whatever happens to
        its attempts: the first time ``key`` is reached, call ``fn``, record
        its result (JSON) in Redis, and return it; on any later attempt
        (after an error, a crash, a timeout, a stall on another worker, a
        manual retry) return the recorded result without calling ``fn``.

        The result is in Redis before this returns. ``fn`` that raises
        records nothing, and the exception propagates. With an ``async def``
        ``fn``, ``await job.step(...)``. A crash inside ``fn`` before it
        returns can still repeat ``fn``: make it idempotent where it can be,
        e.g. with the provider's idempotency key ``f"{job.id}:{key}"``.
        Raises :class:`sandboxq.StepNotRecorded` when the result cannot be
        recorded (the worker lost the job, or it has 1,000 steps already)."""
        key = _step_key(key)
        if inspect.iscoroutinefunction(fn):
            return self._step_async(key, fn, args, kwargs)
        if key in self._steps:
            return self._steps[key]
        return self._keep(key, fn(*args, **kwargs))

    async def _step_async(
        self,
        key: str,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if key in self._steps:
            return self._steps[key]
        return self._keep(key, await fn(*args, **kwargs))

    def _keep(self, key: str, result: Any) -> Any:
        """Record a step's result; return it as JSON gives it back, so the
        first attempt sees what later ones will."""
        raw = to_json(result, f"the result of step {key!r}")
        if len(raw) > MAX_STEP_RESULT_BYTES:
            raise ValueError(
                f"the result of step {key!r} is {len(raw)} bytes as JSON, over the limit of "
                f"{MAX_STEP_RESULT_BYTES}: record an id or a path, not the data"
            )
        if self._record is None:
            raise RuntimeError("job.step needs a worker (or sandboxq.testing) to record steps")
        status = self._record(self.id, key, raw.decode())
        if status == "lost":
            raise StepNotRecorded(
                f"step {key!r} of job {self.id} was not recorded: this worker no longer holds "
                "the job"
            )
        if status == "full":
            raise StepNotRecorded(f"step {key!r} of job {self.id} was not recorded: too many steps")
        self._steps[key] = value = orjson.loads(raw)
        return value


def _step_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a step key must be a non-empty str, got {key!r}")
    if len(key.encode()) > MAX_STEP_KEY_BYTES:
        raise ValueError(f"a step key must be at most {MAX_STEP_KEY_BYTES} bytes, got {key!r}")
    return key
