"""The sandboxed prefork worker: one parent owns Redis, children run jobs."""

from sandboxq.worker.parent import Worker

__all__ = ["Worker"]
