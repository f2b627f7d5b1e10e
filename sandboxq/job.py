"""The Job model: a snapshot of one job's hash, plus refresh and wait.

:class:`JobRecord` holds what both front ends share, its operations
included (sans-I/O, see :mod:`sandboxq.ops`); :class:`Job` runs them
blocking, :class:`sandboxq.aio.AsyncJob` on an event loop.
"""

from __future__ import annotations

import time
from typing import Any, Self

import orjson

from sandboxq import events, fast, payload, steps
from sandboxq.errors import JobCancelled, JobFailed
from sandboxq.ops import Op, cmd

#: Every state a job can be in.
STATES = (
    "waiting",
    "delayed",
    "active",
    "completed",
    "failed",
    "waiting-children",
    "waiting-deps",
    "cancelled",
)
FINISHED_STATES = ("completed", "failed", "cancelled")

#: The longest single blocking read of the events stream inside ``wait``;
#: between reads the job is re-read, so a missed event costs at most this.
WAIT_BLOCK_SECONDS = 2.0


class JobRecord:
    """A job as last read from Redis: the attributes both front ends share.
    Attributes are a snapshot: ``refresh()`` reads them again.

    Times are seconds since the epoch (floats) or ``None``.

    Attributes:
        queue: The queue the job belongs to.
        id: The job's id: generated (a decimal number) or the ``job_id`` given.
        name: The job's name, which picks its handler.
        data: The job's data, decoded from JSON.
        state: ``waiting``, ``delayed``, ``active``, ``waiting-children``,
            ``waiting-deps``, ``completed``, ``failed`` or ``cancelled``.
        priority: Lower runs first.
        progress: The last value the handler gave ``update_progress``.
        result: What the handler returned (once completed).
        error: Why it failed: the exception, or what happened to its child.
        traceback: The handler's traceback, when it raised.
        attempts: Attempts the job may use.
        attempts_made: Attempts that ended (failed, or crashed).
        stalls: Times its worker died while running it.
        retries: Times its handler raised ``Retry`` (they spend no
            attempt).
        timeout: The timeout it was added with (seconds), or None.
        created_at: When it was added.
        started_at: When its current (or final) attempt started.
        finished_at: When it completed, failed or was cancelled.
        cancelled_by: Who cancelled it (set once a cancel was asked).
        cancel_reason: Why it was cancelled, if a reason was given.
        dedupe_id: The id of the dedupe window it was added with, or None.
        fields: Every field of the job's hash, decoded.
        corrupt: Why the stored record cannot be read as written, or None:
            e.g. ``corrupt record: field 'timeout' = '1.5' is not an
            integer``; the fields it names are left out of ``fields``.
        created: True for a job this ``add`` created, False when the id
            existed already (the job is then the one that existed), None
            for a job read back.
    """

    created: bool | None = None
    corrupt: str | None = None

    def __init__(
        self, queue: Any, job_id: str, fields: dict[str, Any], corrupt: str | None = None
    ) -> None:
        """``fields``: the job hash's fields as Python values."""
        self.queue = queue
        self.id = job_id
        self._load(fields, corrupt)

    @classmethod
    def from_hash(cls, queue: Any, job_id: str, raw: dict[Any, Any]) -> Self:
        """The job from its hash as HGETALL returns it (bytes to bytes)."""
        return cls(queue, job_id, *decode_hash(raw))

    def _load(self, fields: dict[str, Any], corrupt: str | None = None) -> None:
        self.fields = fields
        self.corrupt = corrupt
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
        self.dedupe_id: str | None = fields.get("dedupe_id")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.queue.name}/{self.id} {self.name!r} {self.state}>"

    @property
    def steps(self) -> dict[str, Any]:
        """The durable steps the job recorded (``job.step`` in its handler):
        ``{key: result}`` in the order they were recorded."""
        return steps.recorded(self.fields)

    # -- operations (sans-I/O) ----------------------------------------------------------
    def _refresh(self) -> Op[Self]:
        """Read the job again. Raises LookupError if it no longer exists."""
        fields = yield cmd("HGETALL", self.queue.keys.job(self.id))
        if not fields:
            raise LookupError(f"job {self.id} no longer exists in queue {self.queue.name!r}")
        self._load(*decode_hash(fields))
        return self

    def _children_results(self) -> Op[dict[str, Any]]:
        """A flow parent's finished children's results, by ``"queue:id"``."""
        raw = yield cmd("HGETALL", self.queue.keys.deps(self.id))
        return {ref.decode(): orjson.loads(value) for ref, value in raw.items()}

    def _children_failures(self) -> Op[dict[str, str]]:
        """Children that failed and were skipped (``ignore_failed_children``)."""
        raw = yield cmd("HGETALL", self.queue.keys.ignored(self.id))
        return {ref.decode(): error.decode() for ref, error in raw.items()}

    def _dependency_results(self) -> Op[dict[str, Any]]:
        """A job added with ``depends_on``: its completed dependencies'
        results, by ``"queue:id"`` (so far, while it waits)."""
        return (yield from self._children_results())

    def _dependency_failures(self) -> Op[dict[str, str]]:
        """A job added with ``depends_on``: the errors of its dependencies
        that failed, were cancelled or were removed, by ``"queue:id"``,
        when it ran anyway (``on_dependency_failure="run"``). With "fail"
        or "cancel", its ``error`` names the dependency instead."""
        return (yield from self._children_failures())

    def _pending_dependencies(self) -> Op[list[str]]:
        """The dependencies it still waits for, as ``"queue:id"``."""
        raw = yield cmd("HKEYS", self.queue.keys.awaits(self.id))
        return sorted(ref.decode() for ref in raw)

    def _audit(self) -> Op[list[dict[str, Any]]]:
        """Manual actions on this job, oldest first: at, by, action."""
        raw = yield cmd("LRANGE", self.queue.keys.job_audit(self.id), 0, -1)
        return [orjson.loads(entry) for entry in raw]

    def _cancel(
        self, reason: str | None = None, by: str | None = None, *, keep_children: bool = False
    ) -> Op[str | None]:
        """Cancel this job (and, unless ``keep_children``, a flow parent's
        unfinished children); see ``Queue.cancel``."""
        return (  # type: ignore[no-any-return]
            yield from self.queue._cancel(
                self.id, reason=reason, by=by, keep_children=keep_children
            )
        )

    def _logs(self) -> Op[list[str]]:
        """The log lines the handler wrote (the newest 1,000)."""
        return (yield from self.queue._job_logs(self.id))  # type: ignore[no-any-return]

    def _wait(self, timeout: float | None = None) -> Op[Any]:
        """Wait until the job finishes and return its result.

        Raises :class:`sandboxq.JobFailed` if it failed for good,
        :class:`sandboxq.JobCancelled` if it was cancelled, and
        :class:`TimeoutError` if it has not finished within ``timeout``
        seconds. Waiting follows the queue's event stream; it does not poll.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = self.queue.keys.events
        cursor = yield from events.last_id_op(stream)
        while True:
            yield from self._refresh()
            if self.state == "completed":
                return self.result
            if self.state == "failed":
                raise JobFailed(self)
            if self.state == "cancelled":
                raise JobCancelled(self)
            block = WAIT_BLOCK_SECONDS
            if deadline is not None:
                block = min(block, deadline - time.monotonic())
                if block <= 0:
                    raise TimeoutError(
                        f"job {self.id} ({self.name}) still {self.state} after {timeout}s"
                    )
            cursor = yield from events.wait_for_op(
                stream, cursor, self.id, (*FINISHED_STATES, "removed"), block
            )


def decode_hash(raw: dict[Any, Any]) -> tuple[dict[str, Any], str | None]:
    """A job hash as HGETALL returns it, as Python values, and what makes it
    corrupt (None when nothing does). A corrupt record is still shown: each
    field that cannot be read is left out, and the problem says which."""
    try:
        fields = fast.decode_job_mapping(raw)
    except fast.CorruptRecord:
        fields, problems = {}, []
        for name, value in raw.items():
            try:
                fields.update(fast.decode_job_mapping({name: value}))
            except fast.CorruptRecord as exc:
                problems.append(str(exc).removeprefix("corrupt record: "))
        return payload.with_json_decoded(fields), "corrupt record: " + "; ".join(problems)
    return payload.with_json_decoded(fields), None
