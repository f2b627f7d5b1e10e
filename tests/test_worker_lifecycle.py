"""The worker's life: boot, options, signals, shutdown, dead workers, Redis drops.

Every test runs real ``sandboxq worker`` subprocesses (see worker_harness),
waits for their READY line, then acts on them the way an operator, an init
system or the kernel would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from sandboxq import Queue
from sandboxq.worker import Worker
from tests.faults import RedisVersion
from tests.worker_harness import (
    READY,
    WorkerProcess,
    assert_counts,
    job_field,
    parse_fields,
    pid_alive,
    wait_for_job,
    wait_for_jobs,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]

EXIT_OK, EXIT_FORCED, EXIT_BOOT_ERROR = 0, 1, 3


def group_is_gone(worker: WorkerProcess) -> bool:
    """True once no process of the worker's process group is left."""
    try:
        os.killpg(worker.pid, 0)
    except ProcessLookupError:
        return True
    return False


def start_jobs_in_flight(worker: WorkerProcess, queue: Queue, name: str, data: object) -> list[str]:
    """Fill both children of ``worker`` with a ``name`` job; returns their ids
    once each child's title shows it running."""
    ids = [queue.add(name, data).id for _ in range(2)]
    for job_id in ids:
        worker.child_running(name, job_id)
    return ids


# -- boot ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("modules", "args", "env", "message"),
    [
        pytest.param(
            ("tests.broken_jobs",),
            (),
            {},
            r"cannot import handler module\(s\) tests\.broken_jobs",
            id="module-fails-to-import",
        ),
        pytest.param(
            ("tests.broken_jobs",),
            (),
            {"SANDBOXQ_BROKEN": "fork"},
            r"cannot start: 5 children in a row died before running a job "
            r"\(child exited with code 1\)",
            id="children-die-at-birth",
        ),
        pytest.param(
            ("tests.jobs",),
            ("-q", "nobody-serves-this"),
            {},
            r"cannot start: no handler registered for queue\(s\): nobody-serves-this",
            id="no-handler-for-queue",
        ),
        pytest.param(
            (),
            (),
            {"SANDBOXQ_APP": ""},
            r"no handler module",
            id="no-module",
        ),
    ],
)
def test_boot_error_exits_3_quickly_without_respawning(
    start_worker: StartWorker,
    modules: tuple[str, ...],
    args: tuple[str, ...],
    env: dict[str, str],
    message: str,
) -> None:
    # Given a worker that cannot boot
    started = time.monotonic()
    worker = start_worker(*args, modules=modules, env=env, wait_ready=False)

    # When it starts; then it exits with the boot-error code, quickly
    assert worker.wait(timeout=10.0) == EXIT_BOOT_ERROR, worker.log
    assert time.monotonic() - started < 8.0
    # and says why
    worker.wait_for_line(message, timeout=1.0)
    if "SANDBOXQ_BROKEN" not in env:
        # never claiming to be ready (children dying at birth are only seen
        # after the first Redis round trip, which logs READY)
        assert not worker.matching_lines(READY.pattern)
    # and leaves no child behind, respawning or not
    wait_until(lambda: group_is_gone(worker), 2.0, "the worker's process group to be empty")


# -- options ----------------------------------------------------------------------
def test_json_log_lines_carry_the_job_fields(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker logging JSON
    worker = start_worker("--log-format", "json", procs=1)
    child = worker.wait_pool_size(1, timeout=5.0)[0]

    # When one job completes and one fails
    completed = queue.add("ok", "json")
    failed = queue.add("raise_error", "json")
    wait_for_jobs(queue, [completed.id, failed.id])
    worker.wait_for_line(rf'"msg":"job failed".*"job_id":"{failed.id}"', timeout=5.0)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10.0) == EXIT_OK

    # Then every line it logged is a JSON object
    entries = [orjson.loads(line) for line in worker.lines if line]
    assert all(isinstance(entry, dict) for entry in entries)
    assert all({"ts", "level", "msg"} <= entry.keys() for entry in entries)
    # and each settled job's line carries its identity and timing
    by_message = {(e["msg"], e.get("job_id")): e for e in entries}
    for status, job, name in (("completed", completed, "ok"), ("failed", failed, "raise_error")):
        entry = by_message[(f"job {status}", job.id)]
        assert entry["level"] == "INFO"
        assert entry["job_name"] == name
        assert entry["queue"] == queue.name
        assert entry["attempt"] == 1
        assert entry["pid"] == child
        assert isinstance(entry["duration_ms"], int) and entry["duration_ms"] >= 0
    attempt = by_message[("job attempt failed", failed.id)]
    assert attempt["level"] == "WARNING"
    assert attempt["error"] == "ValueError: bad input 'json'"


