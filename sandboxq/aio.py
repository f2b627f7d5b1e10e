"""The asyncio producer and admin API: ``AsyncQueue``, ``AsyncJob`` and
``AsyncQueueEvents``, on ``redis.asyncio``.

They run the same operations as :class:`sandboxq.Queue` (validation,
encoding, script calls and reply decoding live in :mod:`sandboxq.core`,
:mod:`sandboxq.job` and :mod:`sandboxq.events`), so the two APIs behave
alike; here every call is a coroutine that never blocks the event loop, and
each round trip that takes over ``timeout`` seconds raises
:class:`sandboxq.ConnectionFailed`.

    queue = AsyncQueue("images")
    job = await queue.add("resize", {"path": "a.png"})
    result = await job.wait(timeout=30)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, Self

import redis

from sandboxq.addresses import redact
from sandboxq.connection import connect_async, unreachable
from sandboxq.core import DEFAULT_TIMEOUT, MAX_PAYLOAD_BYTES, QueueCore
from sandboxq.drive import drive_async
from sandboxq.events import Event, Follower
from sandboxq.job import JobRecord
from sandboxq.ops import Op, awaiting

__all__ = ["AsyncJob", "AsyncQueue", "AsyncQueueEvents", "EventStream"]


class AsyncJob(JobRecord):
    """A job of an :class:`AsyncQueue`; its methods are coroutines."""

    queue: AsyncQueue

    async def _drive(self, op: Op[Any]) -> Any:
        return await self.queue._drive(op)

    refresh = awaiting(JobRecord._refresh)
    children_results = awaiting(JobRecord._children_results)
    children_failures = awaiting(JobRecord._children_failures)
    dependency_results = awaiting(JobRecord._dependency_results)
    dependency_failures = awaiting(JobRecord._dependency_failures)
    pending_dependencies = awaiting(JobRecord._pending_dependencies)
    audit = awaiting(JobRecord._audit)
    logs = awaiting(JobRecord._logs)
    wait = awaiting(JobRecord._wait)
    cancel = awaiting(JobRecord._cancel)


class AsyncQueue(QueueCore[AsyncJob]):
    """A named queue on Redis, for asyncio code: the methods of
    :class:`sandboxq.Queue`, as coroutines.

    ``connection`` may be a ``redis.asyncio`` client to share (it must not
    decode responses); otherwise the queue makes one from ``url`` for each
    event loop it is used on (a ``redis.asyncio`` client belongs to the loop
    that made it), and :meth:`close` (or ``async with``) closes the running
    loop's. With no ``url``, ``$SANDBOXQ_REDIS_URL`` (else the local
    default) is read when such a client is made, not when the queue is: an
    app can make its queue at import time and its tests point it at another
    Redis (see the testing guide).
    """

    job_type = AsyncJob

    def __init__(
        self,
        name: str,
        url: str | None = None,
        connection: Any = None,
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        defaults: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._setup(name, url, connection, connect_async, max_payload_bytes, defaults, timeout)
        #: The clients this queue made, by the event loop each belongs to.
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client for the running event loop: the one
        shared, else this queue's own for that loop (made on first use)."""
        if self._connection is not None:
            return self._connection
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"AsyncQueue {self.name!r} makes a client per event loop: use it in async code"
            ) from None
        client = self._clients.get(loop)
        if client is None:
            for gone in [other for other in self._clients if other.is_closed()]:
                del self._clients[gone]  # its connections went with its loop
            client = self._clients[loop] = self._new_client()
        return client

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r} at {redact(self.url)}>"

    def sibling(self, name: str) -> AsyncQueue:
        """Another queue on the same connection (a flow's other queues)."""
        return AsyncQueue(
            name,
            connection=self.client,
            max_payload_bytes=self.max_payload_bytes,
            timeout=self.timeout,
        )

    async def _drive(self, op: Op[Any]) -> Any:
        """Run an operation; a Redis that cannot be reached, or does not
        answer within the timeout, is an error naming the URL."""
        try:
            return await drive_async(self.client, op, self.timeout)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unreachable(self.url, exc) from exc

    async def close(self) -> None:
        """Close the client this queue made for the running event loop (a
        shared one stays open). Used again afterwards, the queue makes a new
        one."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    add = awaiting(QueueCore._add)
    add_bulk = awaiting(QueueCore._add_bulk)
    add_flow = awaiting(QueueCore._add_flow)
    get_job = awaiting(QueueCore._get_job)
    get_jobs = awaiting(QueueCore._get_jobs)
    counts = awaiting(QueueCore._counts)
    job_ids = awaiting(QueueCore._job_ids)
    audit_log = awaiting(QueueCore._audit_log)
    workers = awaiting(QueueCore._workers)
    throughput = awaiting(QueueCore._throughput)
    job_logs = awaiting(QueueCore._job_logs)
    pause = awaiting(QueueCore._pause)
    resume = awaiting(QueueCore._resume)
    is_paused = awaiting(QueueCore._is_paused)
    retry = awaiting(QueueCore._retry)
    retry_failed = awaiting(QueueCore._retry_failed)
    promote = awaiting(QueueCore._promote)
    remove = awaiting(QueueCore._remove)
    cancel = awaiting(QueueCore._cancel)
    clean = awaiting(QueueCore._clean)
    drain = awaiting(QueueCore._drain)
    obliterate = awaiting(QueueCore._obliterate)
    set_rate_limit = awaiting(QueueCore._set_rate_limit)
    set_group_rate_limit = awaiting(QueueCore._set_group_rate_limit)
    set_concurrency = awaiting(QueueCore._set_concurrency)
    set_group_concurrency = awaiting(QueueCore._set_group_concurrency)
    set_priority_aging = awaiting(QueueCore._set_priority_aging)
    limits = awaiting(QueueCore._limits)
    schedule = awaiting(QueueCore._schedule)
    schedules = awaiting(QueueCore._schedules)
    unschedule = awaiting(QueueCore._unschedule)


class AsyncQueueEvents:
    """Follow one queue's lifecycle events from asyncio code; the events and
    payloads of :class:`sandboxq.QueueEvents`."""

    def __init__(self, queue: AsyncQueue) -> None:
        self.queue = queue
        self.last_id: str | None = None

    def listen(
        self,
        since: str | None = None,
        *,
        job_id: str | None = None,
        block_seconds: float = 1.0,
        stop_after: float | None = None,
    ) -> EventStream:
        """An async iterator of ``(event, job_id, payload)``, as
        :meth:`sandboxq.QueueEvents.listen` yields them. Await it to fix its
        starting point before going on (``events = await q_events.listen()``);
        otherwise "from now" is its first read."""
        return EventStream(self.queue, Follower(self, since, job_id, block_seconds, stop_after))


class EventStream:
    """What :meth:`AsyncQueueEvents.listen` returns: awaitable (fixing the
    starting point) and async-iterable (the events)."""

    def __init__(self, queue: AsyncQueue, follower: Follower) -> None:
        self.queue = queue
        self.follower = follower
        self.buffer: deque[Event] = deque()

    def __await__(self) -> Generator[Any, None, Self]:
        return self._start().__await__()

    async def _start(self) -> Self:
        await self.queue._drive(self.follower.start_op())
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while not self.buffer:
            batch = await self.queue._drive(self.follower.next_op())
            if batch is None:
                raise StopAsyncIteration
            self.buffer.extend(batch)
        return self.buffer.popleft()
