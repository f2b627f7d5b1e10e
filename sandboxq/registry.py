"""A heartbeat registry of live worker parents, for ``sandboxq workers``.

Each worker parent writes its description (host, pid, queues, procs, start
time) with a heartbeat time, in the same pipelined round trip as its other
periodic work; readers list those seen recently. The key is global (not per
queue): a worker may serve many queues. Each heartbeat also deletes a few
entries of workers that died (``lua/heartbeat.lua``), so the registry stays
the size of the live fleet without anyone reading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sandboxq.drive import drive
from sandboxq.ops import Op, cmd

if TYPE_CHECKING:
    from sandboxq.scripts import Scripts

WORKERS = "sq:workers"  # hash: token -> description with last_seen (JSON)

#: A worker not seen for this long is presumed gone (it beats every <= 15 s).
STALE_MS = 60_000

#: Entries each heartbeat looks at, to delete those of dead workers.
TRIM_SAMPLE = 5


def heartbeat(scripts: Scripts, token: str, description: dict[str, Any], now_ms: int) -> Any:
    """This worker's heartbeat: one script call (a ``ScriptCall`` when
    ``scripts`` has no client, which is how the worker sends it)."""
    raw = orjson.dumps({**description, "last_seen": now_ms / 1000.0})
    return scripts.heartbeat(WORKERS, token, raw, now_ms, STALE_MS, TRIM_SAMPLE)


def forget(client: Any, token: str) -> None:
    """A worker that stops cleanly leaves the registry at once."""
    client.hdel(WORKERS, token)


def live_workers_op(now_ms: int, stale_ms: int = STALE_MS) -> Op[list[dict[str, Any]]]:
    """Workers seen within ``stale_ms``, oldest first; forgets the others."""
    live, gone = [], []
    entries: dict[bytes, bytes] = yield cmd("HGETALL", WORKERS)
    for token, raw in entries.items():
        try:
            entry = orjson.loads(raw)
            seen = float(entry["last_seen"])
        except (ValueError, TypeError, KeyError):
            gone.append(token)  # unreadable: no worker wrote it; heartbeat.lua agrees
            continue
        if now_ms - seen * 1000 > stale_ms:
            gone.append(token)
        else:
            live.append({**entry, "token": token.decode()})
    if gone:
        yield cmd("HDEL", WORKERS, *gone)
    return sorted(live, key=lambda w: w.get("started_at", 0))


def live_workers(client: Any, now_ms: int, stale_ms: int = STALE_MS) -> list[dict[str, Any]]:
    """:func:`live_workers_op` on a blocking client."""
    workers: list[dict[str, Any]] = drive(client, live_workers_op(now_ms, stale_ms))
    return workers
