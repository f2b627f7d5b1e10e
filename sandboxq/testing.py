"""Helpers for testing code that uses sandboxq.

``run_until_empty`` runs a queue's jobs inline, in this process;
``WorkerProcess`` runs a real worker subprocess. The pytest plugin
(:mod:`sandboxq.pytest_plugin`) builds its fixtures on both.


``run_until_empty`` goes through the same Lua transitions as a worker
(fetch with a lease, finish, retry, backoff), but calls handlers directly:
there is no sandbox, timeout or memory limit here. It is the helper RQ's
``SimpleWorker`` and Dramatiq's ``StubBroker`` give their users.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson

from sandboxq import execution, fast
from sandboxq.aio import AsyncJob, AsyncQueue
from sandboxq.caps import MAX_STEPS
from sandboxq.core import MAX_PAYLOAD_BYTES, QueueCore
from sandboxq.errors import JobFailed
from sandboxq.handlers import Handler, JobContext, handlers_for
from sandboxq.job import STATES, JobRecord
from sandboxq.ops import Op, awaiting, blocking
from sandboxq.options import JobOptions
from sandboxq.queue import Job, Queue
from sandboxq.rows import JobRow
from sandboxq.scripts import now_ms
from sandboxq.steps import record_in, steps_json

#: Lease given to inline jobs; nothing renews it, so make it long.
_LEASE_MS = 3_600_000


def run_until_empty(
    queue: Queue,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
    *,
    max_jobs: int | None = None,
    batch: int = 100,
    skip_delays: bool = False,
) -> dict[str, int]:
    """Run the queue's jobs until none is ready (due delayed jobs count, and
    so do retries that are due at once); return how many jobs ended in each
    status: ``completed``, ``failed`` and ``retrying``.

    ``handlers``: ``{job name: function}``, a list of handlers, or ``None``
    for those registered with ``@handler`` for this queue. A job with no
    handler fails, without retries, naming the missing handler.

    ``skip_delays``: instead of stopping at delayed jobs (``delay=``, and
    retries waiting out their backoff), move the clock on to when they are
    due and run them too, until nothing is left to run. A job that always
    asks to run again then runs for ever: bound it with ``max_jobs``.

    Raises ``ValueError`` naming the setting when a queue setting cannot be
    used (stored by something other than sandboxq): a worker would pause
    the queue.
    """
    by_name = handlers_for(queue.name, handlers)
    token = f"inline-{uuid.uuid4().hex}"
    totals: Counter[str] = Counter()
    done = 0
    while max_jobs is None or done < max_jobs:
        count = batch if max_jobs is None else min(batch, max_jobs - done)
        rows, _due, _limited, _has_limits, problem = queue.scripts.fetch(
            queue.keys, now_ms(), count, token, _LEASE_MS
        )
        if problem:
            # A worker would pause this queue; a test wants to hear why at once.
            raise ValueError(
                f"queue {queue.name!r} cannot run its jobs: {problem.decode(errors='replace')}"
            )
        if not rows:
            if skip_delays and _promote_delayed(queue):
                continue
            break
        entries = []
        for job_id, fields in fast.decode_fetched(rows):
            outcome = _run_one(queue, token, job_id, fields, by_name)
            entries.append(execution.finish_entry(job_id, fields, outcome))
        for status in queue.scripts.finish(queue.keys, now_ms(), token, entries):
            totals[status.decode()] += 1
        done += len(entries)
    return dict(totals)


def _promote_delayed(queue: Queue) -> int:
    """Promote delayed jobs as if the clock had reached the due time of the
    last of them; how many were promoted."""
    last = queue.client.zrange(queue.keys.delayed, -1, -1, withscores=True)
    if not last:
        return 0
    due: int = max(int(last[0][1]), now_ms())
    return int(queue.scripts.promote(queue.keys, due, "", _PROMOTE_LIMIT))


#: Delayed jobs moved per promote call when skipping delays.
_PROMOTE_LIMIT = 1000


def _run_one(
    queue: Queue, token: str, job_id: str, fields: dict[str, Any], by_name: dict[str, Handler]
) -> execution.Outcome:
    name = fields.get("name", "")
    found = by_name.get(name)
    if found is None:
        return _no_handler(queue.name, name)

    def report(jid: str, kind: str, value: str) -> None:
        queue.scripts.report(queue.keys, token, [(jid, kind, value)])

    def record(jid: str, key: str, result: str) -> str:
        [status] = queue.scripts.step(queue.keys, token, [(jid, key, result)], MAX_STEPS)
        return str(status)

    return execution.run_stored(
        found.func,
        queue.name,
        job_id,
        name,
        (fields.get("data"), fields.get("children"), steps_json(fields)),
        fields.get("attempts_made", 0),
        fields.get("retries", 0),
        report,
        record=record,
    )


# -- eager mode: no Redis at all ----------------------------------------------------------
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
            step = op.send(reply)
        except StopIteration as done:
            return True, done.value
        if isinstance(step, _HandlerRun):
            return False, step
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
            job_id = row.job_id or str(next(self._ids))
            if job_id in self.jobs:
                existing = self.jobs[job_id]
                jobs.append(self.job(job_id, existing.fields, created=False))
            else:
                # (it yields handler calls, not Redis steps: see _advance)
                run = self._run_now(job_id, row.name, row.data, opts)
                self.jobs[job_id] = yield from run  # type: ignore[misc]
                jobs.append(self.jobs[job_id])
        return jobs

    def _run_now(
        self, job_id: str, name: str, raw_data: bytes, opts: JobOptions
    ) -> Generator[_HandlerRun, execution.Outcome, Any]:
        """Run a job's attempts until it ends (asking the front end to make
        each handler call); the job, finished."""
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
                outcome = _no_handler(self.name, name)
            else:
                ctx = execution.stored_context(
                    self.name,
                    job_id,
                    name,
                    (raw_data, None, steps_json(fields)),
                    fields["attempts_made"],
                    fields["retries"],
                    report,
                    record,
                )
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
    timeout or memory limit.

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


def _no_handler(queue: str, name: str) -> execution.Outcome:
    return execution.Outcome.error(
        f"no handler for job {name!r} in queue {queue!r}", unrecoverable=True
    )


# -- a real worker, for tests -----------------------------------------------------------
READY = re.compile(r"sandboxq worker ready pid=(\d+) queues=(\S+) procs=(\d+)")


class WorkerTimeout(AssertionError):
    """A worker did not do what a test waited for in time."""


class WorkerProcess:
    """A real ``sandboxq worker`` subprocess, for tests.

    It runs ``python -m sandboxq worker MODULES`` in its own process group
    (so :meth:`kill_group` takes the parent and its children down at once),
    drains its stderr in a thread (a worker whose stderr pipe fills up blocks
    on logging), and waits for log lines instead of sleeping: :meth:`start`
    returns once the worker logged that it is ready. :meth:`stop` drains it
    as a deployment would (SIGTERM: no new jobs, the running ones finish).
    """

    def __init__(
        self,
        modules: Sequence[str],
        *,
        queues: Sequence[str] = (),
        url: str | None = None,
        procs: int | str | None = 1,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        command = [sys.executable, "-m", "sandboxq", "worker", *modules]
        for queue in queues:
            command += ["-q", queue]
        if procs is not None:
            command += ["--procs", str(procs)]
        self.command = [*command, *args]
        self.env = {
            **os.environ,
            **({"SANDBOXQ_REDIS_URL": url} if url else {}),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<{type(self).__name__} pid={pid}>"

    # -- starting --------------------------------------------------------------
    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> Self:
        """Start the worker; unless ``wait_ready`` is False, wait (up to
        ``timeout`` seconds) until it logs that it is ready. Returns ``self``."""
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._drain, name=f"stderr-{self.process.pid}", daemon=True
        )
        self._reader.start()
        if wait_ready:
            self.wait_for_line(READY, timeout)
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # marks the end of the stream
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        """The worker parent's process id."""
        assert self.process is not None, "worker not started"
        return self.process.pid

    # -- its log ---------------------------------------------------------------
    @property
    def log(self) -> str:
        """Everything the worker logged so far (its stderr)."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, *, start: int = 0
    ) -> re.Match[str]:
        """Wait until a stderr line (from index ``start``) matches ``pattern``
        (a regex searched anywhere in the line); returns the match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if found := regex.search(line):
                        return found
                seen = max(len(self.lines), seen)
                ended = self._reader is not None and not self._reader.is_alive()
                remaining = deadline - time.monotonic()
                if ended or remaining <= 0:
                    why = "the worker's stderr closed" if ended else f"{timeout}s passed"
                    raise WorkerTimeout(
                        f"no line matching {regex.pattern!r} ({why}); the worker said:\n"
                        + "\n".join(self.lines[-60:])
                    )
                self._changed.wait(remaining)

    def mark(self) -> int:
        """The index of the next log line: ``wait_for_line(start=mark)`` then
        only looks at lines logged after this call."""
        with self._changed:
            return len(self.lines)

    def matching_lines(self, pattern: str) -> list[str]:
        """The log lines so far in which regex ``pattern`` is found."""
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.lines if regex.search(line)]

    # -- signals and exit ----------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker parent only."""
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the worker to exit; its exit code (a signal is negative)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WorkerTimeout(
                f"worker {self.pid} still running after {timeout}s; it said:\n"
                + "\n".join(self.lines[-60:])
            ) from None
        if self._reader is not None:
            # Children of a killed parent may hold stderr open a little longer.
            self._reader.join(5.0)
        return code

    def running(self) -> bool:
        """Whether the worker parent is still running."""
        return self.process is not None and self.process.poll() is None

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group: the parent and its children
        (and orphans of a parent killed earlier)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        """Drain the worker (SIGTERM: it takes no new job and lets the
        running ones finish) and wait for it to exit; its exit code. One
        that does not exit within ``timeout`` is killed and reported."""
        if not self.running():
            return self.wait()
        self.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except WorkerTimeout:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Kill whatever is left of this worker; used by fixtures."""
        if self.process is None:
            return
        self.kill_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.stderr is not None:
            if self._reader is not None:
                self._reader.join(5.0)
            self.process.stderr.close()
