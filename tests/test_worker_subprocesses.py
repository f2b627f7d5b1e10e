"""Subprocesses are part of the job: whatever a handler starts ends with it.

A handler may start programs (``sleep`` here), fork copies of the child, or
start programs that leave the child's process group (``setsid``). Every test
runs a real ``sandboxq worker tests.jobs`` subprocess, has a handler start
those and record their pids in a file, then brings on one way a job can
end: a timeout, the memory limit, a normal return, a crash, a forced stop
or the worker's shutdown timeout. Each then checks that what the job
started is gone, that the job's state says why, and, where the worker
keeps running, that it carries on.

Whatever a failing test leaves running is SIGKILLed at its end, so a
failure never leaks a ``sleep 120``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxq import Job, Queue
from tests.worker_harness import (
    CHILD_TITLE,
    WorkerProcess,
    assert_counts,
    pid_alive,
    process_title,
    wait_for_job,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]

PROCS = 2
EXIT_FORCED = 1
#: The helpers a ``spawn_and_*`` handler starts, in the order it records
#: them: ``sleep 120``, a forked copy of the child, ``sleep 121`` in a
#: session of its own.
HELPERS = 3
#: How long a test waits for processes to start or to be gone: generous,
#: the machine may be busy; a passing run takes a fraction of it.
DEADLINE = 10.0


# -- helpers -------------------------------------------------------------------------
def recorded_pids(path: Path) -> list[int]:
    """The pids a handler appended to ``path``, one a line (whole lines only)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_for_pids(path: Path, count: int, timeout: float = DEADLINE) -> list[int]:
    """Poll ``path`` until the handler has recorded ``count`` pids; return them."""
    return wait_until(
        lambda: (pids := recorded_pids(path)) and len(pids) >= count and pids[:count],
        timeout,
        f"{count} pid(s) recorded in {path}",
    )


def assert_all_gone(pids: list[int], timeout: float = DEADLINE) -> None:
    """Every pid in ``pids`` is gone (or a zombie) within ``timeout`` seconds."""
    try:
        wait_until(
            lambda: not any(pid_alive(pid) for pid in pids), timeout, f"processes {pids} to end"
        )
    except AssertionError:
        alive = {pid: process_title(pid) for pid in pids if pid_alive(pid)}
        raise AssertionError(f"still running after {timeout}s: {alive}") from None


def kill_if_running(pid: int) -> None:
    """SIGKILL a helper a test left running. Only a process that still looks
    like one of the helpers (``sleep``, a copy of a child, a python
    subprocess), so a pid reused by something else is left alone."""
    title = process_title(pid) or ""
    if not title or not (
        title.startswith(("sleep", CHILD_TITLE)) or "python" in os.path.basename(title.split()[0])
    ):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pids_file(tmp_path: Path) -> Iterator[Path]:
    """Where the handler records what it started; whatever of it is still
    running at the end of the test is killed."""
    path = tmp_path / "pids"
    try:
        yield path
    finally:
        for pid in recorded_pids(path):
            kill_if_running(pid)


def assert_worker_carries_on(worker: WorkerProcess, queue: Queue) -> None:
    """The pool is back to full size and a next job completes."""
    worker.wait_pool_size(PROCS, timeout=DEADLINE)
    next_job = queue.add("ok", "after the job")
    done = wait_for_job(queue, next_job.id, timeout=DEADLINE)
    assert done.state == "completed", done.fields
    assert done.result["echo"] == "after the job"
    assert worker.running()


def assert_handed_back(queue: Queue, job: Job) -> None:
    left = queue.get_job(job.id)
    assert left is not None
    assert (left.state, left.attempts_made, left.stalls) == ("waiting", 0, 0), left.fields
    assert_counts(queue, waiting=1)


# -- the job's end ends what it started ------------------------------------------------
def test_timeout_kills_every_process_the_job_started(
    start_worker: StartWorker, queue: Queue, pids_file: Path
) -> None:
    # Given a worker with a short kill grace, and a job with a 1 s timeout
    # that starts a program, a forked copy of itself and a program in a
    # session of its own, then hangs
    worker = start_worker("--kill-grace", "0.5", procs=PROCS)
    job = queue.add("spawn_and_hang", {"pids": str(pids_file)}, timeout=1)
    pids = wait_for_pids(pids_file, HELPERS)

    # When its timeout passes
    failed = wait_for_job(queue, job.id, timeout=DEADLINE)

    # Then the job fails for the timeout, and every process it started is
    # gone, the one that left the process group too
    assert failed.state == "failed", failed.fields
    assert failed.error == "timed out after 1.0s"
    assert_all_gone(pids)
    # and the worker carries on
    assert_worker_carries_on(worker, queue)
    assert_counts(queue, completed=1, failed=1)


