"""Eager mode: a queue with no Redis at all, for unit tests.

:class:`EagerQueue` (and :class:`AsyncEagerQueue`) check and encode a job
exactly as a queue does, then run it at once, in this process, to its end.
Each run is settled as finish.lua settles it (:func:`_settle`;
tests/test_eager_agrees.py runs the same cases through both), except that a
job to run again runs at once. :mod:`sandboxq.testing` exports them.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sandboxq import execution
from sandboxq.aio import AsyncJob, AsyncQueue
from sandboxq.caps import MAX_STEPS
from sandboxq.core import MAX_PAYLOAD_BYTES, QueueCore
from sandboxq.errors import JobFailed, UnknownDependency
from sandboxq.handlers import Handler, JobContext, handlers_for
from sandboxq.job import STATES, JobRecord
from sandboxq.ops import Op, awaiting, blocking
from sandboxq.options import Dedupe, JobOptions
from sandboxq.queue import Job, Queue
from sandboxq.rows import Dependency, JobRow
from sandboxq.steps import record_in, steps_json

#: The most runs an eager job gets (attempts, and Retry or RateLimited asks).
MAX_EAGER_RUNS = 100


class EagerJob(Job):
    """A job an :class:`EagerQueue` ran: it is finished already, so
    :meth:`wait` and :meth:`refresh` need no Redis."""

    def refresh(self) -> EagerJob:
        """The job itself: it is final already."""
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Its result, or :class:`sandboxq.JobFailed` if it failed."""
        return _eager_result(self)

    def logs(self) -> list[str]:
        """The log lines its handler wrote."""
        return list(self.fields.get("logs", ()))

    def dependency_results(self) -> dict[str, Any]:
        """Its dependencies' results, when added with ``depends_on``."""
        return dict(self.fields.get("dependency_results", {}))

    def dependency_failures(self) -> dict[str, str]:
        """Its dependencies' errors, when added with ``depends_on``."""
        return dict(self.fields.get("dependency_failures", {}))

    def pending_dependencies(self) -> list[str]:
        """None: every eager job has finished."""
        return []


class AsyncEagerJob(AsyncJob):
    """A job an :class:`AsyncEagerQueue` ran: :class:`EagerJob`'s methods,
    as coroutines."""

    async def refresh(self) -> AsyncEagerJob:
        """The job itself: it is final already."""
        return self

    async def wait(self, timeout: float | None = None) -> Any:
        """Its result, or :class:`sandboxq.JobFailed` if it failed."""
        return _eager_result(self)

    async def logs(self) -> list[str]:
        """The log lines its handler wrote."""
        return list(self.fields.get("logs", ()))

    async def dependency_results(self) -> dict[str, Any]:
        """Its dependencies' results, when added with ``depends_on``."""
        return dict(self.fields.get("dependency_results", {}))

    async def dependency_failures(self) -> dict[str, str]:
        """Its dependencies' errors, when added with ``depends_on``."""
        return dict(self.fields.get("dependency_failures", {}))

    async def pending_dependencies(self) -> list[str]:
        """None: every eager job has finished."""
        return []


def _eager_result(job: JobRecord) -> Any:
    if job.state != "completed":
        raise JobFailed(job)
    return job.result


@dataclass(frozen=True, slots=True)
class _HandlerRun:
    """What an eager ``add`` asks its front end to run: one attempt of a
    job (the blocking one calls the handler, the asyncio one awaits it)."""

    func: Callable[..., Any]
    ctx: JobContext


