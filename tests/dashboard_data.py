"""Fill a queue with many completed jobs quickly, for the dashboard's
pagination test and benchmark: a plain pipeline writes what finish.lua would
leave behind (the job hash and its place in the completed set), with no Lua
and no worker."""

from __future__ import annotations

import orjson

from sandboxq import Queue
from sandboxq.scripts import now_ms


def fill_completed(queue: Queue, count: int, *, batch: int = 5000) -> list[str]:
    """Add ``count`` completed jobs; returns their ids, oldest first. Job
    ``i`` finished at ``base + i`` ms, so the newest is the last id."""
    last = int(queue.client.incrby(queue.keys.id_counter, count))  # type: ignore[arg-type]
    ids = [str(i) for i in range(last - count + 1, last + 1)]
    base = now_ms() - count - 1000
    for start in range(0, count, batch):
        pipe = queue.client.pipeline(transaction=False)
        scores = {}
        for offset, job_id in enumerate(ids[start : start + batch], start):
            at = base + offset
            pipe.hset(
                queue.keys.job(job_id),
                mapping={
                    "name": f"bulk-{offset % 7}",
                    "data": orjson.dumps({"n": offset}),
                    "state": "completed",
                    "priority": 0,
                    "attempts": 1,
                    "attempts_made": 1,
                    "stalls": 0,
                    "created_at": at - 5,
                    "started_at": at - 2,
                    "finished_at": at,
                    "result": orjson.dumps({"ok": offset}),
                },
            )
            scores[job_id] = at
        pipe.zadd(queue.keys.completed, scores)
        pipe.execute()
    return ids
