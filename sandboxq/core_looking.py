"""The queue's read-only operations (jobs, counts, audit, workers,
throughput, logs): a part of :class:`sandboxq.core.QueueCore`, sans-I/O
like the rest (see :mod:`sandboxq.ops`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sandboxq import registry
from sandboxq.job import FINISHED_STATES, STATES, JobRecord
from sandboxq.keys import JOB_SETS, QueueKeys
from sandboxq.ops import PLAN, Op, cmd
from sandboxq.options import ms
from sandboxq.scripts import now_ms

J = TypeVar("J", bound=JobRecord)


def counts_op(keys: QueueKeys) -> Op[dict[str, int]]:
    """How many jobs of a queue are in each state (one round trip, no
    scans); the worker's metrics read them too."""
    replies = yield [
        *(cmd("ZCARD", getattr(keys, key)) for key in JOB_SETS),
        cmd("GET", keys.gcount),
    ]
    *sizes, grouped = replies
    counts = {state: size for state, size in zip(STATES, sizes, strict=True)}
    counts["waiting"] += int(grouped or 0)  # grouped jobs wait in their group's set
    return counts


def deduplicated_op(keys: QueueKeys) -> Op[int]:
    """How many adds the queue's dedupe windows held back, ever (the add
    script's counter; one that is not an integer counts as 0)."""
    raw = yield cmd("GET", keys.deduplicated)
    return int(raw) if raw is not None and raw.lstrip(b"-").isdigit() else 0


def is_paused_op(keys: QueueKeys) -> Op[bool]:
    """Whether a queue is paused."""
    return bool((yield cmd("HEXISTS", keys.meta, "paused")))


class LookingOps(Generic[J]):
    """Reading a queue's jobs and figures; changes nothing."""

    keys: QueueKeys
    job_type: type[J]

    def _get_job(self, job_id: str) -> Op[J | None]:
        """The job, or None if there is no such job (any more)."""
        fields = yield cmd("HGETALL", self.keys.job(str(job_id)))
        if not fields:
            return None
        return self.job_type.from_hash(self, str(job_id), fields)

    def _get_jobs(self, job_ids: Sequence[str]) -> Op[list[J]]:
        """The jobs with these ids in one round trip; those gone are skipped."""
        if not job_ids:
            return []
        found = yield [cmd("HGETALL", self.keys.job(str(i))) for i in job_ids]
        return [
            self.job_type.from_hash(self, str(i), fields)
            for i, fields in zip(job_ids, found, strict=True)
            if fields
        ]

    def _counts(self) -> Op[dict[str, int]]:
        """How many jobs are in each state (one round trip, no scans)."""
        return (yield from counts_op(self.keys))

    def _job_ids(self, state: str, start: int = 0, limit: int = 100) -> Op[list[str]]:
        """Ids in ``state``: the next to run first for waiting and delayed, the
        most recent first for completed and failed. Waiting lists the jobs
        without a group first, then each group's (groups by name), each in
        the order they run."""
        key = self.keys.state_set(state)
        if start < 0 or limit < 1:
            raise ValueError(f"start must be >= 0 and limit >= 1, got {start} and {limit}")
        if state == "waiting":
            waiting: list[str] = yield PLAN.list_waiting(self.keys, start, limit)
            return waiting
        newest_first = state in FINISHED_STATES
        ids: list[bytes] = yield cmd(
            "ZREVRANGE" if newest_first else "ZRANGE", key, start, start + limit - 1
        )
        return [i.decode() for i in ids]

    def _audit_log(self, count: int = 100) -> Op[list[dict[str, Any]]]:
        """The newest manual actions on this queue and its jobs (retries,
        removals, promotions, pauses), newest first: at, by, action, job_id."""
        raw = yield cmd("XREVRANGE", self.keys.audit, "+", "-", "COUNT", count)
        entries = []
        for _entry_id, fields in raw:
            entry = {k.decode(): v.decode() for k, v in fields.items()}
            entries.append({**entry, "at": int(entry["at"]) / 1000.0})
        return entries

    def _workers(self) -> Op[list[dict[str, Any]]]:
        """Live worker parents (any queue): host, pid, queues, procs,
        started_at and last_seen (epoch seconds)."""
        return (yield from registry.live_workers_op(now_ms()))

    def _throughput(self, window: float = 60.0) -> Op[dict[str, float]]:
        """Jobs finished per second over the last ``window`` seconds, by
        outcome, counted from the finished sets' times (no scan; jobs that
        retention already removed are not counted)."""
        now = now_ms()
        completed, failed = yield [
            cmd("ZCOUNT", key, now - ms(window), now)
            for key in (self.keys.completed, self.keys.failed)
        ]
        return {"completed": completed / window, "failed": failed / window}

    def _job_logs(self, job_id: str) -> Op[list[str]]:
        """The log lines a job's handler wrote (the newest 1,000), oldest first."""
        lines = yield cmd("LRANGE", self.keys.logs(job_id), 0, -1)
        return [line.decode(errors="replace") for line in lines]
