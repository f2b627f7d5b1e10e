"""The public API: Queue, Job, QueueEvents and the inline runner, against the
real redis-server of the session (a test that hurts its server gets one of
its own, on each Redis version in turn)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import sandboxq
from sandboxq import (
    Backoff,
    ConnectionFailed,
    JobFailed,
    JobIsActive,
    Queue,
    QueueEvents,
    Retention,
    Retry,
    Unrecoverable,
)
from sandboxq.handlers import JobContext
from sandboxq.local_redis import LocalRedis
from sandboxq.schedule import fire_due
from sandboxq.scripts import now_ms
from sandboxq.testing import run_until_empty
from tests.faults import free_port

EMPTY = {
    "waiting": 0,
    "delayed": 0,
    "active": 0,
    "completed": 0,
    "failed": 0,
    "waiting-children": 0,
    "waiting-deps": 0,
    "cancelled": 0,
}


# -- helpers ------------------------------------------------------------------
def ok(ctx: JobContext) -> Any:
    return {"echo": ctx.data}


def boom(ctx: JobContext) -> Any:
    raise ValueError("boom")


def queue_keys(q: Queue) -> set[bytes]:
    return set(q.client.keys(f"sq:{{{q.name}}}:*"))


def lease(q: Queue, count: int = 1) -> list[str]:
    """Take jobs the way a worker does (a real lease), without running them."""
    rows, *_ = q.scripts.fetch(q.keys, now_ms(), count, "test-worker", 60_000)
    return [rows[i].decode() for i in range(0, len(rows), 2)]


# -- connecting ---------------------------------------------------------------
def test_queue_connects_to_the_url_it_is_given(redis_url: str, queue: Queue) -> None:
    # Given a queue built from a URL
    q = Queue(queue.name, url=redis_url)

    # When a job is added through it
    job = q.add("x", 1)

    # Then the fixture's queue (same name, same server) sees it
    assert q.url == redis_url
    assert queue.get_job(job.id).data == 1
    q.client.close()


def test_queue_url_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue: Queue
) -> None:
    # Given SANDBOXQ_REDIS_URL points at the test server
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", redis_url)

    # When a queue is made without a URL
    q = Queue(queue.name)
    q.add("x")

    # Then it uses that server
    assert q.url == redis_url
    assert queue.counts()["waiting"] == 1
    q.client.close()


def test_a_queue_made_before_the_environment_names_its_redis_finds_it_when_first_used(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue: Queue
) -> None:
    # Given a queue made at import time, while SANDBOXQ_REDIS_URL names a
    # Redis that is not there
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    q = Queue(queue.name)

    # When a test points SANDBOXQ_REDIS_URL at its own Redis before using it
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", redis_url)
    q.add("x")

    # Then the queue talks to that Redis, and keeps it afterwards
    assert queue.counts()["waiting"] == 1
    monkeypatch.delenv("SANDBOXQ_REDIS_URL")
    assert q.url == redis_url and q.counts()["waiting"] == 1
    q.client.close()


def test_queue_url_defaults_to_localhost_without_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no SANDBOXQ_REDIS_URL
    monkeypatch.delenv("SANDBOXQ_REDIS_URL", raising=False)

    # When a queue is made without a URL (nothing connects yet)
    q = Queue("anything")

    # Then it targets the local default
    assert q.url == "redis://localhost:6379/0"


def test_queue_can_share_an_existing_connection(client: redis.Redis, redis_url: str) -> None:
    # Given an existing client
    q = Queue(f"t-{uuid.uuid4().hex[:10]}", connection=client)

    # When a job is added through the queue
    job = q.add("x", [1, 2])

    # Then it went through that client, and the queue describes where it is
    assert q.client is client
    assert q.url == redis_url
    assert client.exists(q.keys.job(job.id)) == 1
    q.obliterate()


@pytest.fixture
def hurt_queue(fault_server: LocalRedis) -> Iterator[Queue]:
    """A queue on a server of the test's own, which the test may hurt."""
    own = Queue("hurt", url=fault_server.url)
    yield own
    own.client.close()


@pytest.fixture
def hurt_admin(fault_server: LocalRedis) -> Iterator[redis.Redis]:
    """Another client of ``hurt_queue``'s server."""
    admin = redis.Redis.from_url(fault_server.url)
    yield admin
    admin.close()


def test_add_loads_its_script_again_when_redis_forgot_it(
    hurt_queue: Queue, hurt_admin: redis.Redis
) -> None:
    # Given a queue that added a job, and then Redis's script cache flushed
    # (a restart, a failover, or SCRIPT FLUSH)
    hurt_queue.add("x", 1)
    hurt_admin.script_flush()

    # When it adds again
    job = hurt_queue.add("x", 2)

    # Then the add went through, its script loaded again, and nothing doubled
    assert hurt_queue.get_job(job.id).data == 2
    assert hurt_queue.counts()["waiting"] == 2


