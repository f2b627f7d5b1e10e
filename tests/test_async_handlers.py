"""``async def`` handlers, run by a real worker: each child runs them on an
event loop that lives as long as the child; they mix with sync handlers in
one worker, and results, errors, retries and timeouts work as for any
handler (tests/jobs.py has the handlers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxq import Queue
from sandboxq.testing import run_until_empty
from tests.worker_harness import WorkerProcess, wait_for_job, wait_for_jobs

StartWorker = Callable[..., WorkerProcess]


def test_async_and_sync_handlers_mix_in_one_worker(start_worker: StartWorker, queue: Queue) -> None:
    start_worker(procs=2)
    jobs = [queue.add("async_echo", n) if n % 2 else queue.add("sleep", 0.01) for n in range(8)]
    done = wait_for_jobs(queue, [job.id for job in jobs], timeout=20)
    for n, job in enumerate(jobs):
        finished = done[job.id]
        assert finished.state == "completed", finished.fields
        if n % 2:
            assert finished.result["echo"] == n
            assert finished.progress == 50
        else:
            assert finished.result == "slept"


def test_a_child_keeps_its_event_loop_from_one_job_to_the_next(
    start_worker: StartWorker, queue: Queue
) -> None:
    """One loop per child, not one per job: a client session or pool a
    handler keeps stays bound to a loop that is still running."""
    start_worker(procs=1)
    first = queue.add("async_echo", 1)
    second = queue.add("async_echo", 2)
    done = wait_for_jobs(queue, [first.id, second.id], timeout=20)
    one, two = done[first.id].result, done[second.id].result
    assert one["pid"] == two["pid"]
    assert one["loop"] == two["loop"]


def test_async_errors_and_retries_are_classified_as_sync_ones(
    start_worker: StartWorker, queue: Queue
) -> None:
    start_worker(procs=1)
    failed = queue.add("async_raise", 7)
    retried = queue.add("async_retry_once")
    done = wait_for_jobs(queue, [failed.id, retried.id], timeout=20)
    assert done[failed.id].state == "failed"
    assert done[failed.id].error == "ValueError: async bad input 7"
    assert "async_raise" in (done[failed.id].traceback or "")
    assert done[retried.id].state == "completed"
    assert done[retried.id].result == "retried"


def test_a_timeout_stops_an_awaiting_handler(start_worker: StartWorker, queue: Queue) -> None:
    start_worker(procs=1)
    hanging = queue.add("async_hang", timeout=0.5)
    after = queue.add("async_echo", "after")
    failed = wait_for_job(queue, hanging.id, timeout=15)
    assert failed.state == "failed"
    assert failed.error == "timed out after 0.5s"
    assert wait_for_job(queue, after.id, timeout=15).result["echo"] == "after"


def test_tasks_a_handler_leaves_running_do_not_outlive_its_job(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    scribbles = tmp_path / "scribbles"
    start_worker(procs=1)
    job = queue.add("async_leave_task", str(scribbles))
    assert wait_for_job(queue, job.id, timeout=15).result == "left a task"
    # The next job runs the loop again: a task left alive would write on.
    later = queue.add("async_echo", "later")
    wait_for_job(queue, later.id, timeout=15)
    written = scribbles.read_text() if scribbles.exists() else ""
    time.sleep(0.2)  # the task wrote every 10 ms: look again a little later
    assert (scribbles.read_text() if scribbles.exists() else "") == written
    assert len(written) <= 2


def test_the_inline_runner_awaits_async_handlers(queue: Queue) -> None:
    """sandboxq.testing.run_until_empty runs them too, in the test's process."""
    import asyncio

    async def double(job: Any) -> Any:
        await asyncio.sleep(0)
        return job.data * 2

    job = queue.add("double", 21)
    assert run_until_empty(queue, {"double": double}) == {"completed": 1}
    assert job.refresh().result == 42
