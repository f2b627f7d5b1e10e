"""Lifecycle hooks and job middleware on a real worker (tests/hooks_jobs.py
registers one of each, and logs each call with its pid), and what a worker
does with a job whose name none of its handlers has."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxq import Queue, hooks
from sandboxq.testing import run_until_empty
from sandboxq.worker.parent import EXIT_BOOT_ERROR, EXIT_OK
from tests.worker_harness import WorkerProcess, wait_for_job, wait_for_jobs

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def hook_log(tmp_path: Path) -> Path:
    return tmp_path / "hooks.log"


def start_hooked(
    start_worker: StartWorker, hook_log: Path, fail: str = "", **options: Any
) -> WorkerProcess:
    env = {"SANDBOXQ_TEST_HOOKS": str(hook_log), "SANDBOXQ_TEST_FAIL_HOOK": fail}
    return start_worker(modules=("tests.hooks_jobs",), env=env, **options)


def logged(hook_log: Path) -> list[tuple[str, int]]:
    """(what, pid) per line, in the order written."""
    lines = [line.rsplit(" ", 1) for line in hook_log.read_text().splitlines()]
    return [(what, int(pid)) for what, pid in lines]


def test_hooks_run_in_the_right_process_at_the_right_time(
    start_worker: StartWorker, queue: Queue, hook_log: Path
) -> None:
    worker = start_hooked(start_worker, hook_log, procs=2)
    children = set(worker.wait_pool_size(2, timeout=5.0))
    jobs = [queue.add(name) for name in ("opened", "opened_async") * 2]
    done = wait_for_jobs(queue, [job.id for job in jobs], timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == EXIT_OK, worker.log

    calls = logged(hook_log)
    assert [pid for what, pid in calls if what == "worker_start"] == [worker.pid]
    assert calls[-1] == ("worker_stop", worker.pid)
    assert {pid for what, pid in calls if what == "child_start"} == children
    assert {pid for what, pid in calls if what == "child_exit"} == children
    for child in children:
        mine = [what for what, pid in calls if pid == child]
        assert mine[0] == "child_start" and mine[-1] == "child_exit", mine
    for job in jobs:
        # Each child opened its own "connection" in on_child_start, after the fork.
        ran_in = done[job.id].result["inner"]["opened_by"]
        assert ran_in in children
        steps = [what for what, pid in calls if what.endswith(f" {job.id}") and pid == ran_in]
        # An async middleware makes the chain async: the sync outer one
        # passes the awaitable on, so its "after" part does not run.
        assert steps == [f"{s} {job.id}" for s in ("outer-before", "inner-before", "handler")] + [
            f"inner-after {job.id}"
        ], steps


def test_a_failing_child_start_hook_is_a_death_at_birth(
    start_worker: StartWorker, hook_log: Path
) -> None:
    worker = start_hooked(start_worker, hook_log, fail="child_start", procs=1, wait_ready=False)
    assert worker.wait(30) == EXIT_BOOT_ERROR
    assert "an on_child_start hook failed" in worker.log
    assert "RuntimeError: child_start failed on purpose" in worker.log
    assert "children in a row died before running a job" in worker.log


def test_a_failing_worker_start_hook_is_a_boot_error(
    start_worker: StartWorker, hook_log: Path
) -> None:
    worker = start_hooked(start_worker, hook_log, fail="worker_start", procs=1, wait_ready=False)
    assert worker.wait(30) == EXIT_BOOT_ERROR
    assert "an on_worker_start hook failed: RuntimeError: worker_start failed on purpose" in (
        worker.log
    )
    assert not any(what == "worker_stop" for what, _pid in logged(hook_log))


@pytest.fixture
def middleware_order() -> Iterator[list[str]]:
    """Two sync middlewares, registered for the test only."""
    order: list[str] = []

    def first(job: Any, call_next: Any) -> Any:
        order.append("first")
        return {"first": call_next(job)}

    def second(job: Any, call_next: Any) -> Any:
        order.append("second")
        return {"second": call_next(job)}

    saved = list(hooks.MIDDLEWARE)
    hooks.MIDDLEWARE[:] = [first, second]
    yield order
    hooks.MIDDLEWARE[:] = saved


def test_sync_middleware_nests_in_registration_order(
    queue: Queue, middleware_order: list[str]
) -> None:
    job = queue.add("one")
    run_until_empty(queue, {"one": lambda job: 1})
    assert middleware_order == ["first", "second"]
    assert job.refresh().result == {"first": {"second": 1}}


# -- job names no handler here runs -------------------------------------------------
def test_an_unknown_job_name_waits_for_a_worker_that_knows_it(
    start_worker: StartWorker, queue: Queue, hook_log: Path
) -> None:
    """Mid-deploy: an old worker meets a new job type. It logs a warning
    naming the job and what it knows, and hands the job back (no attempt
    spent); the new worker, started later, runs it."""
    old = start_worker(procs=1)  # tests.jobs: has no "opened" handler
    job = queue.add("opened", attempts=1)
    old.wait_for_line(r"no handler for job 'opened' in queue .* \(this worker knows: .*ok", 15)
    handed_back = wait_for_job(queue, job.id, ["delayed"], timeout=10)
    assert handed_back.attempts_made == 0
    start_hooked(start_worker, hook_log, procs=1)  # the new worker
    done = wait_for_jobs(queue, [job.id], timeout=30)[job.id]
    assert done.state == "completed", done.fields
    assert done.attempts_made == 1


def test_an_unknown_job_name_fails_after_the_grace(start_worker: StartWorker, queue: Queue) -> None:
    start_worker("--unknown-name-grace", "0", procs=1)
    job = queue.add("no_such_job", attempts=3)
    failed = wait_for_jobs(queue, [job.id], timeout=15)[job.id]
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error.startswith(f"no handler for job 'no_such_job' in queue {queue.name!r}")
    assert failed.error.endswith("; no worker ran it within 0s")
    assert failed.attempts_made == 1  # failed for good: no retries spent on it
