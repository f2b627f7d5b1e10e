"""The Lua scripts as Redis runs them: their text, their SHA1, one call.

Each transition is one file in ``sandboxq/lua/``. A line ``--!include NAME``
inlines ``lua/include/NAME.lua``, so shared helpers exist once on disk and
still travel inside each script (Redis 6.2 has no shared functions); the
sharing is all text, so it costs Redis nothing at run time. The arguments
every script starts with (key prefix, now, events maxlen) are written down
at the top of ``lua/include/common.lua``.

A call is a :class:`ScriptCall`: its EVALSHA command, and how its reply
decodes. :func:`run_script` runs one on a blocking client, loading the
script again if Redis lost it (NOSCRIPT, after a restart or SCRIPT FLUSH);
drivers that pipeline calls (:mod:`sandboxq.drive`, the worker) send the
same command. :class:`ScriptRunner` is what every wrapper method
(:mod:`sandboxq.scripts`) goes through.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

from sandboxq.direct import execute

#: How many lifecycle events a queue's stream keeps (approximately).
EVENTS_MAXLEN = 10_000

#: The most jobs a bulk step (promote, clean, drain, retry-all) touches per call,
#: so one call never blocks Redis for long.
MAX_PER_CALL = 1000

_NEEDS = re.compile(r"^-- Needs: ([^(\n]*)", re.MULTILINE)


def now_ms() -> int:
    return int(time.time() * 1000)


@cache
def _include(name: str) -> str:
    return (resources.files("sandboxq") / "lua" / "include" / f"{name}.lua").read_text()


@cache
def _include_names() -> frozenset[str]:
    folder = resources.files("sandboxq") / "lua" / "include"
    return frozenset(
        f.name.removesuffix(".lua") for f in folder.iterdir() if f.name.endswith(".lua")
    )


def _needs(include: str) -> list[tuple[str, bool]]:
    """What ``include``'s "-- Needs:" line names: each include it uses, and
    whether that one comes after it (retention calls what flow defines)."""
    match = _NEEDS.search(_include(include))
    if match is None:
        return []
    named = re.findall(r"([a-z_]+)( after it)?", match.group(1))
    return [(needed, bool(after)) for needed, after in named if needed in _include_names()]


def check_includes(name: str, included: list[str]) -> None:
    """Each include's needs are included too, in the order its Needs line
    says: a helper a script lacks would fail only when that line runs."""
    for position, include in enumerate(included):
        for needed, after in _needs(include):
            if needed not in included:
                raise RuntimeError(
                    f"lua/{name}.lua includes {include}, so it must include {needed} too"
                )
            if (included.index(needed) > position) != after:
                where = "after" if after else "before"
                raise RuntimeError(f"lua/{name}.lua must include {needed} {where} {include}")


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/NAME.lua`` with its includes inlined."""
    folder = resources.files("sandboxq") / "lua"
    lines, included = [], []
    for line in (folder / f"{name}.lua").read_text().splitlines():
        if line.startswith("--!include "):
            include = line.split(None, 1)[1].strip()
            included.append(include)
            lines.append(_include(include))
        else:
            lines.append(line)
    check_includes(name, included)
    return "\n".join(lines) + "\n"


@cache
def script_sha(name: str) -> str:
    """The SHA1 Redis knows ``lua/NAME.lua`` by (EVALSHA)."""
    return hashlib.sha1(lua_source(name).encode()).hexdigest()


def decode_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_ids(raw: Sequence[bytes | str]) -> list[str]:
    """A script's array of job ids as text."""
    return [decode_text(i) for i in raw]


def _raw(reply: Any) -> Any:
    return reply


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script run, described but not run: ``decode`` turns its raw reply
    into the method's result."""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]
    decode: Callable[[Any], Any] = _raw

    def command(self) -> tuple[Any, ...]:
        return ("EVALSHA", script_sha(self.name), len(self.keys), *self.keys, *self.args)


def run_script(client: Any, call: ScriptCall) -> Any:
    """Run ``call`` on a blocking client and decode its reply; a script Redis
    lost (a restart, SCRIPT FLUSH) is loaded and run again."""
    try:
        raw = execute(client, call.command())
    except redis.exceptions.NoScriptError:
        client.script_load(lua_source(call.name))
        raw = execute(client, call.command())
    return call.decode(raw)


class ScriptRunner:
    """One Redis client's way to run the scripts: what every wrapper method
    of :class:`sandboxq.scripts.Scripts` goes through."""

    #: Every script (lua/NAME.lua), loaded together by :meth:`load_all`.
    NAMES: tuple[str, ...] = ()

    def __init__(self, client: redis.Redis | None, events_maxlen: int = EVENTS_MAXLEN) -> None:
        """``client`` runs the scripts; without one, each method returns
        the :class:`ScriptCall` it would run (what the queue's sans-I/O
        operations yield to their driver)."""
        self.client: Any = client
        self.events_maxlen = events_maxlen

    def _head(self, prefix: str, now: int | str) -> list[Any]:
        """The arguments every script starts with (lua/include/common.lua):
        key prefix, now (ms), events maxlen."""
        return [prefix, now, self.events_maxlen]

    def _run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        decode: Callable[[Any], Any] = _raw,
    ) -> Any:
        """Run one script and decode its reply; or, with no client, describe
        it (the :class:`ScriptCall` that drivers pipeline: ``command()``)."""
        call = ScriptCall(name, keys, args, decode)
        if self.client is None:
            return call
        return run_script(self.client, call)

    def load_all(self) -> None:
        """Load every script into Redis's cache (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for name in self.NAMES:
            pipe.script_load(lua_source(name))
        pipe.execute()