def test_add_replaces_a_pooled_connection_that_redis_closed(
    hurt_queue: Queue, hurt_admin: redis.Redis
) -> None:
    # Given a queue whose pooled connection the server closed meanwhile
    hurt_queue.add("x", 1)
    queue_conn = hurt_queue.client.client_id()
    hurt_admin.client_kill_filter(_id=queue_conn)

    # When it adds again
    job = hurt_queue.add("x", 2)

    # Then redis-py's retry policy reconnected, and the job was added once
    assert hurt_queue.client.client_id() != queue_conn
    assert hurt_queue.get_job(job.id).data == 2
    assert hurt_queue.counts()["waiting"] == 2


def test_an_error_reply_raises_the_redis_py_exception(queue: Queue, client: redis.Redis) -> None:
    # Given a queue whose wait key was made a string by someone else
    client.set(queue.keys.wait, "not a sorted set")

    # When a job is added
    # Then the script's error comes back as redis-py's ResponseError, naming it
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue.add("x", 1)
    client.delete(queue.keys.wait)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "unix:///nonexistent/dir/redis.sock"])
def test_an_unreachable_redis_raises_connection_failed_naming_the_url(url: str) -> None:
    # Given a queue pointing at nothing
    q = Queue("q", url=url)

    # When it is used
    # Then each call fails with an error naming the URL
    for call in (lambda: q.add("x", 1), q.counts, lambda: q.get_job("1"), q.pause):
        with pytest.raises(ConnectionFailed, match="cannot reach Redis at " + url):
            call()
    assert issubclass(ConnectionFailed, ConnectionError)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "unix:///nonexistent/dir/redis.sock"])
def test_waiting_and_listening_on_an_unreachable_redis_name_the_url(url: str) -> None:
    # Given a job handle and an event listener on a queue pointing at nothing
    q = Queue("q", url=url)
    job = sandboxq.Job(q, "1", {"name": "x", "state": "waiting"})

    # When the producer waits for the job, or follows the events
    # Then both fail with the same error as every Queue call
    with pytest.raises(ConnectionFailed, match="cannot reach Redis at " + url):
        job.wait(timeout=5)
    with pytest.raises(ConnectionFailed, match="cannot reach Redis at " + url):
        next(QueueEvents(q).listen(since="0"))
    with pytest.raises(ConnectionFailed, match="cannot reach Redis at " + url):
        next(QueueEvents(q).listen())


def test_a_malformed_url_is_a_value_error_naming_it() -> None:
    # When a queue is made with a URL that has no scheme
    # Then the error names the URL
    with pytest.raises(ValueError, match="bad Redis URL 'localhost:6379'"):
        Queue("q", url="localhost:6379")


# -- adding -------------------------------------------------------------------
def test_add_returns_the_job_as_stored(queue: Queue) -> None:
    # Given an empty queue
    before = time.time()

    # When a job is added
    job = queue.add("resize", {"w": 100, "tags": ["a"]}, priority=3, attempts=2, timeout=9.5)
    after = time.time()

    # Then the returned job and the stored one agree
    stored = queue.get_job(job.id)
    assert stored is not None
    for attr in (
        "id",
        "name",
        "data",
        "state",
        "priority",
        "attempts",
        "attempts_made",
        "timeout",
        "created_at",
        "started_at",
        "finished_at",
        "progress",
        "result",
        "error",
    ):
        assert getattr(job, attr) == getattr(stored, attr), attr
    assert (stored.name, stored.data, stored.state) == (
        "resize",
        {"w": 100, "tags": ["a"]},
        "waiting",
    )
    assert (stored.priority, stored.attempts, stored.timeout) == (3, 2, 9.5)
    assert before - 0.001 <= stored.created_at <= after
    assert stored.started_at is None and stored.finished_at is None
    assert queue.counts() == {**EMPTY, "waiting": 1}


@pytest.mark.parametrize(("delay", "state"), [(0, "waiting"), (0.0004, "waiting"), (60, "delayed")])
def test_the_returned_state_is_the_stored_state(queue: Queue, delay: float, state: str) -> None:
    # Given / When: a job added with a delay (below a millisecond rounds to none)
    job = queue.add("x", delay=delay)

    # Then the state it reports is where Redis put it
    assert job.state == state
    assert queue.get_job(job.id).state == state
    assert queue.counts()[state] == 1


def test_add_with_a_delay_is_due_after_the_delay(queue: Queue) -> None:
    # Given / When: a job is added with a 60 s delay
    before = now_ms()
    job = queue.add("x", delay=60)
    after = now_ms()

    # Then it is delayed and due 60 s after it was added
    due = queue.client.zscore(queue.keys.delayed, job.id)
    assert before + 60_000 <= due <= after + 60_000
    assert queue.counts() == {**EMPTY, "delayed": 1}


def test_a_custom_job_id_deduplicates(queue: Queue) -> None:
    # Given a job with a custom id
    first = queue.add("email", {"to": "a"}, job_id="order-42")

    # When the same id is added again with other content
    again = queue.add("sms", {"to": "b"}, job_id="order-42", delay=30)

    # Then the existing job comes back and nothing else was written
    assert again.id == first.id == "order-42"
    assert (again.name, again.data, again.state) == ("email", {"to": "a"}, "waiting")
    assert queue.counts() == {**EMPTY, "waiting": 1}


