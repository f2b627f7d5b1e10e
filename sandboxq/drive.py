"""Running sans-I/O operations (:mod:`sandboxq.ops`) on a Redis client.

:func:`drive` runs one on a blocking redis-py client, :func:`drive_async`
on a ``redis.asyncio`` client. They differ only in how a round trip is
made: which command, how replies decode, and reloading a script Redis lost
are decided once, in the operations and :func:`sandboxq.ops.settle_replies`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from sandboxq.direct import execute_async
from sandboxq.ops import Command, Op, Request, Round, round_block, settle_replies
from sandboxq.scripts import ScriptCall, lua_source, run_script


def drive(client: Any, op: Op[Any]) -> Any:
    """Run ``op`` to its end on a blocking client; return its result."""
    reply = None
    try:
        while True:
            reply = _round(client, op.send(reply))
    except StopIteration as done:
        return done.value


def _round(client: Any, round_: Round) -> Any:
    if isinstance(round_, Command):
        return client.execute_command(*round_.args, **round_.options)
    if isinstance(round_, ScriptCall):
        return run_script(client, round_)
    pipe = client.pipeline(transaction=False)
    for request in round_:
        _queue(pipe, request)
    replies = pipe.execute(raise_on_error=False)
    for index in settle_replies(round_, replies):
        replies[index] = run_script(client, round_[index])  # type: ignore[arg-type]
    return replies


def _queue(pipe: Any, request: Request) -> None:
    if isinstance(request, Command):
        pipe.execute_command(*request.args, **request.options)
    else:
        # Straight EVALSHA: a pipeline's script calls redis-py would precede
        # with SCRIPT EXISTS. A script Redis lost is loaded and run again.
        pipe.execute_command(*request.command())


async def drive_async(client: Any, op: Op[Any], timeout: float) -> Any:
    """Run ``op`` to its end on a ``redis.asyncio`` client. Each round trip
    may take ``timeout`` seconds (plus what a blocking read may wait) before
    it raises ``redis.TimeoutError``; the loop is never blocked."""
    reply = None
    try:
        while True:
            round_ = op.send(reply)
            try:
                async with asyncio.timeout(timeout + round_block(round_)):
                    reply = await _round_async(client, round_)
            except TimeoutError as exc:  # the round trip's, not the operation's own
                raise redis.TimeoutError(f"no reply within {timeout}s") from exc
    except StopIteration as done:
        return done.value


async def _round_async(client: Any, round_: Round) -> Any:
    if isinstance(round_, Command):
        return await client.execute_command(*round_.args, **round_.options)
    if isinstance(round_, ScriptCall):
        return await _script_async(client, round_)
    pipe = client.pipeline(transaction=False)
    for request in round_:
        _queue(pipe, request)
    replies = await pipe.execute(raise_on_error=False)
    for index in settle_replies(round_, replies):
        replies[index] = await _script_async(client, round_[index])  # type: ignore[arg-type]
    return replies


async def _script_async(client: Any, call: ScriptCall) -> Any:
    try:
        raw = await execute_async(client, call.command())
    except redis.exceptions.NoScriptError:
        await client.script_load(lua_source(call.name))
        raw = await execute_async(client, call.command())
    return call.decode(raw)
