"""The worker's fault barriers: what the parent reads from Redis or from a
child is untrusted input. A corrupt job record fails that job, a setting
one queue cannot use pauses that queue, and what a child (or a process its
handler forked) does to its pipe, its hooks or its event loop costs that
child or that job, never the worker. Real workers, real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from sandboxq import Queue
from sandboxq.dashboard import app
from tests.asgi_client import Client
from tests.worker_harness import (
    ROOT,
    WorkerProcess,
    job_field,
    wait_for_job,
    wait_for_jobs,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]
MODULES = ("tests.barrier_jobs",)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A client that writes what it is given, as another tool would."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def parent_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in kB (VmHWM: the peak resident size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


# -- records -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (b"timeout", b"1.5", "corrupt record: field 'timeout' = '1.5' is not an integer"),
        (b"name", b"ok\xff", "corrupt record: field 'name' = 'ok\\xff' is not UTF-8 text"),
        (b"attempts_made", b"9" * 25, "field 'attempts_made'"),
    ],
)
def test_a_corrupt_record_fails_that_job_and_only_it(
    start_worker: StartWorker,
    queue: Queue,
    raw: redis.Redis,
    field: bytes,
    value: bytes,
    reason: str,
) -> None:
    # Given waiting jobs, one of whose records holds a value sandboxq cannot read
    sound = [queue.add("ok", i).id for i in range(6)]
    corrupt = queue.add("ok", "bad").id
    raw.hset(queue.keys.job(corrupt), field, value)
    more = [queue.add("ok", i).id for i in range(6)]

    # When a worker fetches them, in the same batch
    worker = start_worker("--max-stalls", "1", procs=2, modules=MODULES)

    # Then the corrupt job fails for good, naming the field and its value
    failed = wait_for_job(queue, corrupt, ("failed",))
    assert failed.corrupt is None or reason in failed.corrupt
    assert reason in (job_field(queue, corrupt, "error") or "")
    # And every other job of the batch completes, at once (not after a lease lapsed)
    for job in wait_for_jobs(queue, sound + more, ("completed",)).values():
        assert job.stalls == 0
    # And the worker is still serving, and said why it failed the job
    assert worker.running()
    worker.wait_for_line(r"failed a job whose stored record cannot be run")
    later = queue.add("ok", "later").id
    assert wait_for_job(queue, later).state == "completed"
    assert worker.stop() == 0


def test_a_job_whose_id_is_not_utf8_fails_under_its_own_id(
    start_worker: StartWorker, queue: Queue, raw: redis.Redis
) -> None:
    # Given a waiting job another tool wrote under an id that is not UTF-8
    job_id = b"odd\xff"
    template = raw.hgetall(queue.keys.job(queue.add("ok", 1).id))
    raw.hset(queue.keys.prefix.encode() + b"job:" + job_id, mapping=template)
    raw.zadd(queue.keys.wait, {job_id: 0})

    # When a worker fetches it
    worker = start_worker(procs=1, modules=MODULES)

    # Then that very job fails, saying why, and the worker goes on
    def failed() -> bool:
        return raw.zscore(queue.keys.failed, job_id) is not None

    wait_until(failed, 10, "the job filed as failed")
    error = raw.hget(queue.keys.prefix.encode() + b"job:" + job_id, "error")
    assert error == b"corrupt record: its id is not UTF-8 text"
    assert wait_for_job(queue, queue.add("ok", 2).id).state == "completed"
    assert worker.stop() == 0


def test_unknown_fields_that_are_not_utf8_are_ignored(
    start_worker: StartWorker, queue: Queue, raw: redis.Redis
) -> None:
    # Given a job another tool added a field to, whose value is not UTF-8
    job = queue.add("ok", 1).id
    raw.hset(queue.keys.job(job), "note", b"\xff\xfe")

    # When a worker runs it
    worker = start_worker(procs=1, modules=MODULES)

    # Then it runs as usual
    assert wait_for_job(queue, job).state == "completed"
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("remove", "reason"),
    [
        ("name", "corrupt record: field 'name' is missing"),
        ("data", "corrupt record: field 'data' is missing"),
    ],
)
def test_a_record_missing_what_runs_it_fails_with_a_reason(
    start_worker: StartWorker, queue: Queue, raw: redis.Redis, remove: str, reason: str
) -> None:
    # Given a waiting job whose record lost a field every job has
    job = queue.add("ok", 1).id
    raw.hdel(queue.keys.job(job), remove)

    # When a worker fetches it
    worker = start_worker(procs=1, modules=MODULES)

    # Then it fails with that reason, and the worker goes on
    wait_for_job(queue, job, ("failed",))
    assert job_field(queue, job, "error") == reason
    assert wait_for_job(queue, queue.add("ok", 2).id).state == "completed"
    assert worker.stop() == 0


def test_the_cli_and_the_dashboard_show_a_corrupt_job(
    queue: Queue, raw: redis.Redis, redis_url: str
) -> None:
    # Given a job whose record cannot be read as written
    job = queue.add("ok", {"n": 1}).id
    raw.hset(queue.keys.job(job), "timeout", "1.5")
    raw.hset(queue.keys.job(job), "name", b"n\xffme")

    # When a person looks at it with the CLI
    shown = subprocess.run(
        [sys.executable, "-m", "sandboxq", "job", queue.name, job, "--url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )

    # Then it is shown, saying what is wrong, not a traceback
    assert shown.returncode == 0, shown.stderr
    assert "corrupt record: field 'name' = 'n\\xffme' is not UTF-8 text" in shown.stdout
    assert "field 'timeout' = '1.5' is not an integer" in shown.stdout
    report = subprocess.run(
        [sys.executable, "-m", "sandboxq", "job", queue.name, job, "--url", redis_url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert json.loads(report.stdout)["data"] == {"n": 1}

    # And the dashboard lists it and shows its page
    dashboard = app(redis_url, token="t0ken-for-the-tests", queues=[queue.name])
    try:
        user = Client(dashboard).bearer("t0ken-for-the-tests")
        listed = user.get(f"/api/queues/{queue.name}/jobs?state=waiting")
        assert listed.status == 200, listed.text
        [row] = listed.json()["jobs"]
        assert row["id"] == job and "is not an integer" in row["error"]
        page = user.get(f"/queues/{queue.name}/jobs/{job}")
        assert page.status == 200 and "is not UTF-8 text" in page.text
    finally:
        dashboard.client.close()


def test_a_job_name_can_neither_forge_nor_flood_log_lines(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a job whose name, as written by whoever added it, holds a line
    # break and a fake log line, and is 50,000 characters long
    forged = "evil\n2026-01-01T00:00:00 INFO sandboxq worker stopped cleanly" + "x" * 50_000
    job = queue.add(forged).id

    # When a worker that does not know it logs it
    worker = start_worker("--unknown-name-grace", "0", procs=1, modules=MODULES)
    wait_for_job(queue, job, ("failed",))
    assert worker.stop() == 0

    # Then its lines show the line break escaped, and are cut short
    [line] = worker.matching_lines(r"no handler for job")
    assert "evil\\n2026" in line
    assert len(line) < 6000
    # And the only line that says the worker stopped is the worker's own
    assert len(worker.matching_lines(r"^\S+ INFO sandboxq worker stopped cleanly$")) == 1


# -- settings --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [("rl_max", str(10**30)), ("rl_max", "lots"), ("rl_window_ms", "-5")],
)
def test_a_setting_one_queue_cannot_use_pauses_that_queue_alone(
    queue: Queue, other_queue: Queue, raw: redis.Redis, redis_url: str, field: str, value: str
) -> None:
    # Given two queues served by one worker, one of which holds a rate limit
    # no worker can use (written past the API, which refuses it)
    queue.set_rate_limit(5, 1.0)
    raw.hset(queue.keys.meta, field, value)
    stuck = queue.add("ok", 1).id
    worker = WorkerProcess(
        queue.name, redis_url, ("-q", queue.name, "-q", other_queue.name), modules=MODULES
    )
    worker.env["SANDBOXQ_TEST_QUEUES"] = f"{queue.name},{other_queue.name}"
    worker.start()
    try:
        # When jobs come to both queues
        served = [other_queue.add("ok", i).id for i in range(5)]

        # Then the sound queue's jobs run, and the worker says which queue paused and why
        assert all(j.state == "completed" for j in wait_for_jobs(other_queue, served).values())
        line = worker.wait_for_line(r"queue paused on this worker")
        assert f"queue={queue.name}" in line.string and field in line.string
        assert worker.running()
        assert queue.get_job(stuck).state == "waiting"  # type: ignore[union-attr]

        # And once the setting is mended, the paused queue is served again
        queue.set_rate_limit(5, 1.0)
        assert wait_for_job(queue, stuck, timeout=30).state == "completed"
        worker.wait_for_line(r"queue usable again on this worker")
        assert worker.stop() == 0
    finally:
        worker.cleanup()


# -- hooks --------------------------------------------------------------------------
def test_a_slow_child_start_hook_is_not_charged_to_a_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given children whose on_child_start takes 3 s (a database slow to connect)
    # and a job with a 2 s timeout, added before they are up
    job = queue.add("ok", None, timeout=2).id

    # When the worker starts
    start_worker(procs=1, modules=MODULES, env={"SANDBOXQ_TEST_CHILD_START_SECONDS": "3"})

    # Then the job runs once the child is ready, and completes
    done = wait_for_job(queue, job, timeout=30)
    assert done.state == "completed", done.error
    assert done.result["started_at"] >= done.result["child_ready_at"] > 0


def test_a_hanging_child_exit_hook_costs_no_slot(start_worker: StartWorker, queue: Queue) -> None:
    # Given one child, replaced after every job, whose on_child_exit hangs
    worker = start_worker(
        "--max-jobs-per-child",
        "1",
        "--child-hook-timeout",
        "1",
        procs=1,
        modules=MODULES,
        env={"SANDBOXQ_TEST_CHILD_EXIT_HANGS": "1"},
    )

    # When jobs keep coming
    jobs = [queue.add("ok", i).id for i in range(4)]

    # Then each retiring child is killed after the hook's timeout and
    # replaced, and every job runs, each in a child of its own
    done = wait_for_jobs(queue, jobs, ("completed",), timeout=60)
    assert len({job.result["pid"] for job in done.values()}) == 4
    worker.wait_for_line(r"killed an idle child: its on_child_exit hooks did not finish")
    # And no job went back and forth while the only child was retiring
    assert not worker.matching_lines(r"handed prefetched jobs back")
    assert worker.stop() == 0


def test_a_stop_hook_that_exits_does_not_decide_the_exit_code(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker whose on_worker_stop raises SystemExit(5)
    worker = start_worker(procs=1, modules=MODULES, env={"SANDBOXQ_TEST_STOP_EXIT_CODE": "5"})

    # When it drains
    code = worker.stop()

    # Then it exits with the documented code for a failed stop hook, saying so
    assert code == 4
    assert worker.matching_lines(r"an on_worker_stop hook failed")
    assert worker.matching_lines(r"stopped cleanly")


# -- children ---------------------------------------------------------------------------
def test_a_handler_whose_forked_copy_returns_keeps_its_real_result(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a handler that forks and lets the copy return from the handler too
    worker = start_worker(procs=1, modules=MODULES)

    # When it runs, and another job follows on the same child
    forked = queue.add("fork_and_return").id
    after = queue.add("ok", "after").id

    # Then the job's result is the real one, and the next job runs (the copy
    # neither answered for the job nor read the next one)
    assert wait_for_job(queue, forked).result == "real"
    assert wait_for_job(queue, after).state == "completed"
    assert worker.stop() == 0


def test_what_a_forked_copy_writes_to_the_pipe_is_ignored(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a handler whose forked copy writes a forged result on the pipe
    worker = start_worker(procs=1, modules=MODULES)

    # When it runs
    forged = queue.add("fork_and_forge").id
    after = queue.add("ok", "after").id

    # Then the forged frame is ignored (and said so), the real result stands
    assert wait_for_job(queue, forged).result == "real"
    line = worker.wait_for_line(r"ignored what a process other than the worker child wrote")
    assert f"job_id={forged}" in line.string
    assert wait_for_job(queue, after).state == "completed"
    # And a copy that reports for the job is refused
    assert wait_for_job(queue, queue.add("copy_reports").id).result == 3
    assert worker.stop() == 0


def test_a_flooding_job_keeps_the_parent_flat(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker, and a job that logs 60,000 lines of 8 KB (480 MB) and
    # another that sends 100,000 progress updates
    worker = start_worker(procs=1, modules=MODULES)
    before = parent_status(worker.pid, "VmRSS")

    # When they run
    logs_job = queue.add("flood_logs", {"lines": 60_000, "bytes": 8000}).id
    progress_job = queue.add("flood_progress", 100_000).id

    # Then both complete, the parent's peak memory stays near where it was
    assert wait_for_job(queue, logs_job, timeout=120).state == "completed"
    done = wait_for_job(queue, progress_job, timeout=120)
    assert done.state == "completed" and done.progress["done"] == 100_000
    peak = parent_status(worker.pid, "VmHWM")
    assert peak < before + 150 * 1024, f"the parent grew from {before} kB to a peak of {peak} kB"
    # And the log says, at its end, what the run's budget dropped
    lines = queue.get_job(logs_job).logs()  # type: ignore[union-attr]
    assert any("reached its log budget" in line for line in lines)
    assert lines[-1].startswith("[sandboxq] dropped ") and "over this run's budget" in lines[-1]
    assert worker.stop() == 0


def test_the_kernel_kills_a_child_before_the_parent(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker
    start_worker(procs=1, modules=MODULES)

    # When a job reads the OOM killer's preference of its child and of the parent
    scores = wait_for_job(queue, queue.add("oom_scores").id).result

    # Then the child is the first choice, and the parent keeps its own
    assert scores["child"] == 1000
    assert scores["parent"] == int(Path("/proc/self/oom_score_adj").read_text())


def test_a_task_that_ignores_cancellation_retires_its_child(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given one child, and an async job that leaves a task behind which
    # swallows its cancellation
    worker = start_worker(procs=1, modules=MODULES)
    leaked = queue.add("leak_task").id
    queued = [queue.add("ok", i).id for i in range(3)]

    # When it and later jobs run
    leaker = wait_for_job(queue, leaked)
    later = wait_for_jobs(queue, queued, ("completed",))

    # Then the child that ran it is replaced, so the task runs in no later job
    assert leaker.state == "completed"
    assert all(job.result["pid"] != leaker.result for job in later.values())
    line = worker.wait_for_line(r"child leaves after this job, to be replaced")
    assert "ignored their cancellation" in line.string
    worker.wait_pool_size(1, timeout=10)
    assert worker.stop() == 0


# -- nothing spends a job that never ran -------------------------------------------
def manual_jobs(queue: Queue, name: str, data: object, count: int) -> list[str]:
    return [queue.add(name, data, manual_retry_only=True).id for _ in range(count)]


def test_a_drain_hands_back_prefetched_manual_retry_only_jobs_unspent(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given one child busy with short manual_retry_only jobs, so the parent
    # leases a few ahead of it
    worker = start_worker(procs=1, modules=MODULES)
    warm = manual_jobs(queue, "sleep", 0.005, 20)
    wait_for_jobs(queue, warm, ("completed",))
    jobs = manual_jobs(queue, "sleep", 0.02, 200)
    wait_until(lambda: queue.counts()["completed"] >= 60, 30, "the worker well into the jobs")

    # When the worker drains (a deploy)
    assert worker.stop() == 0

    # Then no job failed: those that did not run are waiting, nothing spent
    counts = queue.counts()
    assert counts["failed"] == 0 and counts["active"] == 0, counts
    waiting = [j for j in (queue.get_job(i) for i in jobs) if j and j.state == "waiting"]
    assert waiting, "the drain came after every job ran"
    assert all(j.attempts_made == 0 and j.started_at is None for j in waiting)


def test_a_manual_retry_only_job_handed_back_behind_a_slow_one_is_not_spent(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given one child that warms up on short jobs, then meets a slow one with
    # short manual_retry_only jobs behind it, leased ahead
    start_worker(procs=1, modules=MODULES)
    wait_for_jobs(queue, manual_jobs(queue, "sleep", 0.005, 20), ("completed",))
    slow = queue.add("sleep", 2.0).id
    behind = manual_jobs(queue, "sleep", 0.005, 10)

    # When the slow one runs past the prefetched jobs' wait (0.5 s)
    done = wait_for_jobs(queue, [slow, *behind], ("completed", "failed"), timeout=30)

    # Then the jobs behind it went back and ran later: none failed
    assert [j.state for j in done.values()] == ["completed"] * 11
    assert all(done[i].attempts_made == 1 for i in behind)


def test_a_manual_retry_only_job_no_worker_knows_waits_for_one(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker that has no handler for a manual_retry_only job
    old = start_worker(procs=1)  # tests.jobs: no "oom_scores"
    job = queue.add("oom_scores", manual_retry_only=True).id
    old.wait_for_line(r"no handler for job 'oom_scores'", 15)

    # Then it is handed back, nothing spent, rather than failed
    handed_back = wait_for_job(queue, job, ("delayed", "waiting"), timeout=10)
    assert handed_back.attempts_made == 0 and handed_back.error is None

    # And a worker that knows it runs it
    start_worker(procs=1, modules=MODULES)
    done = wait_for_job(queue, job, timeout=30)
    assert done.state == "completed", done.error
    assert done.attempts_made == 1
