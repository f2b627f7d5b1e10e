"""Sans-I/O operations: what they yield, and how front ends run them.

An operation is a generator. Each value it yields is one round trip: a
:class:`Command` or a :class:`~sandboxq.scripts.ScriptCall`, or a list of
them to pipeline. It is sent back the reply (a list of replies for a list),
and what it finally returns is the operation's result. Validation, encoding,
script arguments and reply decoding all happen in the operations, once; a
front end only runs the round trips (:mod:`sandboxq.drive`):
:class:`sandboxq.Queue` with blocking redis-py calls and
:class:`sandboxq.aio.AsyncQueue` with ``redis.asyncio``.

Front-end methods are made from the operations with :func:`blocking` and
:func:`awaiting`, so each public method is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis

from sandboxq.scripts import ScriptCall, Scripts

#: The scripts, described rather than run: operations yield what they return.
PLAN = Scripts(None)


@dataclass(frozen=True, slots=True)
class Command:
    """One plain Redis command. ``options`` go to redis-py's reply parser
    (e.g. ``withscores``); ``block`` is how long a blocking command (XREAD
    BLOCK) may wait, on top of the round trip's timeout."""

    args: tuple[Any, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    block: float = 0.0


Request = Command | ScriptCall
Round = Request | list[Request]
R = TypeVar("R")
Op = Generator[Round, Any, R]


def cmd(*args: Any, **options: Any) -> Command:
    return Command(args, options)


def round_block(round_: Round) -> float:
    """The longest a round trip's blocking commands may wait."""
    requests = round_ if isinstance(round_, list) else [round_]
    return max((r.block for r in requests if isinstance(r, Command)), default=0.0)


def settle_replies(requests: Sequence[Request], replies: Sequence[Any]) -> list[int]:
    """Decode a pipeline's replies in place; return the indices of script
    calls Redis did not know (to load and run again). Any other error reply
    is raised."""
    redo = []
    for index, (request, reply) in enumerate(zip(requests, replies, strict=True)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            redo.append(index)
        elif isinstance(reply, Exception):
            raise reply
        elif isinstance(request, ScriptCall):
            replies[index] = request.decode(reply)  # type: ignore[index]
    return redo


# -- front-end methods ---------------------------------------------------------------
S = TypeVar("S")
P = ParamSpec("P")


def _present(method: Callable[..., Any], op: Callable[..., Any]) -> None:
    """Give a front-end method the operation's name (less its ``_``) and doc."""
    method.__name__ = method.__qualname__ = op.__name__.lstrip("_")
    method.__doc__ = op.__doc__


def blocking(op: Callable[Concatenate[S, P], Op[R]]) -> Callable[Concatenate[S, P], R]:
    """A front-end method that runs operation ``op`` to its end, blocking."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._drive(op(self, *args, **kwargs))  # type: ignore[no-any-return]

    _present(method, op)
    return method


def awaiting(
    op: Callable[Concatenate[S, P], Op[R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """A front-end coroutine method that runs operation ``op`` on the loop."""

    async def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._drive(op(self, *args, **kwargs))  # type: ignore[no-any-return]

    _present(method, op)
    return method