def test_add_bulk_adds_every_job_in_order_in_chunks(client: redis.Redis, queue: Queue) -> None:
    # Given 2,500 jobs, and scripts already loaded on the server
    queue.add("warm-up")
    specs = [{"name": "n", "data": i, "priority": i % 3 - 1} for i in range(2_500)]
    calls_before = client.info("commandstats")["cmdstat_evalsha"]["calls"]

    # When they are added in bulk
    jobs = queue.add_bulk(specs)

    # Then it took three script calls (chunks of 1,000), and results are in order
    calls = client.info("commandstats")["cmdstat_evalsha"]["calls"] - calls_before
    assert calls == 3
    assert [job.data for job in jobs] == list(range(2_500))
    assert [int(job.id) for job in jobs] == list(range(2, 2_502))
    assert queue.get_job(jobs[1_234].id).data == 1_234
    assert queue.counts()["waiting"] == 2_501


def test_add_bulk_deduplicates_like_add(queue: Queue) -> None:
    # Given an existing custom-id job
    queue.add("x", "old", job_id="k-1")

    # When a batch repeats that id, and repeats a new id within itself
    jobs = queue.add_bulk(
        [
            {"name": "x", "data": "new", "job_id": "k-1"},
            {"name": "y", "data": 1, "job_id": "k-2"},
            {"name": "y", "data": 2, "job_id": "k-2"},
        ]
    )

    # Then each repeat returns the job that exists
    assert [(j.id, j.data) for j in jobs] == [("k-1", "old"), ("k-2", 1), ("k-2", 1)]
    assert queue.counts()["waiting"] == 2


