"""Run jobs inline, in this process, for tests and debugging.

``run_until_empty`` goes through the same Lua transitions as a worker
(fetch with a lease, finish, retry, backoff), but calls handlers directly:
there is no sandbox, timeout or memory limit here. It is the helper RQ's
``SimpleWorker`` and Dramatiq's ``StubBroker`` give their users.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sandboxq import execution, fast
from sandboxq.handlers import Handler, handlers_for
from sandboxq.queue import Queue
from sandboxq.scripts import now_ms

#: Lease given to inline jobs; nothing renews it, so make it long.
_LEASE_MS = 3_600_000


def run_until_empty(
    queue: Queue,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
    *,
    max_jobs: int | None = None,
    batch: int = 100,
) -> dict[str, int]:
    """Run the queue's jobs until none is ready (due delayed jobs count, and
    so do retries that are due at once); return how many jobs ended in each
    status: ``completed``, ``failed`` and ``retrying``.

    ``handlers``: ``{job name: function}``, a list of handlers, or ``None``
    for those registered with ``@handler`` for this queue. A job with no
    handler fails, without retries, naming the missing handler.
    """
    by_name = handlers_for(queue.name, handlers)
    token = f"inline-{uuid.uuid4().hex}"
    totals: Counter[str] = Counter()
    done = 0
    while max_jobs is None or done < max_jobs:
        count = batch if max_jobs is None else min(batch, max_jobs - done)
        rows, *_ = queue.scripts.fetch(queue.keys, now_ms(), count, token, _LEASE_MS)
        if not rows:
            break
        entries = []
        for job_id, fields in fast.decode_fetched(rows):
            outcome = _run_one(queue, token, job_id, fields, by_name)
            entries.append(execution.finish_entry(job_id, fields, outcome))
        for status in queue.scripts.finish(queue.keys, now_ms(), token, entries):
            totals[status.decode()] += 1
        done += len(entries)
    return dict(totals)


def _run_one(
    queue: Queue, token: str, job_id: str, fields: dict[str, Any], by_name: dict[str, Handler]
) -> execution.Outcome:
    name = fields.get("name", "")
    found = by_name.get(name)
    if found is None:
        return execution.Outcome.error(
            f"no handler for job {name!r} in queue {queue.name!r}", unrecoverable=True
        )

    def report(jid: str, kind: str, value: str) -> None:
        queue.scripts.report(queue.keys, token, [(jid, kind, value)])

    return execution.run_stored(
        found.func,
        queue.name,
        job_id,
        name,
        (fields.get("data"), fields.get("children")),
        fields.get("attempts_made", 0),
        fields.get("retries", 0),
        report,
    )
