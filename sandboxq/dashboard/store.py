"""What the dashboard shows, read from Redis through the public Queue API.

Every view goes through a :class:`Store`, which also applies redaction, so
no page or JSON endpoint can show a sensitive field by forgetting to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from sandboxq import stats
from sandboxq.dashboard.redact import Redactor
from sandboxq.job import STATES
from sandboxq.keys import QueueKeys
from sandboxq.queue import Queue
from sandboxq.registry import live_workers
from sandboxq.reports import discover_queues, job_report, job_summary
from sandboxq.scripts import now_ms

#: Jobs per page of a job list.
PER_PAGE = 50
#: How many of a state's ids (from the first) a search by name looks at:
#: one ZRANGE, then one pipelined HGET of each job's name.
NAME_SCAN = 5000
#: A job's values whose sensitive fields are hidden; the same secrets are
#: hidden in its error, traceback, logs and children's errors.
SENSITIVE_FIELDS = ("data", "result", "progress", "steps", "children_results")
#: How long a SCAN for queue names is reused (a full SCAN walks every key).
DISCOVERY_TTL = 5.0
THROUGHPUT_WINDOW = 60.0
#: The audit stream's cap, as the Lua scripts' (include/common.lua).


#: A chart's span: how many minutes, and how many minutes a point sums.
CHART_SPANS = {"hour": (60, 1), "day": (1440, 10)}


class NotFound(LookupError):
    """No such queue or job."""


class Store:
    def __init__(
        self, client: redis.Redis, redactor: Redactor, queues: Sequence[str] | None = None
    ) -> None:
        self.client = client
        self.redact = redactor
        self.fixed = None if queues is None else tuple(queues)
        self._found: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()
        self._queues: dict[str, Queue] = {}

    # -- queues ----------------------------------------------------------------
    def queue_names(self) -> list[str]:
        if self.fixed is not None:
            return list(self.fixed)
        with self._lock:
            at, names = self._found
            if time.monotonic() - at > DISCOVERY_TTL:
                names = discover_queues(self.client)
                self._found = (time.monotonic(), names)
            return names

    def queue(self, name: str) -> Queue:
        """The queue ``name``; NotFound unless it is served and exists (one
        EXISTS on its events stream, never a SCAN)."""
        if self.fixed is not None and name not in self.fixed:
            raise NotFound(f"queue {name!r} is not served here")
        with self._lock:
            found = self._queues.get(name)
        if found is not None:
            return found
        try:
            keys = QueueKeys.for_queue(name)
        except (TypeError, ValueError):
            raise NotFound(f"bad queue name {name!r}") from None
        if self.fixed is None and not self.client.exists(keys.events):
            raise NotFound(f"no queue {name!r}")
        queue = Queue(name, connection=self.client)
        with self._lock:
            self._queues[name] = queue
        return queue

    def overview(self) -> list[dict[str, Any]]:
        workers = live_workers(self.client, now_ms())
        found = []
        for name in self.queue_names():
            queue = Queue(name, connection=self.client)
            found.append(
                {
                    "queue": name,
                    "counts": queue.counts(),
                    "paused": queue.is_paused(),
                    "throughput": queue.throughput(THROUGHPUT_WINDOW),
                    "workers": [w for w in workers if name in w.get("queues", ())],
                    "last_hour": self.series(queue, "hour")["points"],
                }
            )
        return found

    def charts(self, name: str, span: str) -> dict[str, Any]:
        """The queue's charts over ``span`` (hour: a point a minute; day: a
        point per 10 minutes, summed on read)."""
        if span not in CHART_SPANS:
            raise NotFound(f"unknown span {span!r}: hour or day")
        return {"queue": name, "span": span, **self.series(self.queue(name), span)}

    def series(self, queue: Queue, span: str) -> dict[str, Any]:
        """Every minute's stats hash of the span in one pipelined round trip."""
        count, per = CHART_SPANS[span]
        minutes = stats.span_minutes(stats.minute_of(now_ms()), count)
        pipe = self.client.pipeline(transaction=False)
        for key in stats.keys_of(queue.keys, minutes):
            pipe.hgetall(key)
        hashes = [stats.decode(raw) for raw in pipe.execute()]
        return {"per_minutes": per, **stats.summarize(minutes, hashes, per)}

    # -- jobs ------------------------------------------------------------------
    def job_page(
        self, name: str, state: str, page: int, *, job_id: str = "", search: str = ""
    ) -> dict[str, Any]:
        """One page of ``state``'s jobs: ZRANGE by rank, then every hash in one
        pipeline. ``job_id`` looks one job up instead; ``search`` pages
        through the jobs whose name contains it (case-insensitively) among
        the state's first ``NAME_SCAN`` ids."""
        if state not in STATES:
            raise NotFound(f"unknown state {state!r}")
        queue = self.queue(name)
        counts = queue.counts()
        total = counts[state]
        scanned, matched = 0, None
        if job_id:
            one = queue.get_job(job_id)
            jobs, page, pages = ([] if one is None else [one]), 1, 1
        else:
            if search:
                ids = queue.job_ids(state, 0, NAME_SCAN)
                scanned = len(ids)
                ids = self._named(queue, ids, search.lower())
                found = matched = len(ids)
            else:
                ids, found = [], total
            pages = max(1, -(-found // PER_PAGE))
            page = min(max(page, 1), pages)
            start = (page - 1) * PER_PAGE
            window = slice(start, start + PER_PAGE)
            jobs = queue.get_jobs(ids[window] if search else queue.job_ids(state, start, PER_PAGE))
        rows = []
        for j in jobs:
            row = job_summary(j)
            row["error"] = self.redact.in_text(j.data, j.result, j.progress)(row["error"])
            rows.append(row)
        return {
            "queue": name,
            "state": state,
            "page": page,
            "pages": pages,
            "per_page": PER_PAGE,
            "total": total,
            "counts": counts,
            "paused": queue.is_paused(),
            "job_id": job_id,
            "search": search,
            "scanned": scanned,
            "matched": matched,
            "scan_limit": NAME_SCAN,
            "jobs": rows,
        }

    def _named(self, queue: Queue, ids: list[str], search: str) -> list[str]:
        """Those of ``ids`` whose job's name contains ``search`` (lower
        case): every name in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(queue.keys.job(job_id), "name")
        names = pipe.execute()
        return [
            job_id
            for job_id, found in zip(ids, names, strict=True)
            if found is not None and search in found.decode("utf-8", "replace").lower()
        ]

    def job(self, name: str, job_id: str) -> dict[str, Any]:
        queue = self.queue(name)
        job = queue.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} in queue {name!r}")
        report = job_report(job)
        hide = self.redact.in_text(*(report[f] for f in SENSITIVE_FIELDS))
        for field in SENSITIVE_FIELDS:
            report[field] = self.redact(report[field])
        report["error"] = hide(report["error"])
        report["traceback"] = hide(report["traceback"])
        report["logs"] = [hide(line) for line in report["logs"]]
        report["children_failures"] = {
            ref: hide(error) for ref, error in report["children_failures"].items()
        }
        report["children"] = [
            {"ref": ref, **split_ref(ref), "result": value}
            for ref, value in report["children_results"].items()
        ]
        report["children_failed"] = [
            {"ref": ref, **split_ref(ref), "error": error}
            for ref, error in report["children_failures"].items()
        ]
        return report

    def schedules(self, name: str) -> list[dict[str, Any]]:
        found = self.queue(name).schedules()
        for schedule in found:
            schedule["data"] = self.redact(schedule["data"])
        return found


def split_ref(ref: str) -> dict[str, str]:
    """``media:thumbs:12`` (a flow child's ``queue:id``) → queue and id."""
    queue, _, job_id = ref.rpartition(":")
    return {"queue": queue, "id": job_id}
