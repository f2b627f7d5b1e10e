"""One command, past redis-py's client layer (blocking and asyncio clients).

A producer's ``add`` is one script call, and on the development box
redis-py's per-command layer (argument checks, observability hooks,
response callbacks) costs about as much CPU as the round trip itself. So on
a plain ``redis.Redis`` (``redis.asyncio.Redis``), :func:`execute`
(:func:`execute_async`) takes a connection from the client's pool, writes
the packed command and reads the reply there, and gives the connection
back. What matters stays redis-py's: the pool, connecting (AUTH, SELECT,
TLS), health checks, the client's retry policy, and error replies raised as
the same exceptions. Other clients (a single-connection client, a Sentinel
or Cluster client, a subclass) go the usual way, through ``execute_command``.

Why the connection goes back to the pool rather than being kept for these
calls (which would save the pool's hand-out as well): a producer that sends
``WAIT`` through the client after an ``add`` (docs/deploy.md) must get the
add's connection, because WAIT counts the writes of the connection it runs
on. The pool hands out the connection it took back last, so a producer's
WAIT counts its own add; on a connection kept apart it would count nothing
and return at once (tests/test_direct.py checks it).
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
import redis.asyncio


def execute(client: redis.Redis, args: tuple[Any, ...]) -> Any:
    """Run one command (str, bytes and int arguments) and return its raw reply."""
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    packed = [hiredis.pack_command(args)]
    pool = client.connection_pool
    connection: Any = pool.get_connection()

    def once() -> Any:
        connection.send_packed_command(packed)
        return connection.read_response()

    try:
        # A failed attempt closes the connection, so a retry connects anew.
        return connection.retry.call_with_retry(once, lambda _error: connection.disconnect())
    finally:
        pool.release(connection)


async def execute_async(client: redis.asyncio.Redis, args: tuple[Any, ...]) -> Any:
    """:func:`execute` on an asyncio client."""
    if type(client) is not redis.asyncio.Redis or client.single_connection_client:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    packed = [hiredis.pack_command(args)]
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def once() -> Any:
        await connection.send_packed_command(packed)
        return await connection.read_response()

    async def close(_error: BaseException) -> None:
        await connection.disconnect()

    try:
        return await connection.retry.call_with_retry(once, close)
    finally:
        await pool.release(connection)
