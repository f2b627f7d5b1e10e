"""Lifecycle events: reading the queue's capped Redis stream.

Every transition script appends ``event``, ``job_id`` and a few details to
``sq:{name}:events`` (see ``emit`` in lua/include/common.lua). Readers keep
their own cursor (a stream id), so any number of them can follow the same
queue and resume where they left off.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sandboxq.connection import url_in_errors

if TYPE_CHECKING:
    import redis

    from sandboxq.queue import Queue

Event = tuple[str, str, dict[str, str]]

#: The longest one blocking read lasts; callers loop for longer waits.
MAX_BLOCK_SECONDS = 2.0


def last_id(client: redis.Redis, stream: str) -> bytes:
    """The id of the newest entry, or ``0-0`` for an empty stream."""
    newest: Any = client.xrevrange(stream, count=1)
    return newest[0][0] if newest else b"0-0"


def read(
    client: redis.Redis, stream: str, cursor: bytes, block_seconds: float, count: int = 1000
) -> tuple[bytes, list[tuple[bytes, Event]]]:
    """Entries after ``cursor``, waiting up to ``block_seconds`` for the first.

    Returns the new cursor and ``(entry id, (event, job_id, payload))`` pairs.
    """
    # Stay well under the client's socket timeout (redis-py's default is 5 s).
    block_ms = max(int(min(block_seconds, MAX_BLOCK_SECONDS) * 1000), 1)
    reply: Any = client.xread({stream: cursor}, count=count, block=block_ms)
    entries: list[tuple[bytes, Event]] = []
    for _stream, items in reply or ():
        for entry_id, raw in items:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            event = fields.pop("event", "")
            job_id = fields.pop("job_id", "")
            entries.append((entry_id, (event, job_id, fields)))
            cursor = entry_id
    return cursor, entries


def wait_for(
    client: redis.Redis,
    stream: str,
    cursor: bytes,
    job_id: str,
    events: Iterable[str],
    block_seconds: float,
) -> bytes:
    """Read until one of ``events`` for ``job_id`` arrives or the time is up;
    returns the cursor to continue from."""
    wanted = set(events)
    deadline = time.monotonic() + block_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        cursor, entries = read(client, stream, cursor, remaining)
        if any(jid == job_id and event in wanted for _, (event, jid, _p) in entries):
            break
    return cursor


class QueueEvents:
    """Follow one queue's lifecycle events.

    ``listen()`` yields ``(event, job_id, payload)`` with events such as
    ``added``, ``active``, ``progress``, ``completed``, ``failed``,
    ``retrying``, ``stalled``, ``waiting`` and ``removed``. ``last_id`` is
    the stream id of the last event yielded; pass it as ``since`` to resume.
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.last_id: str | None = None

    def listen(
        self,
        since: str | None = None,
        *,
        block_seconds: float = 1.0,
        stop_after: float | None = None,
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Yield events newer than ``since`` (a stream id; ``None`` = from now,
        ``"0"`` = from the oldest kept). Runs forever unless ``stop_after``
        seconds pass without a new event."""
        client, stream = self.queue.client, self.queue.keys.events
        with url_in_errors(self.queue.url):
            cursor = last_id(client, stream) if since is None else since.encode()
        idle_since = time.monotonic()
        while stop_after is None or time.monotonic() - idle_since < stop_after:
            with url_in_errors(self.queue.url):
                cursor, entries = read(client, stream, cursor, block_seconds)
            for entry_id, event in entries:
                self.last_id = entry_id.decode()
                yield event
            if entries:
                idle_since = time.monotonic()
