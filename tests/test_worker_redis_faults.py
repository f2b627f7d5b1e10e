"""Redis faults are waited out, never fatal, and never lose or repeat a job.

Each test puts a real ``sandboxq worker`` in front of a real fault: a TCP
proxy (tests/faults.py) that loses one reply or holds a request back, a
Redis that refuses writes (MISCONF after a failed snapshot), one busy with
another client's script (BUSY), a replica whose master is gone
(MASTERDOWN), or a worker whose clock is off (libfaketime). Each test with a
server of its own runs on Redis 6.2 and on 7.x (the ``redis_version``
fixture, named in the test's id: ``[redis-7.0.15]``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis._parsers.base import BaseParser

from sandboxq import Job, Queue
from sandboxq.local_redis import LocalRedis
from sandboxq.worker.parent import EXIT_OK
from sandboxq.worker.trouble import is_transient
from tests.faults import (
    TcpProxy,
    TlsTerminator,
    busy_script,
    failing_snapshots,
    free_port,
    refusals,
    sends_script,
    shifted_clock_env,
)
from tests.worker_harness import (
    WorkerProcess,
    job_field,
    parse_fields,
    process_title,
    runs_recorded,
    wait_for_job,
    wait_for_jobs,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def server(fault_server: LocalRedis) -> LocalRedis:
    """A redis-server of the test's own, on TCP (the proxy's target), on
    each Redis version in turn."""
    return fault_server


@pytest.fixture
def proxy(server: LocalRedis) -> Iterator[TcpProxy]:
    assert server.port is not None
    between = TcpProxy(server.port)
    yield between
    between.close()


@pytest.fixture
def producer(queue: Queue, server: LocalRedis) -> Iterator[Queue]:
    """The test queue on the test's own server, reached directly."""
    own = Queue(queue.name, url=server.url)
    yield own
    own.client.close()


