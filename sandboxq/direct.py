"""One command, past redis-py's client layer (blocking and asyncio clients).

A producer's ``add`` is one script call, and on the development box
redis-py's per-command layer (argument checks, observability hooks,
response callbacks, and the pool's hand-out, which polls the socket for
stray data) costs more CPU than the script does in Redis. So on a plain
``redis.Redis`` whose pool is redis-py's own (not a small one), :func:`execute`
keeps one connection of that pool for itself (its *pinned* connection), and
writes the packed command and reads the reply there. What matters stays
redis-py's: connecting (AUTH, SELECT, TLS), health checks, the client's
retry policy, and error replies raised as the same exceptions.

- A thread that finds the pinned connection busy (another thread is in the
  middle of a command on it) takes a connection from the pool instead, the
  way redis-py would: threads never wait for each other here.
- A failure part-way through a command (a timeout, a dropped connection, an
  interrupt) may leave a reply unread on the socket, which the next command
  would take for its own: redis-py's connection closes itself then, and the
  next command connects again (tests/test_direct.py checks it).
- After a fork, the child pins a connection of its own (the parent's socket
  is the parent's).
- Other clients (a single-connection client, a Sentinel or Cluster client, a
  small or blocking pool, a subclass) go the usual way, through ``execute_command``.

:func:`execute_async` does the same on a ``redis.asyncio.Redis``. A
coroutine that finds the pinned connection busy takes one from the pool. An
asyncio connection belongs to the event loop it was made on, so a client
used from another loop pins one there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import hiredis
import redis
import redis.asyncio
import redis.asyncio.connection

#: A pool may be bounded on purpose (``max_connections``), and a connection
#: kept out of a small one would starve its other users; redis-py's own
#: bound is 100 (redis-py 8) or 2**31 (before).
PINNED_POOL_MIN_CONNECTIONS = 16

_PINNED_ATTRIBUTE = "_sandboxq_pinned"
#: Held while a client's pinned connection is made (the first command of a
#: client, or of a forked child).
_PINNING = threading.Lock()

#: How many forks this process descends from: a pinned connection made
#: before the last one is the parent's. (Counted at fork rather than
#: os.getpid() per command: getpid is a system call, on the hot path.)
_forks = 0


def _count_fork() -> None:
    global _forks, _PINNING
    _forks += 1
    _PINNING = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_count_fork)


class _Pinned:
    """The connection a client's :func:`execute` keeps: kept on the client
    (as ``_sandboxq_pinned``), so it lives and dies with it."""

    __slots__ = ("connection", "forks", "lock")

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.forks = _forks
        self.lock = threading.Lock()
        # Handed out by the pool and never given back: the pool counts it as
        # in use, so closing the client closes it too.
        self.connection: Any = pool.get_connection()


def execute(client: redis.Redis, args: tuple[Any, ...]) -> Any:
    """Run one command (str, bytes and int arguments) and return its raw reply."""
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    pinned = _pinned(client)
    if pinned is None or not pinned.lock.acquire(blocking=False):
        return _on_pooled_connection(client.connection_pool, args)
    try:
        connection = pinned.connection
        if connection._sock is not None:  # else it connects as it sends
            _check_idle(connection)
        return _round_trip(connection, [hiredis.pack_command(args)])
    finally:
        pinned.lock.release()


def _check_idle(connection: Any) -> None:
    """What a pool checks before it hands a connection out: a socket the
    server closed meanwhile (a restart, an idle timeout) or one holding
    stray data is closed, so the command goes out on a new one instead of
    failing for it (a client whose retry policy is "never")."""
    try:
        stale = connection.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        stale = True
    if stale:
        connection.disconnect()


def _pinned(client: redis.Redis) -> _Pinned | None:
    """The client's pinned connection, made on first use; None where its
    pool is not redis-py's own or is a small one."""
    pinned: _Pinned | None = client.__dict__.get(_PINNED_ATTRIBUTE)
    if pinned is not None and pinned.forks == _forks:
        return pinned
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool or pool.max_connections < PINNED_POOL_MIN_CONNECTIONS:
        return None
    # Made once: a second one would stay "in use" in the pool for good.
    with _PINNING:
        pinned = client.__dict__.get(_PINNED_ATTRIBUTE)
        if pinned is None or pinned.forks != _forks:
            pinned = client.__dict__[_PINNED_ATTRIBUTE] = _Pinned(pool)
    return pinned


def _on_pooled_connection(pool: redis.ConnectionPool, args: tuple[Any, ...]) -> Any:
    connection = pool.get_connection()
    try:
        return _round_trip(connection, [hiredis.pack_command(args)])
    finally:
        pool.release(connection)


def _round_trip(connection: Any, packed: list[bytes]) -> Any:
    """Send ``packed`` and read its reply, with the connection's retry
    policy. (A failure of any kind, an interrupt too, closes the connection:
    redis-py's send and read do that themselves.)"""

    def once() -> Any:
        connection.send_packed_command(packed)
        return connection.read_response()

    return connection.retry.call_with_retry(once, lambda _error: connection.disconnect())


class _PinnedAsync:
    """:class:`_Pinned` for an asyncio client: one per event loop and process."""

    __slots__ = ("busy", "connection", "forks", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.forks = _forks
        self.loop = loop
        self.busy = False
        self.connection: Any = None  # made by the first command (the pool's is a coroutine)


async def execute_async(client: redis.asyncio.Redis, args: tuple[Any, ...]) -> Any:
    """:func:`execute` on an asyncio client."""
    if type(client) is not redis.asyncio.Redis or client.single_connection_client:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    pool = client.connection_pool
    pinned = _pinned_async(client)
    if pinned is None or pinned.busy:
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await _round_trip_async(connection, [hiredis.pack_command(args)])
        finally:
            await pool.release(connection)
    pinned.busy = True
    try:
        if pinned.connection is None:
            pinned.connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        elif pinned.connection.is_connected:
            await _check_idle_async(pinned.connection)
        return await _round_trip_async(pinned.connection, [hiredis.pack_command(args)])
    finally:
        pinned.busy = False


#: The asyncio connection's readiness check: redis-py 8 renamed it, and
#: warns (at a cost on every call) where the old name is used.
_ASYNC_CAN_READ = (
    "can_read"
    if hasattr(redis.asyncio.connection.AbstractConnection, "can_read")
    else "can_read_destructive"
)


async def _check_idle_async(connection: Any) -> None:
    """:func:`_check_idle` on an asyncio connection."""
    try:
        stale = await getattr(connection, _ASYNC_CAN_READ)()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        stale = True
    if stale:
        await connection.disconnect()


async def _round_trip_async(connection: Any, packed: list[bytes]) -> Any:
    """:func:`_round_trip` on an asyncio connection."""

    async def once() -> Any:
        await connection.send_packed_command(packed)
        return await connection.read_response()

    async def close(_error: BaseException) -> None:
        await connection.disconnect()

    return await connection.retry.call_with_retry(once, close)


def _pinned_async(client: redis.asyncio.Redis) -> _PinnedAsync | None:
    loop = asyncio.get_running_loop()
    pinned: _PinnedAsync | None = client.__dict__.get(_PINNED_ATTRIBUTE)
    if pinned is not None and pinned.loop is loop and pinned.forks == _forks:
        return pinned
    pool = client.connection_pool
    if (
        type(pool) is not redis.asyncio.ConnectionPool
        or pool.max_connections < PINNED_POOL_MIN_CONNECTIONS
    ):
        return None
    pinned = _PinnedAsync(loop)
    client.__dict__[_PINNED_ATTRIBUTE] = pinned
    return pinned
