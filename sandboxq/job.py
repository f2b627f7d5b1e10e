"""The Job model: a snapshot of one job's hash, plus refresh and wait."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sandboxq import events, fast, payload
from sandboxq.connection import url_in_errors
from sandboxq.errors import JobCancelled, JobFailed

if TYPE_CHECKING:
    from sandboxq.queue import Queue

#: Every state a job can be in.
STATES = ("waiting", "delayed", "active", "completed", "failed", "waiting-children", "cancelled")
FINISHED_STATES = ("completed", "failed", "cancelled")

#: The longest single blocking read of the events stream inside ``wait``;
#: between reads the job is re-read, so a missed event costs at most this.
_WAIT_BLOCK_SECONDS = 2.0


class Job:
    """A job as last read from Redis. Attributes are a snapshot: call
    :meth:`refresh` to read them again.

    Times are seconds since the epoch (floats) or ``None``.
    """

    def __init__(self, queue: Queue, job_id: str, fields: dict[str, Any]) -> None:
        """``fields``: the job hash's fields as Python values."""
        self.queue = queue
        self.id = job_id
        self._load(fields)

    @classmethod
    def from_hash(cls, queue: Queue, job_id: str, raw: dict[Any, Any]) -> Job:
        """The job from its hash as HGETALL returns it (bytes to bytes)."""
        return cls(queue, job_id, payload.with_json_decoded(fast.decode_job_mapping(raw)))

    def _load(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.name: str = fields.get("name", "")
        self.data: Any = fields.get("data")
        self.state: str = fields.get("state", "")
        self.priority: int = fields.get("priority", 0)
        self.progress: Any = fields.get("progress")
        self.result: Any = fields.get("result")
        self.error: str | None = fields.get("error")
        self.traceback: str | None = fields.get("traceback")
        self.attempts: int = fields.get("attempts", 1)
        self.attempts_made: int = fields.get("attempts_made", 0)
        self.stalls: int = fields.get("stalls", 0)
        self.retries: int = fields.get("retries", 0)
        self.timeout: float | None = fields.get("timeout")
        self.created_at: float | None = fields.get("created_at")
        self.started_at: float | None = fields.get("started_at")
        self.finished_at: float | None = fields.get("finished_at")
        #: Who cancelled it and why (set once a cancel was asked).
        self.cancelled_by: str | None = fields.get("cancelled_by")
        self.cancel_reason: str | None = fields.get("cancel_reason") or None

    def __repr__(self) -> str:
        return f"<Job {self.queue.name}/{self.id} {self.name!r} {self.state}>"

    def refresh(self) -> Job:
        """Read the job again. Raises LookupError if it no longer exists."""
        fresh = self.queue.get_job(self.id)
        if fresh is None:
            raise LookupError(f"job {self.id} no longer exists in queue {self.queue.name!r}")
        self._load(fresh.fields)
        return self

    def cancel(self, reason: str | None = None, by: str | None = None) -> str | None:
        """Cancel this job: see :meth:`Queue.cancel`."""
        return self.queue.cancel(self.id, reason=reason, by=by)

    def children_results(self) -> dict[str, Any]:
        """A flow parent's finished children's results, by ``"queue:id"``."""
        with url_in_errors(self.queue.url):
            raw: Any = self.queue.client.hgetall(self.queue.keys.deps(self.id))
        return {ref.decode(): orjson.loads(value) for ref, value in raw.items()}

    def children_failures(self) -> dict[str, str]:
        """Children that failed and were skipped (``ignore_failed_children``)."""
        with url_in_errors(self.queue.url):
            raw: Any = self.queue.client.hgetall(self.queue.keys.ignored(self.id))
        return {ref.decode(): error.decode() for ref, error in raw.items()}

    def audit(self) -> list[dict[str, Any]]:
        """Manual actions on this job, oldest first: at, by, action."""
        with url_in_errors(self.queue.url):
            raw: Any = self.queue.client.lrange(self.queue.keys.job_audit(self.id), 0, -1)
        return [orjson.loads(entry) for entry in raw]

    def logs(self) -> list[str]:
        """The log lines the handler wrote (the newest 1,000)."""
        return self.queue.job_logs(self.id)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return its result.

        Raises :class:`sandboxq.JobFailed` if it failed for good,
        :class:`sandboxq.JobCancelled` if it was cancelled, and
        :class:`TimeoutError` if it has not finished within ``timeout``
        seconds. Waiting follows the queue's event stream; it does not poll.
        """
        with url_in_errors(self.queue.url):
            return self._wait(timeout)

    def _wait(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        client, stream = self.queue.client, self.queue.keys.events
        cursor = events.last_id(client, stream)
        while True:
            self.refresh()
            if self.state == "completed":
                return self.result
            if self.state == "failed":
                raise JobFailed(self)
            if self.state == "cancelled":
                raise JobCancelled(self)
            block = _WAIT_BLOCK_SECONDS
            if deadline is not None:
                block = min(block, deadline - time.monotonic())
                if block <= 0:
                    raise TimeoutError(
                        f"job {self.id} ({self.name}) still {self.state} after {timeout}s"
                    )
            cursor = events.wait_for(
                client, stream, cursor, self.id, (*FINISHED_STATES, "removed"), block
            )
