"""The sandboxed prefork worker: one parent owns Redis, children run jobs."""

from sandboxq.worker.parent import Worker
from sandboxq.worker.settings import WorkerSettings

__all__ = ["Worker", "WorkerSettings"]