class _Eager(QueueCore[Any]):
    """What :class:`EagerQueue` and :class:`AsyncEagerQueue` share: ``add``
    and ``add_bulk`` run as the queue's operations (checked and encoded as
    on Redis), but where the add script would run, each job is run here and
    now, to its end; the front end's ``_drive`` makes each attempt's
    handler call (:meth:`_advance`)."""

    def __init__(
        self,
        name: str,
        handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        # No Queue.__init__ or AsyncQueue.__init__: a queue with no Redis
        # needs no client.
        self._settings(name, max_payload_bytes, defaults, 0.0)
        self._url = f"eager:{name}"
        self.handlers = handlers
        #: Every job added, by id, in the order added.
        self.jobs: dict[str, Any] = {}
        self._ids = itertools.count(1)
        #: Open dedupe windows with a ttl: dedupe id -> (job id, when the
        #: window ends, time.monotonic()). A job here has finished by the
        #: time its add returns, so a window without a ttl is never open.
        self._windows: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def client(self) -> Any:
        """None to have: an eager queue talks to no Redis."""
        raise RuntimeError(self._no_redis())

    def _no_redis(self) -> str:
        return (
            f"{type(self).__name__} {self.name!r} has no Redis: in eager mode only add, "
            "add_bulk, get_job and counts work"
        )

    def _advance(self, op: Op[Any], reply: Any) -> tuple[bool, Any]:
        """Run an operation on to its next handler call: ``(False, run)``,
        or ``(True, result)`` at its end. An operation that needs a round
        trip is refused."""
        try:
            request = op.send(reply)
        except StopIteration as done:
            return True, done.value
        if isinstance(request, _HandlerRun):
            return False, request
        op.close()
        raise RuntimeError(self._no_redis())

    def _eager_get_job(self, job_id: str) -> Op[Any]:
        """The job added with this id, or None."""
        return self.jobs.get(str(job_id))
        yield  # a generator, like the operation it stands in for

    def _eager_counts(self) -> Op[dict[str, int]]:
        """How many of the jobs added are in each state."""
        found = Counter(job.state for job in self.jobs.values())
        return {state: found[state] for state in STATES}
        yield

    def _add_encoded(
        self, encoded: list[JobRow], data: list[Any], options: list[JobOptions]
    ) -> Op[list[Any]]:
        """What the add script does, then the jobs' runs, here and now."""
        jobs: list[Any] = []
        for row, opts in zip(encoded, options, strict=True):
            held = self._open_window(opts.dedupe) if row.job_id not in self.jobs else None
            job_id = held or row.job_id or str(next(self._ids))
            if job_id in self.jobs:
                existing = self.jobs[job_id]
                jobs.append(self.job(job_id, existing.fields, created=False))
            else:
                if opts.dedupe is not None and opts.dedupe.ttl is not None:
                    self._windows[opts.dedupe.id] = (job_id, time.monotonic() + opts.dedupe.ttl)
                # (it yields handler calls, not Redis round trips: see _advance)
                run = self._run_now(job_id, row.name, row.data, opts)
                self.jobs[job_id] = yield from run  # type: ignore[misc]
                jobs.append(self.jobs[job_id])
        return jobs

    def _add_waiting(
        self,
        row: JobRow,
        data: Any,
        options: JobOptions,
        policy: str,
        found: list[Dependency],
    ) -> Op[Any]:
        """What add_dependent.lua does: every job here has finished, so the
        dependencies count at once; a failed one ends the job (its
        ``on_dependency_failure``) or is recorded (``"run"``). Only this
        queue's jobs are known: a dependency of another queue is unknown."""
        if row.job_id in self.jobs:
            return self.job(row.job_id, self.jobs[row.job_id].fields, created=False)
        results: dict[str, Any] = {}
        failures: dict[str, tuple[str, str]] = {}
        for dependency in found:
            ref = f"{dependency.queue}:{dependency.job_id}"
            done = self.jobs.get(dependency.job_id) if dependency.queue == self.name else None
            if done is None:
                raise UnknownDependency(
                    f"unknown dependency {ref}: no such job (an eager queue knows its own jobs)"
                )
            if done.state == "completed":
                results[ref] = done.result
            else:
                verb = "" if done.state == "cancelled" else "failed: "
                failures[ref] = (done.error or "", f"dependency {ref} {verb}{done.error or ''}")
        job_id = row.job_id or str(next(self._ids))
        if failures and policy != "run":
            message = next(iter(failures.values()))[1]
            fields = {"name": row.name, "data": data, "priority": options.priority}
            fields |= {"attempts": options.attempts, "attempts_made": 0, "stalls": 0}
            fields |= {"created_at": time.time(), "finished_at": time.time()}
            fields |= {"dependency_results": results, "error": message, "traceback": None}
            if policy == "cancel":
                fields |= {"state": "cancelled", "error": f"cancelled: {message}"}
                fields["cancel_reason"] = message
            else:
                fields["state"] = "failed"
            self.jobs[job_id] = self.job(job_id, fields, created=True)
            return self.jobs[job_id]
        children = orjson.dumps(results)
        run = self._run_now(job_id, row.name, row.data, options, children)
        job = yield from run  # type: ignore[misc]
        job.fields["dependency_results"] = results
        job.fields["dependency_failures"] = {ref: error for ref, (error, _) in failures.items()}
        self.jobs[job_id] = job
        return job

    def _open_window(self, dedupe: Dedupe | None) -> str | None:
        """The id of the job whose dedupe window (with a ttl) is open, after
        starting its ttl again if ``extend`` says so; None when none is."""
        if dedupe is None or dedupe.id not in self._windows:
            return None
        job_id, ends = self._windows[dedupe.id]
        now = time.monotonic()
        if now >= ends:
            del self._windows[dedupe.id]
            return None
        if dedupe.extend and dedupe.ttl is not None:
            self._windows[dedupe.id] = (job_id, now + dedupe.ttl)
        return job_id

    def _run_now(
        self,
        job_id: str,
        name: str,
        raw_data: bytes,
        opts: JobOptions,
        children_json: bytes | None = None,
    ) -> Generator[_HandlerRun, execution.Outcome, Any]:
        """Run a job's attempts until it ends (asking the front end to make
        each handler call); the job, finished. ``children_json``: the
        results its handler reads (``dependency_results()``)."""
        fields: dict[str, Any] = {
            "name": name,
            "data": orjson.loads(raw_data),
            "priority": opts.priority,
            "attempts": opts.attempts,
            "timeout": opts.timeout,
            "attempts_made": 0,
            "retries": 0,
            "stalls": 0,
            "logs": [],
            "created_at": time.time(),
            "started_at": time.time(),
        }

        def report(_jid: str, kind: str, value: str) -> None:
            if kind == "progress":
                fields["progress"] = orjson.loads(value)
            else:
                fields["logs"].append(value)

        def record(_jid: str, key: str, result: str) -> str:
            return record_in(fields, key, result, MAX_STEPS)

        found = handlers_for(self.name, self.handlers).get(name)
        for _run in range(MAX_EAGER_RUNS):
            if found is None:
                outcome = no_handler(self.name, name)
            else:
                stored = execution.StoredJob(
                    job_id,
                    name,
                    raw_data,
                    self.name,
                    fields["attempts_made"],
                    fields["retries"],
                    children_json,
                    steps_json(fields),
                )
                ctx = execution.stored_context(stored, report, record)
                if isinstance(ctx, execution.Outcome):
                    outcome = ctx
                else:
                    outcome = yield _HandlerRun(found.func, ctx)
            if _settle(fields, outcome, opts):
                break
        else:
            fields["attempts_made"] += 1
            _fail(fields, f"ran {MAX_EAGER_RUNS} times in eager mode without finishing", "")
        fields["finished_at"] = time.time()
        return self.job(job_id, fields, created=True)


def _settle(fields: dict[str, Any], outcome: execution.Outcome, opts: JobOptions) -> bool:
    """What finish.lua does with one run's outcome, on an eager job's fields
    (tests/test_eager_agrees.py checks the two agree, case by case), but
    for the waits: a job to run again runs at once. Whether the job ended."""
    kind, made = outcome.kind, fields["attempts_made"] + 1
    if kind == execution.COMPLETED:
        fields |= {"state": "completed", "result": orjson.loads(outcome.value)}
        fields["attempts_made"] = made
        return True
    if opts.manual_retry_only:
        # Never run again automatically: any unfinished run fails it for good.
        message = outcome.value
        if kind in (execution.RETRY, execution.RATE_LIMITED):
            message += " (not retried: manual_retry_only)"
        fields["attempts_made"] = made
        _fail(fields, message, outcome.traceback)
        return True
    if kind == execution.RETRY:
        fields["retries"] += 1  # no attempt spent
        return False
    if kind == execution.RATE_LIMITED:
        return False  # no attempt spent, and not counted as a retry ask
    # A failed attempt: its error stays on the job, even if a retry completes.
    fields["attempts_made"] = made
    fields |= {"error": outcome.value, "traceback": outcome.traceback or None}
    if kind == execution.FAILED and made < opts.attempts:
        return False
    fields["state"] = "failed"
    return True


def _fail(fields: dict[str, Any], message: str, traceback: str) -> None:
    fields |= {"state": "failed", "error": message, "traceback": traceback or None}


class EagerQueue(_Eager, Queue):
    """A stand-in for :class:`sandboxq.Queue` in unit tests that need no
    Redis: ``add`` and ``add_bulk`` check and encode the job exactly as a
    queue does, then run it at once, in this process, and return it
    finished. It settles each run as the finish script does, but runs a job
    to run again at once: failed attempts are retried while attempts remain
    (no backoff wait), as are ``Retry`` and ``RateLimited`` asks (unless the
    job is ``manual_retry_only``), up to ``MAX_EAGER_RUNS`` runs. Every job
    stays in :attr:`jobs`, whatever its retention. There is no sandbox,
    timeout or memory limit. A job has finished when its add returns, so a
    dedupe window lasts only its ``ttl``: an add within it returns the job
    that opened it, with ``created`` False (``replace`` changes nothing: that
    job ran already).

    ``handlers``: ``{job name: function}``, a list of handlers, or ``None``
    for those registered with ``@handler`` for this queue. ``get_job``,
    ``counts`` and the jobs in :attr:`jobs` show what ran; any other queue
    call needs Redis and raises, saying so. It is a ``Queue``, so it can
    stand in wherever the code under test takes one.
    """

    job_type = EagerJob
    jobs: dict[str, EagerJob]

    def _drive(self, op: Op[Any]) -> Any:
        """Run an operation, calling the handlers of the jobs it adds."""
        done, value = self._advance(op, None)
        while not done:
            done, value = self._advance(op, execution.run(value.func, value.ctx))
        return value

    get_job = blocking(_Eager._eager_get_job)
    counts = blocking(_Eager._eager_counts)


class AsyncEagerQueue(_Eager, AsyncQueue):
    """:class:`EagerQueue` for asyncio code: a stand-in for
    :class:`sandboxq.aio.AsyncQueue` with the same methods as coroutines and
    the same semantics (no Redis; ``await add(...)`` runs the job at once
    and returns it finished). An ``async def`` handler is awaited on the
    running event loop, so it may use what that loop owns (an app's own
    clients). It is an ``AsyncQueue``, so it can stand in wherever the code
    under test takes one (e.g. through a FastAPI dependency override).
    """

    job_type = AsyncEagerJob
    jobs: dict[str, AsyncEagerJob]

    async def _drive(self, op: Op[Any]) -> Any:
        """Run an operation, awaiting the handlers of the jobs it adds."""
        done, value = self._advance(op, None)
        while not done:
            done, value = self._advance(op, await execution.run_async(value.func, value.ctx))
        return value

    get_job = awaiting(_Eager._eager_get_job)
    counts = awaiting(_Eager._eager_counts)

    async def close(self) -> None:
        """Nothing to close: it has no Redis client."""


def no_handler(queue: str, name: str) -> execution.Outcome:
    return execution.Outcome.error(
        f"no handler for job {name!r} in queue {queue!r}", unrecoverable=True
    )
