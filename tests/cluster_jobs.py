"""Handlers for the Redis Cluster tests: one ``record`` handler on each queue
named in ``$SANDBOXQ_TEST_QUEUES`` (comma-separated), so one worker serves
queues that live on different shards. Each run appends ``queue/job_id`` to
``$SANDBOXQ_TEST_RUNS``, so a test can tell a job that ran twice."""

from __future__ import annotations

import os
import time
from typing import Any

from sandboxq import JobContext, handler
from tests.appending import append_line

QUEUES = [q for q in os.environ.get("SANDBOXQ_TEST_QUEUES", "").split(",") if q]
RUNS = os.environ.get("SANDBOXQ_TEST_RUNS", os.devnull)


def record(job: JobContext) -> Any:
    """Sleep ``job.data`` seconds, then note the run."""
    time.sleep(float(job.data or 0))
    append_line(RUNS, f"{job.queue}/{job.id}")
    return job.id


for _queue in QUEUES:
    handler(_queue, name="record")(record)