@pytest.fixture
def admin(server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    with contextlib.suppress(redis.RedisError):
        client.close()


def chaos(
    runs: Path, action: str = "ok", sleep: float = 0.0, gate: Path | None = None
) -> dict[str, object]:
    """Data for the ``chaos`` handler, which records each run in ``runs``
    (and with a ``gate``, goes on only once that file exists)."""
    data: dict[str, object] = {"runs": str(runs), "action": action, "sleep": sleep}
    if gate is not None:
        data["gate"] = str(gate)
    return data


def running_job(
    start_worker: StartWorker, url: str, producer: Queue, runs: Path, sleep: float
) -> tuple[WorkerProcess, Job]:
    """A worker (one child, 4 s lease) on ``url``, running a ``chaos`` job
    that takes ``sleep`` seconds."""
    worker = start_worker("--lease", "4", url=url, procs=1)
    job = producer.add("chaos", chaos(runs, sleep=sleep))
    worker.child_running("chaos", job.id)
    return worker, job


# -- lost replies ------------------------------------------------------------------
def test_a_fetch_whose_reply_is_lost_is_handed_back_and_runs_once(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given a job that must never be retried on its own, and a proxy that will
    # lose the reply to the next step that fetches (not an idle wait's fetch)
    runs = tmp_path / "runs"
    job = producer.add("chaos", chaos(runs), manual_retry_only=True)
    fetch = sends_script("fetch", producer.keys.wait.encode())
    proxy.lose_reply(lambda chunk: fetch(chunk) and b"BZPOPMIN" not in chunk)

    # When a worker starts, with no stall allowed (a stall would fail the job
    # without running it), and the fetch that leased the job never answers
    worker = start_worker("--lease", "2", "--max-stalls", "0", url=proxy.url, procs=1)

    # Then the worker gives up on that reply, hands the job it may have
    # leased back (it never started), and runs it once: no stall counted
    assert_handed_back_and_run_once(worker, proxy, producer, job.id, runs)


def test_a_wake_up_whose_jobs_never_arrive_hands_them_back_and_they_run_once(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given an idle worker whose blocking wait (which carries a fetch, run by
    # Redis as soon as the wait answers) will lose its replies, with no stall
    # allowed
    proxy.lose_reply(sends_script("fetch", b"BZPOPMIN"))
    worker = start_worker("--lease", "2", "--max-stalls", "0", url=proxy.url, procs=1)
    runs = tmp_path / "runs"
    # ... and whose wait is on its way (added sooner, a busy machine can let
    # the worker's first plain fetch take the job before any wait is armed)
    wait_until(lambda: proxy.lost == 1, timeout=15, what="the wait losing its reply", poll=0.001)

    # When a job that must never be retried on its own is added: it wakes the
    # wait, and the wait's fetch leases it
    job = producer.add("chaos", chaos(runs), manual_retry_only=True)

    # Then the worker gives up on the wait, hands back what its fetch leased
    # (it never started), and runs the job once
    assert_handed_back_and_run_once(worker, proxy, producer, job.id, runs)


def assert_handed_back_and_run_once(
    worker: WorkerProcess, proxy: TcpProxy, producer: Queue, job_id: str, runs: Path
) -> None:
    """The job a lost fetch reply leased was handed back and ran once: one
    attempt, no stall, and the worker said so and runs on."""
    done = wait_for_job(producer, job_id, timeout=15.0)
    assert done.state == "completed", done.fields
    assert (done.attempts_made, done.stalls) == (1, 0)
    assert runs_recorded(runs) == [job_id]
    assert proxy.lost == 1
    worker.wait_for_line(
        rf"WARNING handed back jobs a lost fetch reply had leased here.* job_ids={job_id}$"
    )
    assert worker.running()


def test_a_lost_second_fetch_keeps_the_jobs_the_first_one_took(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given two queues with one job each, and a worker with two children that
    # serves both: its first step fetches from one queue, then asks the other
    # for the slot left; the proxy loses the reply to that second fetch
    other = Queue(f"{producer.name}-b", url=producer.url)
    runs = tmp_path / "runs"
    jobs = [producer.add("chaos", chaos(runs)), other.add("chaos", chaos(runs))]
    first_step = sends_script("recover_stalled")
    fetch = sends_script("fetch")
    proxy.lose_reply(lambda chunk: fetch(chunk) and not first_step(chunk))

    # When the worker starts
    start_worker(
        "--lease", "2", url=proxy.url, procs=2, env={"SANDBOXQ_TEST_EXTRA_QUEUES": other.name}
    )

    # Then both jobs run, once each: the job the first fetch took was not
    # dropped with the failed step, and the second is handed back and run
    queues = (producer, other)
    done = [wait_for_job(q, job.id, timeout=15.0) for q, job in zip(queues, jobs, strict=True)]
    assert [job.state for job in done] == ["completed", "completed"], [j.fields for j in done]
    assert all((job.attempts_made, job.stalls) == (1, 0) for job in done)
    assert sorted(runs_recorded(runs)) == sorted(job.id for job in jobs)
    assert proxy.lost == 1
    other.obliterate(force=True)
    other.client.close()


def test_a_finish_whose_reply_is_lost_is_recognized_as_settled_already(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given a worker behind a proxy that will lose the reply to the next finish
    # that completes a job (the outcome argument, not the completed set's key;
    # a finish may also only mark a job started)
    worker = start_worker("--lease", "2", url=proxy.url, procs=1)
    completes = b"\r\ncompleted\r\n"
    proxy.lose_reply(sends_script("finish", producer.keys.active.encode(), completes))
    runs = tmp_path / "runs"

    # When a job completes and the finish that recorded it never answers
    job = producer.add("chaos", chaos(runs))

    # Then the worker sends the finish again, and says the job was settled
    # already by this worker (not "lost"): it completed once, ran once
    line = worker.wait_for_line(
        rf"INFO job completed \(already settled by this worker\) job_id={job.id} ", timeout=15.0
    )
    assert "attempt=1" in line.string
    done = wait_for_job(producer, job.id)
    assert (done.state, done.attempts_made, done.stalls) == ("completed", 1, 0)
    assert runs_recorded(runs) == [job.id]
    assert not worker.matching_lines("job lost")
    assert proxy.lost == 1


def test_a_fetch_that_reaches_redis_late_leases_nothing(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given a worker with one child behind a proxy that holds its next fetch
    # back for 6 s, far past the time the worker waits for a reply (1 s)
    worker = start_worker("--lease", "2", "--max-stalls", "0", url=proxy.url, procs=1)
    proxy.hold_request(sends_script("fetch", producer.keys.wait.encode()), 6.0)
    runs = tmp_path / "runs"

    # When a long job is added: the worker gives up on the held fetch, hands
    # back what it may have leased (nothing yet) and fetches it again
    first = producer.add("chaos", chaos(runs, sleep=7.0))
    worker.child_running("chaos", first.id, timeout=10.0)
    # and a second job waits while the only child is busy, when the held
    # fetch reaches Redis at last
    second = producer.add("chaos", chaos(runs), manual_retry_only=True)

    # Then the late fetch leased nothing: had it taken the second job, no one
    # would have run it and its lapsed lease would have failed it (a stall,
    # with none allowed). Each job ran once, on one lease.
    done = wait_for_jobs(producer, [first.id, second.id], timeout=20.0)
    assert [(j.state, j.attempts_made, j.stalls) for j in done.values()] == [
        ("completed", 1, 0),
        ("completed", 1, 0),
    ], [j.fields for j in done.values()]
    assert runs_recorded(runs) == [first.id, second.id]
    assert [int(job_field(producer, j, "leases")) for j in (first.id, second.id)] == [1, 1]
    assert proxy.held == 1


def test_a_network_stall_longer_than_the_reply_timeout_loses_and_repeats_nothing(
    start_worker: StartWorker, proxy: TcpProxy, producer: Queue, tmp_path: Path
) -> None:
    # Given a worker with two children behind a proxy, each running a job
    # that ends 0.4 s after the test opens its gate, and more 0.4 s jobs
    # waiting
    worker = start_worker("--lease", "6", url=proxy.url, procs=2)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    in_flight = [producer.add("chaos", chaos(runs, sleep=0.4, gate=gate)) for _ in range(2)]
    waiting = [producer.add("chaos", chaos(runs, sleep=0.4)) for _ in range(6)]
    children = [worker.child_running("chaos", job.id, timeout=20.0) for job in in_flight]

    # When the network stalls, and the jobs in flight finish meanwhile (the
    # parent holds their results), long enough for the worker to give up on
    # a reply (after 1.5 s) and try again, then flows again
    gave_up = "Redis unreachable or refusing writes"
    gave_up_before = len(worker.matching_lines(gave_up))
    proxy.stall()
    gate.touch()
    for child in children:
        wait_until(
            lambda child=child: (process_title(child) or "").endswith(": idle"),
            20.0,
            f"child {child} to finish its job in flight",
        )
    wait_until(
        lambda: len(worker.matching_lines(gave_up)) >= gave_up_before + 2,
        30.0,
        "the worker to give up on a reply twice",
    )
    proxy.resume()

    # Then every job completed once, on its first attempt, with no stall: late
    # requests were recognized (finishes) or leased nothing (fetches)
    jobs = [*in_flight, *waiting]
    done = wait_for_jobs(producer, [job.id for job in jobs], timeout=45.0)
    assert {(j.state, j.attempts_made, j.stalls) for j in done.values()} == {("completed", 1, 0)}
    assert sorted(runs_recorded(runs)) == sorted(job.id for job in jobs), worker.log
    assert producer.counts()["active"] == 0
    assert not worker.matching_lines("job lost")
    assert worker.running()


@pytest.mark.parametrize("lease", ["30", "4"], ids=["reply-awaited", "reconnecting"])
def test_limits_act_on_time_while_redis_sleeps(
    start_worker: StartWorker, server: LocalRedis, producer: Queue, admin: redis.Redis, lease: str
) -> None:
    # Given a worker running a job that hangs with a 1 s timeout, and a short
    # job on its other child. With a 30 s lease the parent waits up to 5 s
    # for a reply; with a 4 s lease it gives up after 1 s and reconnects.
    worker = start_worker("--lease", lease, "--kill-grace", "0.5", url=server.url, procs=2)
    hanging = producer.add("hang", timeout=1)
    worker.child_running("hang", hanging.id)
    short = producer.add("sleep", 0.5)
    short_child = worker.child_running("sleep", short.id)

    # When Redis sleeps for 4 s (DEBUG SLEEP) right then
    sleeping = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "4"))
    sleeping.start()

    # Then, while Redis still sleeps, the timeout kills the hanging job on
    # time, its child is replaced, and the short job's child finishes and
    # waits for its next job: the parent never waited for Redis
    line = worker.wait_for_line(
        rf"job attempt failed job_id={hanging.id} .*error=timed out after 1\.0s", timeout=10.0
    ).string
    assert int(parse_fields(line)["duration_ms"]) < 2000, line
    worker.wait_pool_size(2, timeout=2.0)
    wait_until(
        lambda: (process_title(short_child) or "").endswith(": idle"), 2.0, "the short job to end"
    )
    assert sleeping.is_alive(), "Redis woke up before the limits were checked"
    sleeping.join(10)

    # And once Redis is back, both results are recorded, once
    jobs = wait_for_jobs(producer, [hanging.id, short.id], timeout=15.0)
    assert jobs[hanging.id].state == "failed"
    assert jobs[hanging.id].error == "timed out after 1.0s"
    assert (jobs[short.id].state, jobs[short.id].result) == ("completed", "slept")
    assert all(job.stalls == 0 for job in jobs.values())
    assert worker.running()


def test_a_worker_talks_tls(
    start_worker: StartWorker, server: LocalRedis, producer: Queue, tmp_path: Path
) -> None:
    # Given Redis behind TLS (rediss://)
    assert server.port is not None
    tls = TlsTerminator(server.port, tmp_path)
    try:
        # When a worker serves it over TLS
        worker = start_worker("--lease", "4", url=tls.url, procs=1)
        # Then jobs run, and the worker stops cleanly
        assert producer.add("ok", "over tls").wait(10)["echo"] == "over tls"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10.0) == EXIT_OK, worker.log
    finally:
        tls.close()


def test_a_worker_authenticates_and_selects_its_database(
    start_worker: StartWorker, queue: Queue, server: LocalRedis, admin: redis.Redis
) -> None:
    # Given a Redis that wants a password, and a queue in database 3
    admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    own = Queue(queue.name, url=url)
    try:
        # When a worker is given a wrong password, it says so and waits
        wrong = start_worker(
            "--lease", "4", url=url.replace("s3cret", "nope"), procs=1, wait_ready=False
        )
        wrong.wait_for_line(r"Redis unreachable or refusing writes.*setup.*(WRONGPASS|invalid)")
        assert wrong.running()
        wrong.cleanup()
        # And with the right one, it serves database 3
        start_worker("--lease", "4", url=url, procs=1)
        assert own.add("ok", 3).wait(10)["echo"] == 3
        assert own.client.connection_pool.connection_kwargs["db"] == 3
    finally:
        own.client.close()
        admin.execute_command("AUTH", "s3cret")
        admin.config_set("requirepass", "")


# -- Redis refusing commands -----------------------------------------------------
def test_misconf_is_waited_out_and_a_shutdown_during_it_is_clean(
    start_worker: StartWorker,
    server: LocalRedis,
    producer: Queue,
    admin: redis.Redis,
    tmp_path: Path,
) -> None:
    # Given a worker running a job, on a Redis that then refuses writes
    # (MISCONF: its last snapshot failed)
    runs = tmp_path / "runs"
    worker, job = running_job(start_worker, server.url, producer, runs, sleep=1.0)
    with failing_snapshots(admin, tmp_path):
        # When the job finishes while Redis refuses to record it
        line = worker.wait_for_line(r"Redis unreachable or refusing writes.*MISCONF", timeout=10)
        assert "WARNING" in line.string
        assert worker.running()
        # and the worker is asked to stop meanwhile
        worker.send_signal(signal.SIGTERM)
        worker.wait_for_line("shutting down")
    # Then once Redis takes writes again, the result is recorded and the
    # worker stops cleanly, having lost nothing
    assert worker.wait(15.0) == EXIT_OK, worker.log
    done = wait_for_job(producer, job.id)
    assert (done.state, done.attempts_made, done.stalls) == ("completed", 1, 0)
    assert runs_recorded(runs) == [job.id]
    assert not worker.matching_lines("Traceback")


def test_an_idle_worker_stops_cleanly_while_redis_refuses_writes(
    start_worker: StartWorker, server: LocalRedis, admin: redis.Redis, tmp_path: Path
) -> None:
    # Given an idle worker, on a Redis that refuses writes (MISCONF)
    worker = start_worker("--lease", "4", url=server.url, procs=1)
    with failing_snapshots(admin, tmp_path):
        # When it is asked to stop: leaving the worker registry is a write
        refused_before = refusals(admin, "MISCONF")
        worker.send_signal(signal.SIGTERM)
        # Then it still exits cleanly, without a traceback
        assert worker.wait(15.0) == EXIT_OK, worker.log
        # having met the refusal on its way out
        assert refusals(admin, "MISCONF") > refused_before
    assert not worker.matching_lines("Traceback")


def test_an_idle_worker_whose_user_may_not_unblock_still_stops_at_once(
    start_worker: StartWorker, server: LocalRedis, admin: redis.Redis, producer: Queue
) -> None:
    # Given an idle worker whose Redis user may not use CLIENT (managed
    # Redis often forbids it), waiting with a fetch for up to 30 s
    admin.acl_setuser(
        "no-client", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-client"],
    )  # fmt: skip
    url = f"redis://no-client:secret@127.0.0.1:{server.port}/0"
    worker = start_worker("--lease", "60", url=url, procs=1)
    wait_until(lambda: blocked_waiters(admin), 10, "the worker blocked in its wait")

    # When it is asked to stop
    worker.send_signal(signal.SIGTERM)

    # Then it gives its wait up instead, reclaims what the wait's fetch may
    # have leased, and exits cleanly
    assert worker.wait(20) == EXIT_OK, worker.log
    assert worker.matching_lines("stopped cleanly")
    assert not worker.matching_lines("Traceback")
    job = producer.add("echo", 1)
    assert producer.get_job(job.id).state == "waiting"  # nothing took it


def blocked_waiters(admin: redis.Redis) -> bool:
    """A client is blocked in BZPOPMIN: an idle worker's wait."""
    return any(
        c.get("cmd") == "bzpopmin" and "b" in c.get("flags", "") for c in admin.client_list()
    )


def test_a_busy_redis_is_waited_out(
    start_worker: StartWorker, server: LocalRedis, producer: Queue, tmp_path: Path
) -> None:
    # Given a worker running a job
    runs = tmp_path / "runs"
    worker, job = running_job(start_worker, server.url, producer, runs, sleep=0.3)

    # When another client's script keeps Redis busy (BUSY) while it finishes
    spinning = busy_script(server.url, 2.0)
    line = worker.wait_for_line(r"Redis unreachable or refusing writes.*BUSY", timeout=10)
    assert "WARNING" in line.string
    spinning.join(10)

    # Then the job is recorded once Redis answers again; nothing is lost
    done = wait_for_job(producer, job.id, timeout=15.0)
    assert (done.state, done.attempts_made, done.stalls) == ("completed", 1, 0)
    assert worker.running()
    assert producer.add("ok", 2).wait(10)["echo"] == 2


def test_a_replica_whose_master_is_gone_is_waited_out_until_promoted(
    queue: Queue, server: LocalRedis, admin: redis.Redis
) -> None:
    # Given a Redis that is a replica of a master that is gone, and serves no
    # stale data (MASTERDOWN)
    admin.config_set("replica-serve-stale-data", "no")
    admin.replicaof("127.0.0.1", free_port())
    worker = WorkerProcess(queue.name, server.url, ["--lease", "4"], procs=1)
    try:
        # When a worker starts on it
        worker.start(wait_ready=False)
        # Then it waits, saying why, instead of crashing
        worker.wait_for_line(r"WARNING Redis unreachable or refusing writes.*MasterDownError")
        assert worker.running()
        # And when the replica is promoted, it gets to work
        admin.replicaof("NO", "ONE")
        worker.wait_for_line("sandboxq worker ready")
        producer = Queue(queue.name, url=server.url)
        assert producer.add("ok", 1).wait(10)["echo"] == 1
        producer.client.close()
    finally:
        worker.cleanup()


@pytest.mark.parametrize(
    ("reply", "transient"),
    [
        ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable", True),
        ("BUSY Redis is busy running a script.", True),
        ("LOADING Redis is loading the dataset in memory", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("READONLY You can't write against a read only replica.", True),
        ("OOM command not allowed when used memory > 'maxmemory'.", True),
        (
            "ERR Error running script (call to f_0a1b): @user_script:12: "
            "-MISCONF Errors writing to the AOF file",
            True,
        ),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ERR Error running script (call to f_0a1b): @user_script:3: attempt to compare", False),
        ("BUSYKEY Target key name already exists.", False),
    ],
)
def test_redis_error_replies_are_told_apart(reply: str, transient: bool) -> None:
    # Given an error reply as redis-py parses it off the wire
    parsed = BaseParser.parse_error(reply)
    # Then trouble that passes is told from a refusal that points at a bug
    assert is_transient(parsed) is transient


# -- clocks that are off -----------------------------------------------------------
def test_a_worker_whose_clock_is_ahead_does_not_steal_a_live_job(
    start_worker: StartWorker, producer: Queue, server: LocalRedis, tmp_path: Path
) -> None:
    # Given a job running on a worker with a right clock and a 2 s lease,
    # which it renews on time
    runs = tmp_path / "runs"
    on_time = start_worker("--lease", "2", url=server.url, procs=1)
    job = producer.add("chaos", chaos(runs, sleep=5.0))
    on_time.child_running("chaos", job.id)

    # When a second worker whose clock is 60 s ahead looks for stalled jobs
    # (every second with a 2 s lease) while it runs
    ahead = start_worker("--lease", "2", url=server.url, procs=1, env=shifted_clock_env(+60))
    # Then it never takes the job: it ran once, with no stall
    done = wait_for_job(producer, job.id, timeout=15.0)
    assert (done.state, done.stalls) == ("completed", 0)
    assert runs_recorded(runs) == [job.id]
    assert not ahead.matching_lines("recovered stalled jobs")
    assert ahead.running()


def test_a_worker_whose_clock_is_behind_recovers_a_dead_workers_job_on_time(
    start_worker: StartWorker, producer: Queue, server: LocalRedis, tmp_path: Path
) -> None:
    # Given a job running on a worker with a 2 s lease, and a second worker
    # whose clock is 60 s behind
    runs = tmp_path / "runs"
    dying = start_worker("--lease", "2", url=server.url, procs=1)
    job = producer.add("chaos", chaos(runs, sleep=30.0))
    dying.child_running("chaos", job.id)
    behind = start_worker("--lease", "2", url=server.url, procs=1, env=shifted_clock_env(-60))

    # When the first worker dies with its job
    dying.kill_group()
    died_at = time.monotonic()

    # Then the second recovers the job once its lease lapses (2 s, plus up
    # to a second until it looks), not 60 s later (the bound is half the
    # skew: what tells the two apart, however busy the machine)
    behind.wait_for_line(rf"WARNING recovered stalled jobs .*requeued={job.id}", timeout=30.0)
    late = time.monotonic() - died_at
    assert late < 30.0, f"recovered {late:.1f}s after the worker died"
    wait_until(lambda: len(runs_recorded(runs)) == 2, 10.0, "the job to run again")
