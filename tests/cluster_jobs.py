"""Handlers for the Redis Cluster tests: one ``record`` handler on each queue
named in ``$SANDBOXQ_TEST_QUEUES`` (comma-separated), so one worker serves
queues that live on different shards. Each run appends ``queue/job_id`` to
``$SANDBOXQ_TEST_RUNS``, so a test can tell a job that ran twice."""

from __future__ import annotations

import os
import time
from typing import Any

from sandboxq import JobContext, handler

QUEUES = [q for q in os.environ.get("SANDBOXQ_TEST_QUEUES", "").split(",") if q]
RUNS = os.environ.get("SANDBOXQ_TEST_RUNS", os.devnull)


def record(job: JobContext) -> Any:
    """Sleep ``job.data`` seconds, then note the run (one short line: an
    O_APPEND write of it is atomic, whatever other children write)."""
    time.sleep(float(job.data or 0))
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{job.queue}/{job.id}\n".encode())
    finally:
        os.close(fd)
    return job.id


for _queue in QUEUES:
    handler(_queue, name="record")(record)