# -- bad input writes nothing -------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"data": {1, 2}}, TypeError, r"data of job 'x' is not JSON-serializable.*set"),
        ({"data": object()}, TypeError, r"not JSON-serializable.*object"),
        ({"data": {"k": b"bytes"}}, TypeError, r"not JSON-serializable.*bytes"),
        ({"delay": -1}, ValueError, r"delay must be >= 0 seconds, got -1"),
        ({"delay": math.nan}, ValueError, r"delay must be a number of seconds, got nan"),
        ({"delay": math.inf}, ValueError, r"delay must be a finite number of seconds, got inf"),
        ({"backoff": {"delay": math.inf}}, ValueError, r"backoff delay must be a finite"),
        ({"delay": "5"}, TypeError, r"delay must be a number of seconds, not str"),
        ({"attempts": 0}, ValueError, r"attempts must be >= 1, got 0"),
        ({"attempts": 1.5}, TypeError, r"attempts must be an int"),
        ({"priority": 2**20}, ValueError, r"priority must be between"),
        ({"backoff": "linear"}, ValueError, r"unknown backoff spec 'linear'"),
        ({"backoff": {"type": "linear", "delay": 1}}, ValueError, r"unknown backoff spec"),
        ({"backoff": {"delay": 1, "factor": 2}}, ValueError, r"unknown backoff spec"),
        ({"timeout": 0}, ValueError, r"timeout must be at least 0\.001 seconds"),
        ({"timeout": 0.0004}, ValueError, r"timeout must be at least 0\.001 seconds"),
        ({"attempts": 2**31}, ValueError, r"attempts must be at most 2147483647"),
        ({"delay": 1e300}, ValueError, r"delay must be at most 3153600000 seconds"),
        ({"keep_completed": -1}, ValueError, r"keep_completed count must be an int from 0"),
        ({"job_id": "42"}, ValueError, r"must not be a plain integer"),
        ({"job_id": "a{b"}, ValueError, r"job_id 'a\{b' must not contain"),
    ],
)
def test_bad_options_raise_a_clear_error_and_write_nothing(
    queue: Queue, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Given an empty queue
    # When a job is added with one bad option
    with pytest.raises(error, match=message):
        queue.add("x", **kwargs)

    # Then nothing was written
    assert queue.counts() == EMPTY
    assert queue_keys(queue) == set()


def test_data_over_the_payload_limit_names_size_and_limit(redis_url: str, queue: Queue) -> None:
    # Given a queue that accepts up to 100 bytes of data
    small = Queue(queue.name, url=redis_url, max_payload_bytes=100)

    # When a job's data is 202 bytes as JSON
    with pytest.raises(ValueError, match=r"is 202 bytes as JSON, over the limit of 100 bytes"):
        small.add("x", "a" * 200)

    # Then nothing was written, and data exactly at the limit is accepted
    assert queue.counts() == EMPTY
    small.add("x", "a" * 98)
    assert queue.counts()["waiting"] == 1
    small.client.close()


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("", ValueError, "job name must not be empty"),
        ("{", ValueError, r"job name '\{' must not contain"),
        ("a}", ValueError, r"job name 'a\}' must not contain"),
        (7, TypeError, "job name must be a str, not int"),
    ],
)
def test_bad_job_names_are_refused_and_write_nothing(
    queue: Queue, name: Any, error: type[Exception], message: str
) -> None:
    # When a job is added with a bad name
    with pytest.raises(error, match=message):
        queue.add(name, 1)

    # Then nothing was written
    assert queue_keys(queue) == set()


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "queue name must not be empty"), ("{x", "must not contain"), ("x}", "must not contain")],
)
def test_bad_queue_names_are_refused(redis_url: str, name: str, message: str) -> None:
    # When a queue is made with a bad name
    # Then it is refused before anything connects
    with pytest.raises(ValueError, match=message):
        Queue(name, url=redis_url)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"name": "x", "data": {1}}, TypeError, r"data of job 'x' is not JSON-serializable"),
        ({"name": "x", "attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"name": ""}, ValueError, "job name must not be empty"),
        ({"data": 1}, TypeError, "add_bulk item 1500 must be a dict with a 'name'"),
        ({"name": "x", "retries": 3}, TypeError, "add_bulk item 1500 has unknown options: retries"),
    ],
)
def test_add_bulk_with_one_bad_item_writes_none(
    queue: Queue, bad: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Given 2,000 good jobs (two chunks) with one bad item in the second chunk
    specs: list[Any] = [{"name": "ok", "data": i} for i in range(2_000)]
    specs[1_500] = bad

    # When they are added in bulk
    with pytest.raises(error, match=message):
        queue.add_bulk(specs)

    # Then not even the first chunk was written
    assert queue.counts() == EMPTY
    assert queue_keys(queue) == set()


# -- looking at jobs ----------------------------------------------------------
def test_get_job_reflects_a_finished_job_and_refresh_rereads(queue: Queue) -> None:
    # Given a job snapshot taken before it ran
    job = queue.add("echo", "hi")

    # When it runs
    before = time.time()
    run_until_empty(queue, {"echo": ok})
    after = time.time()

    # Then the old snapshot is unchanged until refreshed
    assert job.state == "waiting"
    assert job.refresh() is job
    assert (job.state, job.result, job.attempts_made, job.error) == (
        "completed",
        {"echo": "hi"},
        1,
        None,
    )
    assert before - 0.001 <= job.started_at <= job.finished_at <= after
    assert queue.get_job(job.id).result == {"echo": "hi"}


def test_get_job_of_an_unknown_id_is_none_and_refresh_of_a_removed_job_raises(
    queue: Queue,
) -> None:
    # Given a job that is then removed
    job = queue.add("x")
    assert queue.remove(job.id) is True

    # When it is looked up
    # Then it is gone
    assert queue.get_job(job.id) is None
    assert queue.get_job("nope") is None
    with pytest.raises(LookupError, match=f"job {job.id} no longer exists"):
        job.refresh()


def test_counts_and_job_ids_per_state(queue: Queue) -> None:
    # Given jobs in every state
    done = queue.add("ok")
    broken = queue.add("boom")
    run_until_empty(queue, {"ok": ok, "boom": boom})
    done2 = queue.add("ok")
    run_until_empty(queue, {"ok": ok})
    low = queue.add("x", priority=5)
    high = queue.add("x", priority=-5)
    later = queue.add("x", delay=60)
    [running] = lease(queue)

    # When the queue is counted and listed
    counts = queue.counts()

    # Then each state has its jobs, next-to-run first or newest first
    assert counts == {**EMPTY, "waiting": 1, "delayed": 1, "active": 1, "completed": 2, "failed": 1}
    assert running == high.id
    assert queue.job_ids("waiting") == [low.id]
    assert queue.job_ids("active") == [high.id]
    assert queue.job_ids("delayed") == [later.id]
    assert queue.job_ids("completed") == [done2.id, done.id]
    assert queue.job_ids("completed", start=1, limit=1) == [done.id]
    assert queue.job_ids("failed") == [broken.id]
    with pytest.raises(ValueError, match="unknown job state 'running'"):
        queue.job_ids("running")


def test_waiting_lists_grouped_jobs_after_ungrouped_ones_and_pages_across_them(
    queue: Queue,
) -> None:
    # Given waiting jobs without a group and in two groups (grouped jobs wait
    # in their group's own set), added interleaved
    plain1 = queue.add("x").id
    z1 = queue.add("x", group="zeta").id
    a1 = queue.add("x", group="alpha").id
    plain2 = queue.add("x").id
    a2 = queue.add("x", group="alpha").id
    urgent = queue.add("x", priority=-1, group="zeta").id

    # When the waiting jobs are listed, whole and in pages of 2
    everything = queue.job_ids("waiting")
    pages = [queue.job_ids("waiting", start, 2) for start in (0, 2, 4, 6)]

    # Then every waiting job is there once: ungrouped first, then each group
    # by name, each in the order it runs (priority first)
    assert everything == [plain1, plain2, a1, a2, urgent, z1]
    assert queue.counts()["waiting"] == len(everything)
    assert pages == [[plain1, plain2], [a1, a2], [urgent, z1], []]
    with pytest.raises(ValueError, match="limit >= 1"):
        queue.job_ids("waiting", 0, 0)


# -- administering ------------------------------------------------------------
def test_pause_stops_jobs_being_handed_out_until_resume(queue: Queue) -> None:
    # Given a paused queue with a job
    job = queue.add("echo", 1)
    assert queue.pause() is True
    assert queue.pause() is False

    # When the runner looks for work
    totals = run_until_empty(queue, {"echo": ok})

    # Then nothing ran
    assert totals == {}
    assert queue.is_paused() is True
    assert job.refresh().state == "waiting"

    # When the queue is resumed
    assert queue.resume() is True
    assert queue.resume() is False

    # Then the job runs
    assert run_until_empty(queue, {"echo": ok}) == {"completed": 1}
    assert queue.is_paused() is False


def test_retry_sends_one_failed_job_back_and_retry_failed_all(queue: Queue) -> None:
    # Given three jobs that failed
    jobs = [queue.add("flaky", n, attempts=2) for n in range(3)]
    assert run_until_empty(queue, {"flaky": boom}) == {"retrying": 3, "failed": 3}

    # When one is retried
    assert queue.retry(jobs[0].id) is True

    # Then it waits with a fresh budget; a job that is not failed is refused
    assert jobs[0].refresh().state == "waiting"
    assert jobs[0].attempts_made == 0
    assert queue.retry(jobs[0].id) is False
    assert queue.retry("nope") is False

    # When all failed jobs are retried and the handler now works
    assert queue.retry_failed() == 2
    assert run_until_empty(queue, {"flaky": ok}) == {"completed": 3}

    # Then every job completed on its first new attempt
    assert [j.refresh().attempts_made for j in jobs] == [1, 1, 1]
    assert queue.counts() == {**EMPTY, "completed": 3}


def test_remove_deletes_a_job_but_refuses_an_active_one(queue: Queue) -> None:
    # Given an active job and a waiting one
    active = queue.add("x")
    waiting = queue.add("x")
    assert lease(queue) == [active.id]

    # When each is removed
    # Then the active one is refused and stays; the waiting one is gone
    with pytest.raises(JobIsActive, match=f"job {active.id} is active"):
        queue.remove(active.id)
    assert queue.remove(waiting.id) is True
    assert queue.remove(waiting.id) is False
    assert queue.counts() == {**EMPTY, "active": 1}
    assert queue.get_job(active.id).state == "active"


def test_drain_removes_waiting_and_optionally_delayed_jobs(queue: Queue) -> None:
    # Given two waiting, one delayed and one active job
    queue.add("x")
    [running] = lease(queue)
    queue.add("x")
    queue.add("x")
    later = queue.add("x", delay=60)

    # When drained without delayed jobs, then with
    first = queue.drain(include_delayed=False)
    kept = queue.job_ids("delayed")
    second = queue.drain()

    # Then the waiting, then the delayed, jobs are gone; the active one stays
    assert (first, kept, second) == (2, [later.id], 1)
    assert queue.counts() == {**EMPTY, "active": 1}
    assert queue.get_job(later.id) is None
    assert queue.get_job(running) is not None


def test_drain_of_more_than_one_step(queue: Queue) -> None:
    # Given more waiting jobs than one drain step removes
    queue.add_bulk([{"name": "x"}] * 1_001)

    # When the queue is drained
    # Then every job is gone
    assert queue.drain() == 1_001
    assert queue.counts() == EMPTY


def test_obliterate_refuses_with_active_jobs_unless_forced(queue: Queue) -> None:
    # Given a queue with jobs in several states, one active
    queue.add("x")
    lease(queue)
    queue.add("ok")
    run_until_empty(queue, {"ok": ok})
    queue.add("x", delay=10)
    queue.pause()
    before = queue_keys(queue)

    # When it is obliterated without force
    with pytest.raises(JobIsActive, match="has active jobs; pass force=True"):
        queue.obliterate()

    # Then nothing was deleted
    assert queue_keys(queue) == before

    # When it is obliterated with force
    queue.obliterate(force=True)

    # Then no key of the queue is left
    assert queue_keys(queue) == set()
    assert queue.counts() == EMPTY
    assert queue.is_paused() is False


def test_promote_runs_a_delayed_job_now(queue: Queue) -> None:
    # Given a job delayed by an hour and a waiting job
    later = queue.add("echo", 1, delay=3600)
    waiting = queue.add("echo", 2)

    # When it is promoted
    assert queue.promote(later.id) is True

    # Then it runs with the waiting one; promoting again (or a waiting job) does nothing
    assert queue.promote(later.id) is False
    assert queue.promote(waiting.id) is False
    assert run_until_empty(queue, {"echo": ok}) == {"completed": 2}
    assert later.refresh().result == {"echo": 1}


def test_clean_by_keep_and_by_age(queue: Queue) -> None:
    # Given three completed and two failed jobs
    queue.add_bulk([{"name": "ok"}] * 3 + [{"name": "boom"}] * 2)
    run_until_empty(queue, {"ok": ok, "boom": boom})
    newest = queue.job_ids("completed", limit=1)

    # When completed jobs beyond the newest one are cleaned
    assert queue.clean("completed", keep=1) == 2

    # Then only the newest is kept
    assert queue.job_ids("completed") == newest

    # When failed jobs older than an hour are cleaned, then older than 0 s
    assert queue.clean("failed", older_than=3600) == 0
    assert queue.clean("failed", older_than=0) == 2

    # Then the failed set is empty and the jobs are really gone
    assert queue.counts() == {**EMPTY, "completed": 1}
    assert len(queue_keys(queue) & {queue.keys.job(str(i)).encode() for i in range(1, 6)}) == 1


def test_clean_refuses_what_it_cannot_do(queue: Queue) -> None:
    # Given a fresh waiting job
    job = queue.add("x")

    # When clean is asked for active jobs, for nothing, or by age among waiting jobs
    # Then each is refused with a reason, and the job is untouched
    with pytest.raises(ValueError, match="active jobs cannot be cleaned"):
        queue.clean("active", keep=0)
    with pytest.raises(ValueError, match="needs older_than and/or keep"):
        queue.clean("completed")
    with pytest.raises(ValueError, match="older_than"):
        queue.clean("waiting", older_than=3600)
    assert job.refresh().state == "waiting"


def test_clean_waiting_by_keep_removes_beyond_the_count(queue: Queue) -> None:
    # Given three waiting jobs
    queue.add_bulk([{"name": "x"}] * 3)

    # When all are cleaned
    # Then none is left
    assert queue.clean("waiting", keep=0) == 3
    assert queue.counts() == EMPTY


def test_retention_options_apply_when_jobs_finish(queue: Queue) -> None:
    # Given jobs that keep no completed job and at most one failed job
    done = queue.add("ok", keep_completed=Retention(count=0))
    failed = [queue.add("boom", keep_failed={"count": 1}) for _ in range(2)]

    # When they run
    run_until_empty(queue, {"ok": ok, "boom": boom})

    # Then the completed job is gone and one failed job is kept
    assert queue.get_job(done.id) is None
    assert queue.counts() == {**EMPTY, "failed": 1}
    assert queue.job_ids("failed") == [failed[1].id]


# -- backoff through the inline runner ----------------------------------------
def due_after_one_run(q: Queue, job_id: str, handlers: dict[str, Any]) -> tuple[int, int, float]:
    """Run once; return the clock bounds around the run and the job's due time."""
    before = now_ms()
    totals = run_until_empty(q, handlers)
    after = now_ms()
    assert totals == {"retrying": 1}
    due = q.client.zscore(q.keys.delayed, job_id)
    assert due is not None
    return before, after, due


def test_fixed_backoff_delays_every_retry_by_the_same_time(queue: Queue) -> None:
    # Given a job with 3 attempts and a fixed 10 s backoff
    job = queue.add("flaky", attempts=3, backoff=Backoff.fixed(10))

    for _ in range(2):
        # When an attempt fails
        before, after, due = due_after_one_run(queue, job.id, {"flaky": boom})

        # Then the job is due 10 s after the failure
        assert before + 10_000 <= due <= after + 10_000
        queue.promote(job.id)

    # and the third failure fails it for good
    assert run_until_empty(queue, {"flaky": boom}) == {"failed": 1}
    assert job.refresh().attempts_made == 3


def test_a_number_as_backoff_means_fixed_seconds(queue: Queue) -> None:
    # Given a job with backoff=5
    job = queue.add("flaky", attempts=2, backoff=5)

    # When its first attempt fails
    before, after, due = due_after_one_run(queue, job.id, {"flaky": boom})

    # Then it is due 5 s later
    assert before + 5_000 <= due <= after + 5_000


@pytest.mark.parametrize(
    "backoff",
    [Backoff.exponential(10, max_delay=30), {"type": "exponential", "delay": 10, "max": 30}],
)
def test_exponential_backoff_doubles_up_to_the_cap(queue: Queue, backoff: Any) -> None:
    # Given a job with 5 attempts and exponential backoff from 10 s, capped at 30 s
    job = queue.add("flaky", attempts=5, backoff=backoff)

    for expected_ms in (10_000, 20_000, 30_000, 30_000):
        # When an attempt fails
        before, after, due = due_after_one_run(queue, job.id, {"flaky": boom})

        # Then the wait doubled (until the cap)
        assert before + expected_ms <= due <= after + expected_ms
        queue.promote(job.id)

    assert run_until_empty(queue, {"flaky": boom}) == {"failed": 1}


def test_backoff_jitter_takes_off_at_most_its_fraction(queue: Queue) -> None:
    # Given a job with a 10 s exponential backoff and 50 % jitter
    job = queue.add("flaky", attempts=2, backoff=Backoff.exponential(10, jitter=0.5))

    # When its first attempt fails
    before, after, due = due_after_one_run(queue, job.id, {"flaky": boom})

    # Then it is due between 5 and 10 s later
    assert before + 5_000 <= due <= after + 10_000


# -- the inline runner --------------------------------------------------------
def test_a_job_with_no_handler_fails_without_retries_naming_it(queue: Queue) -> None:
    # Given a job whose name has no handler, allowed 3 attempts
    job = queue.add("mystery", attempts=3)

    # When the runner meets it
    totals = run_until_empty(queue, {"known": ok})

    # Then it failed at once, naming the job and the queue
    assert totals == {"failed": 1}
    job.refresh()
    assert job.state == "failed"
    assert job.attempts_made == 1
    assert job.error == f"no handler for job 'mystery' in queue {queue.name!r}"


def test_progress_and_logs_from_a_handler_are_recorded(queue: Queue) -> None:
    # Given a handler that reports progress and logs
    def steps(ctx: JobContext) -> str:
        ctx.log("starting")
        ctx.update_progress(50)
        ctx.update_progress({"done": 2, "of": 2})
        ctx.log("finished")
        return "ok"

    job = queue.add("steps")

    # When it runs
    run_until_empty(queue, {"steps": steps})

    # Then the last progress and every log line are on the job
    job.refresh()
    assert job.progress == {"done": 2, "of": 2}
    assert job.logs() == ["starting", "finished"]
    assert job.result == "ok"


def test_retry_from_a_handler_does_not_spend_an_attempt(queue: Queue) -> None:
    # Given a single-attempt job whose handler asks to retry in 30 s, once
    calls = []

    def later(ctx: JobContext) -> int:
        calls.append(ctx.attempts_made)
        if len(calls) == 1:
            raise Retry(30)
        return len(calls)

    job = queue.add("later", attempts=1)

    # When it runs
    before = now_ms()
    assert run_until_empty(queue, {"later": later}) == {"retrying": 1}

    # Then it is delayed by 30 s with its attempt unspent
    job.refresh()
    assert (job.state, job.attempts_made) == ("delayed", 0)
    assert queue.client.zscore(queue.keys.delayed, job.id) >= before + 30_000

    # and when it runs again it completes on its one attempt
    queue.promote(job.id)
    assert run_until_empty(queue, {"later": later}) == {"completed": 1}
    assert job.refresh().attempts_made == 1
    assert calls == [0, 0]


def test_unrecoverable_fails_without_retries(queue: Queue) -> None:
    # Given a job allowed 5 attempts whose handler says it can never succeed
    def hopeless(ctx: JobContext) -> None:
        raise Unrecoverable("bad input")

    job = queue.add("hopeless", attempts=5)

    # When it runs
    totals = run_until_empty(queue, {"hopeless": hopeless})

    # Then it failed once and for good
    assert totals == {"failed": 1}
    job.refresh()
    assert (job.state, job.attempts_made, job.error) == ("failed", 1, "Unrecoverable: bad input")
    assert "Unrecoverable" in job.traceback


def test_a_result_that_is_not_json_fails_the_attempt(queue: Queue) -> None:
    # Given a handler returning a set
    job = queue.add("bad-result")

    # When it runs
    run_until_empty(queue, {"bad-result": lambda ctx: {1, 2}})

    # Then the job failed with a message saying why
    job.refresh()
    assert job.state == "failed"
    assert "result is not JSON-serializable" in job.error


def test_run_until_empty_stops_at_max_jobs(queue: Queue) -> None:
    # Given five jobs
    queue.add_bulk([{"name": "ok"}] * 5)

    # When at most two are run
    totals = run_until_empty(queue, {"ok": ok}, max_jobs=2)

    # Then two completed and three wait
    assert totals == {"completed": 2}
    assert queue.counts() == {**EMPTY, "waiting": 3, "completed": 2}


# -- waiting for a job --------------------------------------------------------
def test_wait_returns_the_result(queue: Queue) -> None:
    # Given a job that has run
    job = queue.add("echo", [1, 2])
    run_until_empty(queue, {"echo": ok})

    # When its producer waits for it
    result = job.wait(timeout=10)

    # Then the result comes back
    assert result == {"echo": [1, 2]}


def test_wait_raises_job_failed_carrying_the_job(queue: Queue) -> None:
    # Given a job that failed for good
    job = queue.add("boom", attempts=1)
    run_until_empty(queue, {"boom": boom})

    # When its producer waits for it
    with pytest.raises(JobFailed) as raised:
        job.wait(timeout=10)

    # Then the error carries the failed job
    assert raised.value.job.id == job.id
    assert raised.value.job.state == "failed"
    assert raised.value.job.error == "ValueError: boom"
    assert str(raised.value) == f"job {job.id} (boom) failed: ValueError: boom"
    assert isinstance(raised.value, sandboxq.SandboxqError)


def test_wait_raises_timeout_error_when_the_job_does_not_finish(queue: Queue) -> None:
    # Given a job nobody runs
    job = queue.add("idle")

    # When its producer waits briefly
    # Then it times out, saying where the job is
    with pytest.raises(TimeoutError, match=f"job {job.id} \\(idle\\) still waiting"):
        job.wait(timeout=0.05)


def wait_until_blocked(client: redis.Redis, client_name: str) -> None:
    """Return once the connection named ``client_name`` is blocked in XREAD
    (readiness is read from CLIENT LIST, not guessed with a sleep)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for info in client.client_list():
            if info.get("name") == client_name and info["cmd"] == "xread" and "b" in info["flags"]:
                return
    raise AssertionError(f"{client_name} never blocked in XREAD")


def test_wait_is_woken_by_a_job_finished_in_another_thread(
    redis_url: str, client: redis.Redis, queue: Queue
) -> None:
    # Given a producer waiting for a job on its own named connection
    name = f"waiter-{uuid.uuid4().hex[:8]}"
    waiter_conn = redis.Redis.from_url(redis_url, client_name=name)
    job = Queue(queue.name, connection=waiter_conn).add("double", 21)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            wait_until_blocked(client, name)
            run_until_empty(queue, {"double": lambda ctx: ctx.data * 2})
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    # When another thread runs the job once the producer is blocked
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = job.wait(timeout=60)
    finally:
        thread.join()
        waiter_conn.close()

    # Then the waiting producer gets the result
    assert errors == []
    assert result == 42
    assert job.state == "completed"


# -- events -------------------------------------------------------------------
def test_queue_events_yield_the_transitions_of_a_job_in_order(queue: Queue) -> None:
    # Given a job that failed once, then completed with progress
    def flaky(ctx: JobContext) -> str:
        if ctx.attempts_made == 0:
            raise ValueError("first try")
        ctx.update_progress(100)
        return "done"

    job = queue.add("flaky", attempts=2)
    run_until_empty(queue, {"flaky": flaky})

    # When its events are read from the start
    listener = QueueEvents(queue)
    seen = [
        (event, payload)
        for event, job_id, payload in listener.listen(
            since="0", block_seconds=0.05, stop_after=0.05
        )
        if job_id == job.id
    ]

    # Then they are the job's transitions, in order
    assert seen == [
        ("added", {"state": "waiting"}),
        ("active", {}),
        ("retrying", {"delay_ms": 0}),
        ("active", {}),
        ("progress", {"progress": 100}),
        ("completed", {"result": "done"}),
    ]

    # and resuming from the last id yields only what happened since
    later = queue.add("flaky")
    resumed = list(listener.listen(since=listener.last_id, block_seconds=0.05, stop_after=0.05))
    assert resumed == [("added", later.id, {"state": "waiting"})]


def test_events_of_one_queue_do_not_leak_into_another(queue: Queue, other_queue: Queue) -> None:
    # Given a job on another queue
    other_queue.add("x")

    # When this queue's events are read
    seen = list(QueueEvents(queue).listen(since="0", block_seconds=0.05, stop_after=0.05))

    # Then there are none
    assert seen == []


# -- defaults and created ------------------------------------------------------------
def test_queue_defaults_fill_the_options_a_call_leaves_out(redis_url: str, queue: Queue) -> None:
    # Given a queue with default options
    q = Queue(
        queue.name,
        url=redis_url,
        defaults={"attempts": 4, "priority": 2, "timeout": 30, "keep_completed": 10},
    )

    # When jobs are added with and without options of their own
    plain = q.get_job(q.add("x").id)
    own = q.get_job(q.add("x", attempts=1, priority=0).id)
    [bulk] = q.add_bulk([{"name": "x", "priority": 7}])

    # Then the defaults apply where the call gave none, and the call wins
    assert plain is not None and own is not None
    assert (plain.attempts, plain.priority, plain.timeout) == (4, 2, 30.0)
    assert plain.fields["kc_count"] == 10
    assert (own.attempts, own.priority, own.timeout) == (1, 0, 30.0)
    assert (bulk.attempts, bulk.priority) == (4, 7)


def test_queue_defaults_are_read_only(redis_url: str, queue: Queue) -> None:
    # Given a queue with defaults, which it checked and encoded once
    given = {"attempts": 4}
    q = Queue(queue.name, url=redis_url, defaults=given)
    # When the caller's dict changes, or someone writes to the queue's
    given["attempts"] = 9
    with pytest.raises(TypeError):
        q.defaults["attempts"] = 9  # type: ignore[index]
    # Then the queue's defaults are the ones it checked, and a plain add takes them
    assert q.defaults == {"attempts": 4}
    assert q.add("x").attempts == 4
    assert q.add("x", delay=5).attempts == 4


def test_queue_defaults_reach_schedules(redis_url: str, queue: Queue) -> None:
    q = Queue(queue.name, url=redis_url, defaults={"attempts": 5, "delay": 60})
    first = int(q.schedule("tick", every=1, name="x")["next_run"] * 1000)
    fire_due(q.scripts, q.keys, first)
    job = q.get_job(f"tick@{first}")
    assert job is not None
    assert (job.attempts, job.state) == (5, "waiting")  # a schedule takes no delay


@pytest.mark.parametrize(
    ("defaults", "error", "message"),
    [
        ({"job_id": "a"}, TypeError, "except job_id and dedupe; not: job_id"),
        ({"dedupe": {"id": "a"}}, TypeError, "except job_id and dedupe; not: dedupe"),
        ({"colour": "red"}, TypeError, "not: colour"),
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"keep_completed": "forever"}, ValueError, "keep_completed must be"),
        (["attempts"], TypeError, "defaults must be a dict"),
    ],
)
def test_bad_defaults_are_refused_when_the_queue_is_made(
    redis_url: str, defaults: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Queue("q", url=redis_url, defaults=defaults)


def test_add_says_whether_it_created_the_job(queue: Queue) -> None:
    first = queue.add("send", {"to": "a"}, job_id="mail-1")
    again = queue.add("send", {"to": "b"}, job_id="mail-1", priority=5)
    fresh, known = queue.add_bulk(
        [{"name": "send", "job_id": "mail-2"}, {"name": "send", "job_id": "mail-1"}]
    )
    assert (first.created, again.created, fresh.created, known.created) == (
        True,
        False,
        True,
        False,
    )
    # the existing job comes back as it is, unchanged by the second call
    assert (again.data, again.priority) == ({"to": "a"}, 0)
    assert known.data == {"to": "a"}
    assert queue.get_job("mail-1").created is None  # type: ignore[union-attr]
