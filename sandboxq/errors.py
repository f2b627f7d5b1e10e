"""Exception types of sandboxq.

Two families: errors raised to the caller (bad input, a failed job, Redis
trouble) and control-flow errors a handler raises to steer its own job.
"""

from __future__ import annotations

from typing import Any, Protocol

from sandboxq.options import seconds


class FinishedJob(Protocol):
    """The job an error about a finished job carries: a
    :class:`sandboxq.job.JobRecord`. Named by what it has, so that this
    module, which almost every other imports, imports no job model."""

    id: str
    name: str
    state: str
    data: Any
    result: Any
    error: str | None
    traceback: str | None
    cancelled_by: str | None
    cancel_reason: str | None


class SandboxqError(Exception):
    """Base class of every sandboxq error."""


class ConnectionFailed(SandboxqError, ConnectionError):
    """Redis could not be reached; the message names the URL."""


class JobFailed(SandboxqError):
    """Raised by :meth:`Job.wait` when the job ended in the failed state."""

    def __init__(self, job: FinishedJob) -> None:
        super().__init__(f"job {job.id} ({job.name}) failed: {job.error}")
        self.job = job


class JobCancelled(SandboxqError):
    """Raised by :meth:`Job.wait` when the job was cancelled."""

    def __init__(self, job: FinishedJob) -> None:
        who = f" by {job.cancelled_by}" if job.cancelled_by else ""
        why = f": {job.cancel_reason}" if job.cancel_reason else " (no reason given)"
        super().__init__(f"job {job.id} ({job.name}) was cancelled{who}{why}")
        self.job = job


class UnknownDependency(SandboxqError, LookupError):
    """``add(..., depends_on=...)`` named a job that does not exist (or
    whose record cannot be read); the message names it. Nothing was added."""


class JobIsActive(SandboxqError):
    """The job is running; it cannot be removed until it finishes."""


class StepNotRecorded(SandboxqError):
    """Raised by ``job.step`` when the step's result could not be recorded
    because the worker no longer holds the job (its lease was lost: another
    worker may run it now). The handler should stop. See
    :class:`UnrecordableStep` for a result that can never be recorded."""


# -- raised by handlers ---------------------------------------------------
class Retry(SandboxqError):
    """Run this job again after ``delay`` seconds. No attempt is spent."""

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        # Checked here, in the handler, so a bad delay fails the job with a
        # clear message; the worker checks again whatever reaches it.
        self.delay = seconds("Retry delay", delay)
        super().__init__(reason or f"retry requested in {self.delay}s")


class RateLimited(SandboxqError):
    """A downstream service said "slow down" (e.g. HTTP 429): put this job
    back without spending an attempt, and pause its group (or, for a job with
    no group, the queue) for ``retry_after`` seconds."""

    def __init__(self, retry_after: float, reason: str = "") -> None:
        self.retry_after = seconds("RateLimited retry_after", retry_after)
        super().__init__(reason or f"rate limited for {self.retry_after}s")


class Unrecoverable(SandboxqError):
    """Fail this job now, without the retries its options allow."""


class UnrecordableStep(StepNotRecorded, Unrecoverable):
    """Raised by ``job.step`` when a step cannot be recorded for this job,
    ever: its function ran and returned a result JSON cannot hold or one over
    64 KiB, or the job has recorded the most steps it may (1,000). A retry
    would repeat the step's side effect (or reach the same limit), so the
    job fails for good, not retried. Its message says whether the function
    ran. A handler that catches it and raises something else still fails for
    good (the worker remembers the step); one that catches it and returns
    completes."""
