"""Lifecycle events: reading the queue's capped Redis stream.

Every transition script appends ``event``, ``job_id`` and a few details to
``sq:{name}:events`` (see ``emit`` in lua/include/common.lua). Readers keep
their own cursor (a stream id), so any number of them can follow the same
queue and resume where they left off.

The reading is written once, as sans-I/O operations (:mod:`sandboxq.ops`):
:class:`sandboxq.queue.QueueEvents` runs them blocking,
:class:`sandboxq.aio.AsyncQueueEvents` on an event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from sandboxq.ops import Command, Op, cmd

Event = tuple[str, str, dict[str, Any]]

#: The longest one blocking read lasts; callers loop for longer waits.
MAX_BLOCK_SECONDS = 2.0

#: Payload fields holding JSON (a job's progress, its result), and whole numbers.
JSON_FIELDS = frozenset({"progress", "result"})
INT_FIELDS = frozenset(
    {"delay_ms", "until_ms", "next_ms", "stalls", "count", "result_bytes", "replaced"}
)


def decode_payload(raw: dict[bytes, bytes]) -> tuple[str, str, dict[str, Any]]:
    """An entry's fields as ``(event, job_id, payload)`` with the payload's
    values decoded: JSON fields to their values, counts and times to ints,
    the rest to text."""
    fields: dict[str, Any] = {}
    for raw_name, raw_value in raw.items():
        name = raw_name.decode()
        if name in JSON_FIELDS:
            try:
                fields[name] = orjson.loads(raw_value)
            except orjson.JSONDecodeError:  # e.g. a progress value that was cut
                fields[name] = raw_value.decode(errors="replace")
        elif name in INT_FIELDS and raw_value.lstrip(b"-").isdigit():
            fields[name] = int(raw_value)
        else:
            fields[name] = raw_value.decode(errors="replace")
    return fields.pop("event", ""), fields.pop("job_id", ""), fields


def last_id_op(stream: str) -> Op[bytes]:
    """The id of the newest entry, or ``0-0`` for an empty stream."""
    newest = yield cmd("XREVRANGE", stream, "+", "-", "COUNT", 1)
    return bytes(newest[0][0]) if newest else b"0-0"


def read_op(
    stream: str, cursor: bytes, block_seconds: float, count: int = 1000
) -> Op[tuple[bytes, list[tuple[bytes, Event]]]]:
    """Entries after ``cursor``, waiting up to ``block_seconds`` for the first.

    Returns the new cursor and ``(entry id, (event, job_id, payload))`` pairs.
    """
    block = min(block_seconds, MAX_BLOCK_SECONDS)
    block_ms = max(int(block * 1000), 1)
    reply = yield Command(
        ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", stream, cursor), block=block
    )
    entries: list[tuple[bytes, Event]] = []
    for _stream, items in reply or ():
        for entry_id, raw in items:
            entries.append((entry_id, decode_payload(raw)))
            cursor = entry_id
    return cursor, entries


def wait_for_op(
    stream: str, cursor: bytes, job_id: str, events: Iterable[str], block_seconds: float
) -> Op[bytes]:
    """Read until one of ``events`` for ``job_id`` arrives or the time is up;
    returns the cursor to continue from."""
    wanted = set(events)
    deadline = time.monotonic() + block_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        cursor, entries = yield from read_op(stream, cursor, remaining)
        if any(jid == job_id and event in wanted for _, (event, jid, _p) in entries):
            break
    return cursor


class Follower:
    """One ``listen()``: where it reads from, and what it yields next."""

    def __init__(
        self,
        owner: Any,
        since: str | None,
        job_id: str | None,
        block_seconds: float,
        stop_after: float | None,
    ) -> None:
        self.owner = owner  # its last_id is kept up to date, to resume from
        self.stream = owner.queue.keys.events
        self.cursor = None if since is None else since.encode()
        self.job_id = None if job_id is None else str(job_id)
        self.block_seconds = block_seconds
        self.stop_after = stop_after
        self.idle_since = time.monotonic()

    def start_op(self) -> Op[None]:
        """Fix the starting point: ``since``, else the newest entry now."""
        if self.cursor is None:
            self.cursor = yield from last_id_op(self.stream)

    def next_op(self) -> Op[list[Event] | None]:
        """The next events (maybe none), or None once ``stop_after`` seconds
        passed without one."""
        if self.stop_after is not None and time.monotonic() - self.idle_since >= self.stop_after:
            return None
        yield from self.start_op()
        assert self.cursor is not None
        self.cursor, entries = yield from read_op(self.stream, self.cursor, self.block_seconds)
        if entries:
            self.owner.last_id = entries[-1][0].decode()
        wanted = [event for _, event in entries if self.job_id in (None, event[1])]
        if wanted:
            self.idle_since = time.monotonic()
        return wanted