def test_text_log_lines_carry_the_job_fields(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker logging text at INFO
    worker = start_worker(procs=1)

    # When a job completes, and a job with two attempts fails twice
    job = queue.add("ok", 1)
    flaky = queue.add("raise_error", "twice", attempts=2)
    assert wait_for_job(queue, job.id).state == "completed"
    assert wait_for_job(queue, flaky.id).state == "failed"

    # Then each settled attempt has a line naming it with key=value fields
    line = worker.wait_for_line(rf"INFO job completed job_id={job.id} ", timeout=5.0).string
    fields = parse_fields(line)
    assert fields["job_name"] == "ok"
    assert fields["queue"] == queue.name
    assert fields["attempt"] == "1"
    assert int(fields["pid"]) in worker.children()
    assert int(fields["duration_ms"]) >= 0
    retrying = worker.wait_for_line(rf"INFO job retrying job_id={flaky.id} ", timeout=5.0)
    assert parse_fields(retrying.string)["attempt"] == "1"
    failed = worker.wait_for_line(rf"INFO job failed job_id={flaky.id} ", timeout=5.0)
    assert parse_fields(failed.string)["attempt"] == "2"
    assert parse_fields(failed.string)["job_name"] == "raise_error"


def test_progress_and_log_lines_reach_redis(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker
    start_worker(procs=1)

    # When a handler reports progress and writes log lines, then returns
    job = queue.add("progress")
    done = wait_for_job(queue, job.id)

    # Then Redis has the last progress and every line, in order
    assert done.state == "completed", done.fields
    assert done.result == "done"
    assert done.progress == 99
    assert done.logs() == ["step 1", "step 2", "step 3"]


def test_payloads_travel_as_bytes_and_bad_stored_json_fails_only_that_job(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a job with a large nested payload, and a job whose stored data
    # another writer broke (the parent forwards data unparsed), waiting for
    # a worker (started after the damage: a running one could take the job
    # before it)
    payload = {"rows": [{"id": i, "name": f"row {i}", "tags": ["a", "é"]} for i in range(3000)]}
    big = queue.add("ok", payload)
    broken = queue.add("ok", {"fine": True}, attempts=3)
    queue.client.hset(queue.keys.job(broken.id), "data", b"{not json")
    after = queue.add("ok", [1, 2])
    start_worker(procs=1)

    # Then the payload reaches the handler whole, the broken job fails for
    # good (no retries) saying why, and the worker carries on
    done = wait_for_job(queue, big.id)
    assert done.state == "completed" and done.result["echo"] == payload
    failed = wait_for_job(queue, broken.id)
    assert failed.state == "failed" and failed.attempts_made == 1, failed.fields
    assert failed.error is not None
    assert failed.error.startswith("the job's stored data is not valid JSON: ")
    assert failed.data == "{not json"  # shown as it is stored
    assert wait_for_job(queue, after.id).result["echo"] == [1, 2]


def niceness(pid: int) -> int:
    """A process's nice value, from /proc/<pid>/stat (field 19)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.parametrize(("args", "lower_by"), [((), 5), (("--child-nice", "0"), 0)])
def test_children_run_below_the_parent_that_serves_them(
    start_worker: StartWorker, queue: Queue, args: tuple[str, ...], lower_by: int
) -> None:
    # Given a worker, by default or with --child-nice 0
    worker = start_worker(*args, procs=2)

    # Then each child's niceness is the parent's plus the setting (nice
    # tops out at 19), and the children still run jobs
    children = worker.wait_pool_size(2, timeout=5.0)
    expected = min(niceness(worker.pid) + lower_by, 19)
    assert [niceness(pid) for pid in children] == [expected, expected]
    assert wait_for_job(queue, queue.add("ok", 1).id).state == "completed"


def test_a_child_nice_outside_0_to_19_is_refused(start_worker: StartWorker) -> None:
    worker = start_worker("--child-nice", "20", wait_ready=False)
    assert worker.wait() == 2
    assert "--child-nice" in worker.log
    for bad in (-1, 20, 1.5):
        with pytest.raises(ValueError, match="child_nice must be an int from 0 to 19"):
            Worker(["q"], {"x": lambda job: None}, child_nice=bad)  # type: ignore[arg-type]


# -- signals and shutdown -----------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_lets_jobs_in_flight_finish_and_exits_0(
    start_worker: StartWorker, queue: Queue, signum: int
) -> None:
    # Given two 2-second jobs running, and one more job waiting
    worker = start_worker(procs=2)
    running = start_jobs_in_flight(worker, queue, "sleep", 2)
    waiting = queue.add("ok", "never started")

    # When the worker is asked to stop
    stop_at = time.monotonic()
    worker.send_signal(signum)

    # Then it finishes the jobs in flight and exits 0 once they are done
    assert worker.wait(timeout=10.0) == EXIT_OK, worker.log
    assert time.monotonic() - stop_at < 5.0
    for job_id in running:
        job = queue.get_job(job_id)
        assert job is not None and job.state == "completed", job and job.fields
    # but starts nothing new
    left = queue.get_job(waiting.id)
    assert left is not None and left.state == "waiting"
    assert_counts(queue, waiting=1, completed=2)
    assert worker.matching_lines("sandboxq worker stopped cleanly")
    wait_until(lambda: group_is_gone(worker), 2.0, "the children to exit with the parent")


def test_shutdown_timeout_hands_unfinished_jobs_back_at_once(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker with a 30 s lease and a 0.5 s shutdown timeout, running
    # two 10-second jobs
    worker = start_worker("--lease", "30", "--shutdown-timeout", "0.5", procs=2)
    running = start_jobs_in_flight(worker, queue, "sleep", 10)

    # When it gets SIGTERM
    stop_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)

    # Then it stops after the shutdown timeout with exit code 1
    assert worker.wait(timeout=10.0) == EXIT_FORCED, worker.log
    assert 0.4 <= time.monotonic() - stop_at < 5.0
    # and the jobs are waiting again right away, not after the 30 s lease,
    # with no attempt or stall counted
    assert_counts(queue, waiting=2)
    for job_id in running:
        job = queue.get_job(job_id)
        assert job is not None
        assert (job.state, job.attempts_made, job.stalls) == ("waiting", 0, 0)
        assert job_field(queue, job_id, "token") is None
    line = worker.wait_for_line("handed them back to the queue", timeout=1.0).string
    assert set(parse_fields(line)["released"].split(",")) == set(running)
    wait_until(lambda: group_is_gone(worker), 2.0, "the children to be gone")

    # And another worker runs them (made short: their data says how long)
    for job_id in running:
        queue.client.hset(queue.keys.job(job_id), "data", "0")
    start_worker(procs=2)
    jobs = wait_for_jobs(queue, running)
    assert {job.state for job in jobs.values()} == {"completed"}


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGINT, signal.SIGINT], [signal.SIGQUIT]],
    ids=["second-SIGINT", "SIGQUIT"],
)
def test_stop_now_hands_jobs_back_and_exits_1(
    start_worker: StartWorker, queue: Queue, signals: list[int]
) -> None:
    # Given a worker with a long shutdown timeout, running two jobs that hang
    worker = start_worker("--lease", "30", "--shutdown-timeout", "60", procs=2)
    running = start_jobs_in_flight(worker, queue, "hang", None)

    # When it gets SIGINT then SIGINT again (or one SIGQUIT)
    for signum in signals[:-1]:
        mark = worker.mark()
        worker.send_signal(signum)
        worker.wait_for_line("shutting down: no new jobs", timeout=5.0, start=mark)
        assert worker.running()
    stop_at = time.monotonic()
    worker.send_signal(signals[-1])

    # Then it stops at once with exit code 1, without waiting for the
    # 60 s shutdown timeout, and the jobs are waiting again
    assert worker.wait(timeout=5.0) == EXIT_FORCED, worker.log
    assert time.monotonic() - stop_at < 3.0
    counts = queue.counts()
    assert (counts["waiting"], counts["active"]) == (2, 0), counts
    for job_id in running:
        job = queue.get_job(job_id)
        assert job is not None and (job.state, job.stalls) == ("waiting", 0)
    wait_until(lambda: group_is_gone(worker), 2.0, "the hanging children to be killed")


def test_sighup_does_not_stop_the_worker(start_worker: StartWorker, queue: Queue) -> None:
    # Given a running worker
    worker = start_worker(procs=1)

    # When it gets SIGHUP (a terminal closing, a reload request)
    worker.send_signal(signal.SIGHUP)

    # Then it keeps serving jobs
    job = queue.add("ok", "after SIGHUP")
    assert wait_for_job(queue, job.id).state == "completed"
    assert worker.running()


# -- dead workers and stalled jobs -----------------------------------------------------
@pytest.mark.slow
def test_job_of_a_killed_worker_is_finished_by_another_after_the_lease(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker with a 1 s lease running a 1.5-second job
    first = start_worker("--lease", "1", procs=1)
    job = queue.add("sleep", 1.5)
    first.child_running("sleep", job.id)

    # When its parent is SIGKILLed mid-job
    killed_at = time.time()
    first.send_signal(signal.SIGKILL)
    assert first.wait(5.0) == -signal.SIGKILL
    second = start_worker("--lease", "1", procs=1)

    # Then the second worker takes the job once the lease has lapsed, and
    # finishes it, counting one stall
    done = wait_for_job(queue, job.id, timeout=15.0)
    assert done.state == "completed", done.fields
    assert done.stalls == 1
    assert done.attempts_made == 1
    assert done.started_at is not None and done.started_at >= killed_at + 0.5
    second.wait_for_line(rf"recovered stalled jobs queue={queue.name} requeued={job.id} ", 5.0)
    second.wait_for_line(rf"INFO job completed job_id={job.id} ", 5.0)
    assert not first.matching_lines(rf"job completed job_id={job.id} ")


@pytest.mark.slow
def test_worker_paused_past_its_lease_does_not_settle_the_job_again(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a worker with a 1 s lease running a 2-second job
    paused = start_worker("--lease", "1", procs=1)
    job = queue.add("sleep", 2)
    paused.child_running("sleep", job.id)

    # When its parent freezes past the lease (SIGSTOP; a VM pause, say) while
    # another worker recovers the job and starts it again
    paused.send_signal(signal.SIGSTOP)
    other = start_worker("--lease", "1", procs=1)
    other.child_running("sleep", job.id, timeout=10.0)
    paused.send_signal(signal.SIGCONT)

    # Then the first run's result is dropped as lost, and the job is settled
    # once, by the worker that holds its lease now
    paused.wait_for_line(rf"WARNING job lost: .* job_id={job.id} ", timeout=10.0)
    done = wait_for_job(queue, job.id, timeout=10.0)
    assert done.state == "completed", done.fields
    assert done.stalls == 1
    other.wait_for_line(rf"INFO job completed job_id={job.id} ", timeout=5.0)
    assert not paused.matching_lines(rf"job completed job_id={job.id} ")
    # and both workers keep working
    more = [queue.add("ok", n) for n in range(4)]
    finished = wait_for_jobs(queue, [j.id for j in more])
    assert {j.state for j in finished.values()} == {"completed"}
    assert paused.running() and other.running()


def test_children_do_not_outlive_a_killed_parent(start_worker: StartWorker, queue: Queue) -> None:
    # Given a worker with one child running a job that never ends, one idle
    worker = start_worker(procs=2)
    job = queue.add("hang")
    busy = worker.child_running("hang", job.id)
    children = worker.wait_pool_size(2)

    # When its parent is SIGKILLed (by the OOM killer, say)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(5.0) == -signal.SIGKILL

    # Then its children die with it: nobody would enforce the job's limits
    # any more, and the job runs again elsewhere once its lease lapses
    wait_until(lambda: not any(pid_alive(pid) for pid in children), 2.0, "the orphans to be gone")
    assert not pid_alive(busy)


@pytest.mark.slow
def test_job_that_keeps_killing_its_worker_fails_after_max_stalls(
    start_worker: StartWorker, queue: Queue
) -> None:
    # Given a job that SIGKILLs the parent of whichever worker runs it, and
    # workers that allow one stall
    job = queue.add("kill_parent")
    args = ("--lease", "1", "--max-stalls", "1")

    # When workers keep being started, one after the other, as each dies
    def died_or_failed(worker: WorkerProcess) -> str | None:
        if not worker.running():
            return "died"
        current = queue.get_job(job.id)
        return "failed" if current is not None and current.state == "failed" else None

    killed = []
    survivor = None
    for _ in range(4):
        # No wait for the ready line: the job may kill the worker before it
        # prints one (its first fetch can come first).
        worker = start_worker(*args, procs=1, wait_ready=False)
        outcome = wait_until(
            lambda w=worker: died_or_failed(w), 15.0, "the worker to die or the job to fail"
        )
        if outcome == "failed":
            survivor = worker
            break
        assert worker.wait(5.0) == -signal.SIGKILL
        killed.append(worker)

    # Then it ran (and killed its worker) twice, and the third worker failed it
    assert len(killed) == 2, [w.log for w in killed]
    assert survivor is not None
    failed = wait_for_job(queue, job.id)
    assert failed.state == "failed"
    assert failed.error == "stalled 2 times"
    assert failed.stalls == 2
    survivor.wait_for_line(rf"recovered stalled jobs queue={queue.name} requeued= failed={job.id}")
    # and the survivor keeps working
    after = queue.add("ok", "still here")
    assert wait_for_job(queue, after.id).state == "completed"
    assert survivor.running()


# -- Redis goes away and comes back ------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_worker_rides_out_a_redis_restart(
    queue: Queue, tmp_path: Path, redis_version: RedisVersion
) -> None:
    # Given a worker on a Redis of its own (with an append-only file, so the
    # jobs survive a restart), running a short job and a hanging one
    server = redis_version.server(tmp_path / "redis", persistent=True).start()
    own_queue = Queue(queue.name, url=server.url)
    worker = WorkerProcess(queue.name, server.url, ("--lease", "10", "--kill-grace", "0.2"))
    try:
        worker.start()
        short = own_queue.add("sleep", 0.3)
        hanging = own_queue.add("hang", timeout=1.5)
        worker.child_running("sleep", short.id)
        worker.child_running("hang", hanging.id)
        pool = worker.wait_pool_size(2)

        # When the server stops while they run
        mark = worker.mark()
        server.stop()

        # Then the worker says so when it has a result to send, and keeps running
        worker.wait_for_line(
            "WARNING Redis unreachable or refusing writes, retrying in", timeout=10.0, start=mark
        )
        assert worker.running()
        # and waits for Redis without spinning the CPU
        used, since = cpu_seconds(worker.pid), time.monotonic()
        # and still enforces the limits of the jobs it runs
        line = worker.wait_for_line(
            rf"job attempt failed job_id={hanging.id} .*error=timed out after 1\.5s",
            timeout=5.0,
        ).string
        assert int(parse_fields(line)["duration_ms"]) < 2500, line
        assert len(set(worker.wait_pool_size(2)) - set(pool)) == 1
        wait_until(lambda: time.monotonic() - since >= 1.0, 2.0, "a second of outage")
        share = (cpu_seconds(worker.pid) - used) / (time.monotonic() - since)
        assert share < 0.25, f"the parent used {share:.0%} of a CPU while Redis was down"

        # When the server comes back on the same socket
        server.start()
        after = own_queue.add("ok", "after the restart")

        # Then the worker reconnects on its own: the results it held reach
        # Redis, and it runs new jobs
        jobs = wait_for_jobs(own_queue, [short.id, hanging.id, after.id], timeout=15.0)
        assert jobs[short.id].state == "completed", jobs[short.id].fields
        assert jobs[short.id].result == "slept"
        assert jobs[hanging.id].state == "failed", jobs[hanging.id].fields
        assert jobs[hanging.id].error == "timed out after 1.5s"
        assert jobs[after.id].state == "completed", jobs[after.id].fields
        assert all(job.stalls == 0 for job in jobs.values())
        assert own_queue.counts()["active"] == 0
        assert worker.running()

        # And it still stops cleanly
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10.0) == EXIT_OK, worker.log
        assert not worker.matching_lines("Traceback")
    finally:
        worker.cleanup()
        own_queue.client.close()
        server.stop()


def test_a_full_redis_is_waited_out_not_fatal(
    tmp_path: Path, queue: Queue, redis_version: RedisVersion
) -> None:
    # Given a worker on a Redis that has just hit maxmemory under noeviction
    server = redis_version.server(tmp_path / "full").start()
    worker = WorkerProcess(queue.name, server.url, ["--lease", "2"], procs=1)
    client = redis.Redis.from_url(server.url)
    try:
        worker.start()
        producer = Queue(queue.name, url=server.url)
        producer.add("ok", 1).wait(10)
        client.config_set("maxmemory", 1)  # every write is refused now
        worker.wait_for_line("command not allowed when used memory", timeout=20)
        # When room comes back, the worker carries on
        client.config_set("maxmemory", 0)
        assert producer.add("ok", 2).wait(20)["echo"] == 2
        assert worker.running()
    finally:
        client.config_set("maxmemory", 0)
        worker.cleanup()
        server.stop()
