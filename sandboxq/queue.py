"""The blocking producer and admin API: ``Queue``, ``Job`` and ``QueueEvents``.

Every method runs one of the operations of :class:`sandboxq.core.QueueCore`,
:class:`sandboxq.job.JobRecord` or :class:`sandboxq.events.Follower`
(shared with :mod:`sandboxq.aio`) on a blocking redis-py client.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import redis

from sandboxq.addresses import redact
from sandboxq.connection import connect, unreachable
from sandboxq.core import (
    BULK_CHUNK,
    DEFAULT_TIMEOUT,
    MAX_PAYLOAD_BYTES,
    Flow,
    QueueCore,
)
from sandboxq.drive import drive
from sandboxq.errors import JobIsActive
from sandboxq.events import Event, Follower
from sandboxq.job import JobRecord
from sandboxq.ops import Op, blocking
from sandboxq.scripts import Scripts

__all__ = [
    "BULK_CHUNK",
    "MAX_PAYLOAD_BYTES",
    "Flow",
    "Job",
    "JobIsActive",
    "Queue",
    "QueueEvents",
]


class Job(JobRecord):
    """A job of a :class:`sandboxq.Queue`; its methods block."""

    queue: Queue

    def _drive(self, op: Op[Any]) -> Any:
        return self.queue._drive(op)

    refresh = blocking(JobRecord._refresh)
    children_results = blocking(JobRecord._children_results)
    children_failures = blocking(JobRecord._children_failures)
    dependency_results = blocking(JobRecord._dependency_results)
    dependency_failures = blocking(JobRecord._dependency_failures)
    pending_dependencies = blocking(JobRecord._pending_dependencies)
    audit = blocking(JobRecord._audit)
    logs = blocking(JobRecord._logs)
    wait = blocking(JobRecord._wait)
    cancel = blocking(JobRecord._cancel)


class Queue(QueueCore[Job]):
    """A named queue on Redis: add jobs, look at them, and administer them.

    ``url`` defaults to ``$SANDBOXQ_REDIS_URL``, then ``redis://localhost:6379/0``,
    read when the queue first talks to Redis rather than when it is made: a
    queue made at import time can be pointed at a test's Redis afterwards.
    Pass ``connection`` to share an existing ``redis.Redis`` (it must not
    decode responses). Nothing connects until the first call; a round trip
    that takes over ``timeout`` seconds fails (on a client made from a URL).
    ``defaults`` are options of :meth:`add` every job of this queue gets
    unless the call gives its own.
    """

    job_type = Job

    def __init__(
        self,
        name: str,
        url: str | None = None,
        connection: redis.Redis | None = None,
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        defaults: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._setup(name, url, connection, connect, max_payload_bytes, defaults, timeout)
        self._client: redis.Redis | None = connection
        self._scripts: Scripts | None = None

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (made on first use, for the URL as it is then)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @property
    def scripts(self) -> Scripts:
        """The scripts run directly on this queue's client (tests, tools)."""
        if self._scripts is None:
            self._scripts = Scripts(self.client)
        return self._scripts

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} at {redact(self.url)}>"

    def sibling(self, name: str) -> Queue:
        """Another queue on the same connection (a flow's other queues)."""
        return Queue(name, connection=self.client, max_payload_bytes=self.max_payload_bytes)

    def _drive(self, op: Op[Any]) -> Any:
        """Run an operation; a Redis that cannot be reached is an error naming the URL."""
        try:
            return drive(self.client, op)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unreachable(self.url, exc) from exc

    add = blocking(QueueCore._add)
    add_bulk = blocking(QueueCore._add_bulk)
    add_flow = blocking(QueueCore._add_flow)
    get_job = blocking(QueueCore._get_job)
    get_jobs = blocking(QueueCore._get_jobs)
    counts = blocking(QueueCore._counts)
    job_ids = blocking(QueueCore._job_ids)
    audit_log = blocking(QueueCore._audit_log)
    workers = blocking(QueueCore._workers)
    throughput = blocking(QueueCore._throughput)
    job_logs = blocking(QueueCore._job_logs)
    pause = blocking(QueueCore._pause)
    resume = blocking(QueueCore._resume)
    is_paused = blocking(QueueCore._is_paused)
    retry = blocking(QueueCore._retry)
    retry_failed = blocking(QueueCore._retry_failed)
    promote = blocking(QueueCore._promote)
    remove = blocking(QueueCore._remove)
    cancel = blocking(QueueCore._cancel)
    clean = blocking(QueueCore._clean)
    drain = blocking(QueueCore._drain)
    obliterate = blocking(QueueCore._obliterate)
    set_rate_limit = blocking(QueueCore._set_rate_limit)
    set_group_rate_limit = blocking(QueueCore._set_group_rate_limit)
    set_concurrency = blocking(QueueCore._set_concurrency)
    set_group_concurrency = blocking(QueueCore._set_group_concurrency)
    set_priority_aging = blocking(QueueCore._set_priority_aging)
    limits = blocking(QueueCore._limits)
    schedule = blocking(QueueCore._schedule)
    schedules = blocking(QueueCore._schedules)
    unschedule = blocking(QueueCore._unschedule)


class QueueEvents:
    """Follow one queue's lifecycle events.

    ``listen()`` yields ``(event, job_id, payload)`` with events such as
    ``added``, ``active``, ``progress``, ``completed``, ``failed``,
    ``retrying``, ``stalled``, ``waiting`` and ``removed``. Payload values
    are decoded: ``progress`` carries ``{"progress": value}``, ``completed``
    ``{"result": value}`` (or ``{"result_bytes": n}`` for a result over
    4 KiB: read it from the job), ``failed`` ``{"error": text}``.
    ``last_id`` is the stream id of the last event read; pass it as
    ``since`` to resume.
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.last_id: str | None = None

    def listen(
        self,
        since: str | None = None,
        *,
        job_id: str | None = None,
        block_seconds: float = 1.0,
        stop_after: float | None = None,
    ) -> Iterator[Event]:
        """Events newer than ``since`` (a stream id; ``None``: from this call,
        ``"0"``: from the oldest kept), only those of ``job_id`` if given.
        Runs forever unless ``stop_after`` seconds pass without a new event.
        The starting point is fixed before this returns, so an event that
        happens after the call is never missed."""
        follower = Follower(self, since, job_id, block_seconds, stop_after)
        self.queue._drive(follower.start_op())
        return self._follow(follower)

    def _follow(self, follower: Follower) -> Iterator[Event]:
        while (batch := self.queue._drive(follower.next_op())) is not None:
            yield from batch
