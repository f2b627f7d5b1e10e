"""Handlers: the functions that run jobs, and what they receive.

A user module registers handlers with the ``@handler`` decorator; a worker
imports the module and finds them in the registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import orjson

from sandboxq.caps import (
    MAX_LOG_LINE_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_STEP_KEY_BYTES,
    MAX_STEP_RESULT_BYTES,
    MAX_STEPS,
    clip_json,
    clip_text,
)
from sandboxq.errors import StepNotRecorded, UnrecordableStep
from sandboxq.keys import validate_name
from sandboxq.payload import to_json

#: How a step's result reaches Redis: ``record(job_id, key, result_json)``
#: returns step.lua's status ("recorded", "known", "lost" or "full").
StepRecorder = Callable[[str, str, str], str]
#: The same for ``await job.step(...)`` in a worker child whose event loop
#: runs other jobs meanwhile (--async-concurrency): awaited, not blocking.
AsyncStepRecorder = Callable[[str, str, str], Awaitable[str]]

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


def handler_table(
    queues: Collection[str] | None,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
) -> dict[tuple[str, str], Handler]:
    """The handlers of ``queues`` (None: of every queue) by (queue, job name),
    from a ``{name: function}`` mapping (served on each of ``queues``), a
    list of :class:`Handler`, or (``None``) the registry. The one reading of
    a ``handlers`` argument: the worker's and ``EagerQueue``'s."""
    found: Iterable[Handler]
    if handlers is None:
        found = REGISTRY.values()
    elif isinstance(handlers, Mapping):
        found = [Handler(q, name, func) for q in queues or () for name, func in handlers.items()]
    else:
        found = handlers
    return {(h.queue, h.name): h for h in found if queues is None or h.queue in queues}


def handlers_for(
    queue: str, handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None
) -> dict[str, Handler]:
    """The handlers of ``queue`` by job name (see :func:`handler_table`)."""
    return {name: found for (_queue, name), found in handler_table([queue], handlers).items()}


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
        "_record_async",
        "_report",
        "_runs",
        "_steps",
        "_unrecorded_step",
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
        record_async: AsyncStepRecorder | None = None,
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
        #: How ``await job.step(...)`` records, where it must not block.
        self._record_async = record_async
        #: The steps under way, made by the first step (a context is made
        #: for every job; most never take a step).
        self._runs: _StepRuns | None = None
        #: The key of the first step whose function ran and whose result can
        #: never be recorded (UnrecordableStep): this attempt must not be
        #: retried, whatever the handler does with the error.
        self._unrecorded_step: str | None = None

    def __repr__(self) -> str:
        return f"<JobContext {self.queue}/{self.id} {self.name!r}>"

    def children_results(self) -> dict[str, Any]:
        """In a flow parent: each finished child's result, by ``"queue:id"``."""
        return dict(self._children or {})

    def dependency_results(self) -> dict[str, Any]:
        """In a job added with ``depends_on``: each completed dependency's
        result, by ``"queue:id"``."""
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

        One key runs once per job even when called concurrently (tasks of an
        ``asyncio.gather``, threads of a pool): a second caller waits for
        the first and returns the recorded result; if the first raised,
        the second calls ``fn`` itself, as a fresh call would.

        Raises, before calling ``fn``: ``RuntimeError`` with no worker (or
        ``sandboxq.testing``) to record steps, :class:`sandboxq.UnrecordableStep`
        when the job has recorded 1,000 steps. After ``fn`` ran:
        :class:`sandboxq.UnrecordableStep` when its result cannot be recorded
        (not JSON, over 64 KiB): the job then fails for good, so the side
        effect is not repeated; :class:`sandboxq.StepNotRecorded` when the
        worker no longer holds the job."""
        key = _step_key(key)
        if inspect.iscoroutinefunction(fn):
            return self._step_async(key, fn, args, kwargs)
        while True:
            found, mine = self._claim(key, None)
            if not isinstance(found, _Running):
                return found.value
            if mine:
                break
            if found.thread == threading.get_ident():
                raise _waits_for_itself(key)
            found.done.result()  # the first caller is done: look again
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self._release(key, found)
            raise
        return self._keep(key, result, found)

    async def _step_async(
        self,
        key: str,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        task = asyncio.current_task()
        while True:
            found, mine = self._claim(key, task)
            if not isinstance(found, _Running):
                return found.value
            if mine:
                break
            if found.task is task or (found.task is None and found.thread == threading.get_ident()):
                raise _waits_for_itself(key)
            await asyncio.wrap_future(found.done)
        try:
            result = await fn(*args, **kwargs)
        except BaseException:
            self._release(key, found)
            raise
        if self._record_async is None:
            return self._keep(key, result, found)
        try:
            raw = self._encode(key, result)
            status = await self._record_async(self.id, key, raw.decode())
            return self._kept(key, raw, status)
        finally:
            self._release(key, found)

    def _step_runs(self) -> _StepRuns:
        runs = self._runs
        if runs is None:
            with _NEW_RUNS:  # two threads' first steps make one
                if self._runs is None:
                    self._runs = _StepRuns()
                runs = self._runs
        return runs

    def _claim(self, key: str, task: asyncio.Task[Any] | None) -> tuple[_Running | _Recorded, bool]:
        """The step's recorded result; or the run of it under way, which the
        caller waits for; or a new run, the caller's own (True). Everything
        that can be checked before ``fn`` runs is checked here."""
        runs = self._step_runs()
        with runs.lock:
            if key in self._steps:
                return _Recorded(self._steps[key]), False
            if key in runs.unrecorded:
                kind, message = runs.unrecorded[key]
                raise kind(message)
            if key in runs.running:
                return runs.running[key], False
            if self._record is None:
                raise RuntimeError(
                    f"job.step needs a worker (or sandboxq.testing) to record steps: step {key!r} "
                    "was not run"
                )
            if len(self._steps) + len(runs.running) >= MAX_STEPS:
                raise UnrecordableStep(
                    f"step {key!r} was not run: job {self.id} has "
                    f"{len(self._steps) + len(runs.running)} steps recorded or running, and may "
                    f"record at most {MAX_STEPS}; not retried"
                )
            running = runs.running[key] = _Running(task)
            return running, True

    def _release(self, key: str, running: _Running) -> None:
        """The run of a step is over (recorded or not): wake its waiters."""
        runs = self._step_runs()
        with runs.lock:
            if runs.running.get(key) is running:
                del runs.running[key]
        running.done.set_result(None)

    def _keep(self, key: str, result: Any, running: _Running) -> Any:
        """Record a step's result; return it as JSON gives it back, so the
        first attempt sees what later ones will."""
        try:
            raw = self._encode(key, result)
            record = self._record
            assert record is not None, "checked by _claim"
            with self._step_runs().record_lock:  # one pipe, one question at a time
                status = record(self.id, key, raw.decode())
            return self._kept(key, raw, status)
        finally:
            self._release(key, running)

    def _kept(self, key: str, raw: bytes, status: str) -> Any:
        """The step's result once the worker answered ``status``: as JSON
        gives it back, or the error saying it was not recorded."""
        if status == "lost":
            self._not_recorded(
                key,
                StepNotRecorded,
                f"step {key!r} of job {self.id} ran but was not recorded: this worker no "
                "longer holds the job",
            )
        if status not in ("recorded", "known"):
            why = "the job has recorded the most steps it may"
            if status != "full":
                why = f"the worker answered {status!r}"
            self._not_recorded(key, UnrecordableStep, _ran_but(key, why))
        value = orjson.loads(raw)
        with self._step_runs().lock:
            self._steps[key] = value
        return value

    def _encode(self, key: str, result: Any) -> bytes:
        """The step's result as JSON, or the reason the job fails for good:
        ``fn`` ran, so running it again is what must not happen."""
        if inspect.isawaitable(result):
            # Nothing ran yet: the awaitable was made, never awaited.
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"step {key!r}: the function returned an awaitable, which a step cannot record; "
                "pass an async def function and await job.step(...)"
            )
        try:
            raw = to_json(result, "the result")
        except (TypeError, ValueError) as exc:
            self._not_recorded(key, UnrecordableStep, _ran_but(key, str(exc)))
        except Exception as exc:  # e.g. a value whose own methods raise while encoded
            why = f"encoding it raised {type(exc).__name__}"
            self._not_recorded(key, UnrecordableStep, _ran_but(key, why))
        if len(raw) > MAX_STEP_RESULT_BYTES:
            why = (
                f"the result is {len(raw)} bytes as JSON, over the limit of "
                f"{MAX_STEP_RESULT_BYTES}: record an id or a path, not the data"
            )
            self._not_recorded(key, UnrecordableStep, _ran_but(key, why))
        return raw

    def _not_recorded(self, key: str, kind: type[StepNotRecorded], message: str) -> NoReturn:
        """Raise ``kind(message)``, and remember it: the same key called again
        in this attempt raises it again instead of running its function a
        second time; and once a step's function ran without its result being
        kept, the attempt ends unrecoverable however the handler ends it
        (``execution.run``)."""
        runs = self._step_runs()
        with runs.lock:
            runs.unrecorded.setdefault(key, (kind, message))
            if kind is UnrecordableStep and self._unrecorded_step is None:
                self._unrecorded_step = key
        raise kind(message)


#: Held while a job context makes its _StepRuns.
_NEW_RUNS = threading.Lock()


class _StepRuns:
    """A job's durable steps under way, shared by its tasks and threads."""

    __slots__ = ("lock", "record_lock", "running", "unrecorded")

    def __init__(self) -> None:
        #: Guards the steps' state: steps may be called from several threads.
        self.lock = threading.Lock()
        #: Held while a step's result travels to Redis (one answer at a time).
        self.record_lock = threading.Lock()
        #: The steps whose function is running now, by key.
        self.running: dict[str, _Running] = {}
        #: The steps whose function ran but whose result was not recorded:
        #: the error to raise again if the key is called again.
        self.unrecorded: dict[str, tuple[type[StepNotRecorded], str]] = {}


@dataclass(frozen=True, slots=True)
class _Recorded:
    """A step's recorded result (which may be None)."""

    value: Any


class _Running:
    """A step whose function is running: where (its asyncio task, None for
    a plain call, and its thread), and a future its waiters wait on, in
    threads or on an event loop."""

    __slots__ = ("done", "task", "thread")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.thread = threading.get_ident()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Running: a waiter on an event loop that is cancelled cannot cancel it.
        self.done.set_running_or_notify_cancel()


def _waits_for_itself(key: str) -> RuntimeError:
    return RuntimeError(
        f"step {key!r} is already running in this thread or task, and would wait for "
        "itself: a step's function cannot call job.step with its own key"
    )


def _ran_but(key: str, why: str) -> str:
    return (
        f"step {key!r} ran but its result could not be recorded ({why}): its side effect "
        "happened and will not be repeated; not retried"
    )


def _step_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a step key must be a non-empty str, got {key!r}")
    if len(key.encode()) > MAX_STEP_KEY_BYTES:
        raise ValueError(f"a step key must be at most {MAX_STEP_KEY_BYTES} bytes, got {key!r}")
    return key