def test_timeout_kills_a_process_that_left_the_group_and_ignores_sigterm(
    start_worker: StartWorker, queue: Queue, pids_file: Path
) -> None:
    # Given a job with a 1 s timeout that starts a program in a session of
    # its own which ignores SIGTERM, then hangs
    worker = start_worker("--kill-grace", "0.5", procs=PROCS)
    job = queue.add("spawn_stubborn_and_hang", {"pids": str(pids_file)}, timeout=1)
    (stubborn,) = wait_for_pids(pids_file, 1)

    # When its timeout passes: SIGTERM ends the child at once, and the
    # program is re-parented away from it
    failed = wait_for_job(queue, job.id, timeout=DEADLINE)

    # Then the program still gets the SIGKILL that follows
    assert failed.error == "timed out after 1.0s"
    assert_all_gone([stubborn])
    assert_worker_carries_on(worker, queue)


def test_memory_limit_counts_the_processes_the_job_started(
    start_worker: StartWorker, queue: Queue, pids_file: Path
) -> None:
    # Given a worker whose children may use 100 MiB, processes included
    worker = start_worker("--max-memory-per-child", "100M", procs=PROCS)

    # When a job's subprocess (not the child itself) holds 300 MiB
    job = queue.add("subprocess_allocates", {"mib": 300, "pids": str(pids_file)})
    (subprocess_pid,) = wait_for_pids(pids_file, 1)

    # Then the job fails for the memory limit and the subprocess is gone
    failed = wait_for_job(queue, job.id, timeout=DEADLINE)
    assert failed.state == "failed", failed.fields
    assert failed.error is not None
    assert re.fullmatch(r"memory limit exceeded \(\d+ MiB > 100 MiB\)", failed.error), failed.error
    assert_all_gone([subprocess_pid])
    # and the worker carries on
    assert_worker_carries_on(worker, queue)
    assert_counts(queue, completed=1, failed=1)


def test_processes_a_finished_job_left_running_are_killed(
    start_worker: StartWorker, queue: Queue, pids_file: Path
) -> None:
    # Given a worker; when a job starts three processes and returns without
    # waiting for them
    worker = start_worker(procs=PROCS)
    job = queue.add("spawn_and_return", {"pids": str(pids_file)})
    pids = wait_for_pids(pids_file, HELPERS)
    done = wait_for_job(queue, job.id, timeout=DEADLINE)

    # Then the job completes, what it left running is gone, and the job's
    # log says so
    assert done.state == "completed", done.fields
    assert done.result == "left them running"
    assert_all_gone(pids)
    message = f"killed {HELPERS} process(es) the job left running"
    wait_until(lambda: message in queue.job_logs(job.id), DEADLINE, f"the log line {message!r}")
    # and the child that ran it runs the next job
    assert_worker_carries_on(worker, queue)
    assert_counts(queue, completed=2)


def test_processes_of_a_crashed_child_are_killed(
    start_worker: StartWorker, queue: Queue, pids_file: Path
) -> None:
    # Given a worker; when a job starts three processes and its child exits
    # with code 3
    worker = start_worker(procs=PROCS)
    job = queue.add("spawn_and_exit", {"pids": str(pids_file)})
    pids = wait_for_pids(pids_file, HELPERS)
    failed = wait_for_job(queue, job.id, timeout=DEADLINE)

    # Then the job fails with the exit code, and the processes that stayed in
    # the child's process group are gone. (The one that left the group is
    # not guaranteed to be: its parent died before anyone could walk the
    # tree; the pids_file fixture kills it.)
    assert failed.state == "failed", failed.fields
    assert failed.error == "child exited with code 3"
    assert_all_gone(pids[:2])
    # and the worker carries on
    assert_worker_carries_on(worker, queue)
    assert_counts(queue, completed=1, failed=1)


@pytest.mark.parametrize(
    ("worker_args", "stop_signal"),
    [
        pytest.param(("--lease", "30"), signal.SIGQUIT, id="SIGQUIT"),
        pytest.param(("--lease", "30", "--shutdown-timeout", "1"), signal.SIGTERM, id="SIGTERM"),
    ],
)
def test_a_forced_stop_kills_every_process_the_job_started(
    start_worker: StartWorker,
    queue: Queue,
    pids_file: Path,
    worker_args: tuple[str, ...],
    stop_signal: int,
) -> None:
    # Given a worker running a job that started three processes and hangs
    worker = start_worker(*worker_args, procs=PROCS)
    job = queue.add("spawn_and_hang", {"pids": str(pids_file)})
    child = worker.child_running("spawn_and_hang", job.id, timeout=DEADLINE)
    pids = wait_for_pids(pids_file, HELPERS)
    forked_copy = pids[1]
    assert (process_title(forked_copy) or "").startswith(CHILD_TITLE)

    # When it is stopped before the job ends: SIGQUIT at once, SIGTERM once
    # the 1 s shutdown timeout has passed
    worker.send_signal(stop_signal)

    # Then it exits 1, the job is handed back, and every process the job
    # started is gone, the forked copy of the child too
    assert worker.wait(timeout=DEADLINE) == EXIT_FORCED, worker.log
    assert_handed_back(queue, job)
    assert worker.matching_lines(rf"handed them back to the queue .*released={job.id}\b")
    assert_all_gone([child, *pids])
    survivors = [pid for pid in pids if (process_title(pid) or "").startswith(CHILD_TITLE)]
    assert not survivors, {pid: process_title(pid) for pid in survivors}
