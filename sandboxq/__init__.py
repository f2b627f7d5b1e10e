"""sandboxq: a Redis job queue with a sandboxed multiprocess worker."""

from sandboxq.errors import (
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    RateLimited,
    Retry,
    SandboxqError,
    StepNotRecorded,
    UnknownDependency,
    UnrecordableStep,
    Unrecoverable,
)
from sandboxq.fast import IMPLEMENTATION
from sandboxq.handlers import JobContext, handler
from sandboxq.hooks import (
    job_middleware,
    on_child_exit,
    on_child_start,
    on_worker_start,
    on_worker_stop,
)
from sandboxq.options import Backoff, Dedupe, Retention
from sandboxq.queue import Job, JobIsActive, Queue, QueueEvents

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "Backoff",
    "ConnectionFailed",
    "Dedupe",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobIsActive",
    "Queue",
    "QueueEvents",
    "RateLimited",
    "Retention",
    "Retry",
    "SandboxqError",
    "StepNotRecorded",
    "UnknownDependency",
    "UnrecordableStep",
    "Unrecoverable",
    "__version__",
    "handler",
    "job_middleware",
    "on_child_exit",
    "on_child_start",
    "on_worker_start",
    "on_worker_stop",
]
