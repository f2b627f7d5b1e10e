"""The error-reporting recipe (examples/error_reporting/reporting.py) in a
real worker: Sentry starts in each child, and an error a handler raises is
reported once, tagged with the queue, job name, id and attempt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from sandboxq import Queue
from tests.worker_harness import WorkerProcess, wait_for_jobs

StartWorker = Callable[..., WorkerProcess]


@pytest.mark.timeout(60)
def test_a_handler_error_is_reported_with_the_job_and_flow_control_is_not(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    start_worker(
        procs=1,
        modules=("tests.reporting_jobs",),
        env={
            "SANDBOXQ_TEST_EVENTS": str(events),
            "SENTRY_DSN": "https://public@sentry.example.invalid/1",
        },
    )
    # A charge that fails its first attempt, and a job that asks to run again
    charge = queue.add("charge", {"card": "4242"}, attempts=2)
    later = queue.add("later")
    done = wait_for_jobs(queue, [charge.id, later.id], timeout=30)
    assert done[charge.id].result == "charged"
    assert done[later.id].result == "done"

    # Then one event: the failed attempt, tagged with the job
    reported = [orjson.loads(line) for line in events.read_text().splitlines()]
    assert len(reported) == 1, reported
    [event] = reported
    assert event["tags"] == {
        "sandboxq.queue": queue.name,
        "sandboxq.job_name": "charge",
        "sandboxq.job_id": charge.id,
        "sandboxq.attempt": "1",
    }
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "card 4242 declined")
