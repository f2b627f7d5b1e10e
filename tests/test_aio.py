"""``sandboxq.aio``: the asyncio producer and admin API on a real Redis.

It runs the operations ``Queue`` runs, so these tests check what is its own:
the calls are coroutines that never block the loop, each round trip is
bounded by the queue's timeout, waiting and events follow the stream, and
results match the blocking API's. Each test drives its own loop with
``asyncio.run``; jobs are run by a real worker or the inline runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from sandboxq import ConnectionFailed, JobCancelled, JobFailed, Queue
from sandboxq.aio import AsyncJob, AsyncQueue, AsyncQueueEvents
from sandboxq.local_redis import LocalRedis
from sandboxq.testing import run_until_empty
from tests.faults import TcpProxy, free_port
from tests.topologies import RedisClusterNodes
from tests.worker_harness import WorkerProcess

StartWorker = Callable[..., WorkerProcess]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def echo(job: Any) -> Any:
    return {"echo": job.data}


class Ticker:
    """Counts 10 ms ticks of the loop while in use: a call that blocked the
    loop would leave it near zero."""

    def __init__(self) -> None:
        self.ticks = 0

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    async def __aenter__(self) -> Ticker:
        self.task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()


def test_add_get_counts_and_admin_calls_match_the_blocking_api(
    queue: Queue, redis_url: str
) -> None:
    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            # When jobs are added and looked at through the asyncio API
            job = await q.add("resize", {"w": 1}, priority=3, attempts=2)
            later = await q.add("resize", None, delay=60)
            bulk = await q.add_bulk([{"name": "thumb", "data": n} for n in range(3)])
            assert isinstance(job, AsyncJob) and job.created is True
            assert (job.state, later.state) == ("waiting", "delayed")
            assert [b.data for b in bulk] == [0, 1, 2]
            found = await q.get_job(job.id)
            assert found is not None
            assert (found.name, found.data, found.priority, found.attempts) == (
                "resize",
                {"w": 1},
                3,
                2,
            )
            assert await q.get_job("nope") is None
            counts = await q.counts()
            assert (counts["waiting"], counts["delayed"]) == (4, 1)
            assert await q.promote(later.id, by="ops") is True
            assert await q.pause(by="ops") is True
            assert await q.is_paused() is True
            assert await q.resume(by="ops") is True
            actions = [entry["action"] for entry in await q.audit_log()]
            assert actions[:3] == ["resume", "pause", "promote"]

    run(scenario())

    # Then the blocking API sees the same queue
    assert queue.counts()["waiting"] == 5
    assert not queue.is_paused()


def test_a_known_job_id_is_not_added_twice_and_says_so(queue: Queue, redis_url: str) -> None:
    async def scenario() -> tuple[AsyncJob, AsyncJob]:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            first = await q.add("send", {"to": "a"}, job_id="mail-1")
            again = await q.add("send", {"to": "b"}, job_id="mail-1")
            return first, again

    first, again = run(scenario())
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id == "mail-1"
    assert again.data == {"to": "a"}  # the job that existed, unchanged


def test_wait_returns_the_result_and_raises_for_a_failed_job(queue: Queue, redis_url: str) -> None:
    def fail(job: Any) -> Any:
        raise ValueError("bad input")

    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            ok = await q.add("echo", 5)
            broken = await q.add("fail")
            # Both waits are on the loop while another thread runs the jobs.
            waits = asyncio.gather(
                ok.wait(timeout=20), broken.wait(timeout=20), return_exceptions=True
            )
            await asyncio.to_thread(run_until_empty, queue, {"echo": echo, "fail": fail})
            result, error = await waits
            assert result == {"echo": 5}
            assert isinstance(error, JobFailed)
            assert "ValueError: bad input" in str(error)
            assert (await ok.refresh()).state == "completed"

    run(scenario())


def test_wait_gives_up_after_its_timeout_without_blocking_the_loop(
    queue: Queue, redis_url: str
) -> None:
    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            job = await q.add("never-run")
            async with Ticker() as ticker:
                with pytest.raises(TimeoutError, match="still waiting"):
                    await job.wait(timeout=0.5)
            assert ticker.ticks >= 10  # the loop ran all along

    run(scenario())


@pytest.fixture
def proxied_redis(fault_server: LocalRedis) -> Iterator[tuple[LocalRedis, TcpProxy]]:
    """A server of the test's own (each Redis version in turn) behind a proxy."""
    assert fault_server.port is not None
    proxy = TcpProxy(fault_server.port)
    yield fault_server, proxy
    proxy.close()


@pytest.mark.timeout(30)
def test_a_stalled_redis_fails_the_call_after_the_timeout_and_the_loop_keeps_running(
    proxied_redis: tuple[LocalRedis, TcpProxy],
) -> None:
    _server, proxy = proxied_redis

    async def scenario() -> None:
        async with AsyncQueue("stalled", url=proxy.url, timeout=0.5) as q:
            await q.add("warm-up")  # connected
            proxy.stall()
            # (Without the timeout the add would wait forever on the stalled
            # proxy, and pytest-timeout would fail the test.)
            async with Ticker() as ticker:
                with pytest.raises(ConnectionFailed, match=f"cannot reach Redis at {proxy.url}"):
                    await q.add("resize", {"w": 1})
            assert ticker.ticks >= 10  # and the loop was never blocked meanwhile
            proxy.resume()
            assert (await q.counts())["waiting"] >= 1

    run(scenario())


def test_a_redis_that_is_down_is_an_error_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> None:
        async with AsyncQueue("down", url=url, timeout=1) as q:
            with pytest.raises(ConnectionFailed, match=f"cannot reach Redis at {url}"):
                await q.add("x")

    run(scenario())


def test_bad_input_raises_before_anything_is_written(queue: Queue, redis_url: str) -> None:
    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            with pytest.raises(TypeError, match="not JSON-serializable"):
                await q.add("x", {"when": object()})
            with pytest.raises(TypeError, match="add_bulk item 1 has unknown options: color"):
                await q.add_bulk([{"name": "a"}, {"name": "b", "color": "red"}])
            with pytest.raises(ValueError, match="attempts must be >= 1"):
                await q.add("x", attempts=0)

    run(scenario())
    assert sum(queue.counts().values()) == 0


def test_scripts_redis_lost_are_loaded_again(fault_server: LocalRedis) -> None:
    async def scenario() -> None:
        async with AsyncQueue("flushed", url=fault_server.url) as q:
            await q.add("x")
            await q.client.script_flush()
            again = await q.add("x")
            assert again.created is True
            assert (await q.counts())["waiting"] == 2

    run(scenario())


def test_events_can_be_pinned_before_the_add_and_filtered_by_job(
    queue: Queue, redis_url: str
) -> None:
    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            other = await q.add("echo", "noise")
            # Given a follower whose starting point is fixed before the add
            events = await AsyncQueueEvents(q).listen(stop_after=1, block_seconds=0.2)
            job = await q.add("echo", 7)
            await asyncio.to_thread(run_until_empty, queue, {"echo": echo})
            assert other.id != job.id
            filtered = await AsyncQueueEvents(q).listen(
                since="0", job_id=job.id, stop_after=0.3, block_seconds=0.1
            )
            only_job = [(event, job_id) async for event, job_id, _payload in filtered]
            assert {job_id for _event, job_id in only_job} == {job.id}
            return [(event, payload) async for event, job_id, payload in events if job_id == job.id]

    seen = run(scenario())
    # Then it saw the job from its "added" on, with decoded payloads
    assert seen == [
        ("added", {"state": "waiting"}),
        ("active", {}),
        ("completed", {"result": {"echo": 7}}),
    ]


def test_flows_and_defaults_work_as_in_the_blocking_api(queue: Queue, redis_url: str) -> None:
    async def scenario() -> None:
        async with AsyncQueue(
            queue.name, url=redis_url, defaults={"attempts": 3, "priority": 2}
        ) as q:
            flow = await q.add_flow({"name": "report"}, [{"name": "part", "data": 1}])
            parent = await q.get_job(flow.job.id)
            child = await q.get_job(flow.children[0].job.id)
            assert parent is not None and child is not None
            assert (parent.state, child.state) == ("waiting-children", "waiting")
            assert (child.attempts, child.priority) == (3, 2)
            plain = await q.add("x", attempts=1)
            assert (plain.attempts, plain.priority) == (1, 2)

    run(scenario())


def test_a_queue_made_at_import_time_serves_each_event_loop_on_the_redis_named_then(
    monkeypatch: pytest.MonkeyPatch, queue: Queue, redis_url: str
) -> None:
    # Given an app's queue, made at import time with no URL, while
    # SANDBOXQ_REDIS_URL names a Redis that is not there
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    app_queue = AsyncQueue(queue.name)

    async def request(n: int) -> str:
        return (await app_queue.add("x", n)).id

    # When tests point SANDBOXQ_REDIS_URL at their Redis, then each runs the
    # app on an event loop of its own (as pytest's asyncio plugins do)
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", redis_url)
    first = run(request(1))
    second = run(request(2))

    # Then both loops reached that Redis, each through a client of its own
    assert [queue.get_job(i).data for i in (first, second)] == [1, 2]  # type: ignore[union-attr]
    assert app_queue.url == redis_url

    async def close_and_use_again() -> int:
        await app_queue.close()  # (an app's shutdown)
        return (await app_queue.counts())["waiting"]

    # And one closed is made anew on its next use
    assert run(close_and_use_again()) == 2


def test_a_queue_outside_an_event_loop_has_no_client_to_give() -> None:
    with pytest.raises(RuntimeError, match="makes a client per event loop"):
        _ = AsyncQueue("q", url="redis://127.0.0.1:1/0").client


def test_a_malformed_url_is_refused_when_the_queue_is_made() -> None:
    with pytest.raises(ValueError, match="bad Redis URL 'localhost:6379'"):
        AsyncQueue("q", url="localhost:6379")


def test_a_shared_asyncio_client_is_left_open(queue: Queue, redis_url: str) -> None:
    async def scenario() -> None:
        shared = redis.asyncio.Redis.from_url(redis_url)
        async with AsyncQueue(queue.name, connection=shared) as q:
            await q.add("x")
        assert await shared.ping()
        await shared.aclose()

    run(scenario())


@pytest.mark.timeout(120)
def test_a_real_worker_runs_jobs_added_from_asyncio(
    start_worker: StartWorker, queue: Queue, redis_url: str
) -> None:
    start_worker(procs=2)

    async def scenario() -> list[Any]:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            jobs = [await q.add("async_echo", n) for n in range(4)]
            return list(await asyncio.gather(*(job.wait(timeout=60) for job in jobs)))

    results = run(scenario())
    assert [r["echo"] for r in results] == [0, 1, 2, 3]


def test_asyncio_queue_on_a_redis_cluster(cluster: RedisClusterNodes) -> None:
    async def scenario() -> None:
        async with AsyncQueue("aio-cluster", url=cluster.url) as q:
            job = await q.add("x", {"n": 1})
            assert job.created is True
            assert (await q.counts())["waiting"] >= 1
            found = await q.get_job(job.id)
            assert found is not None and found.data == {"n": 1}
            await q.obliterate(force=True)

    run(scenario())


def test_a_job_is_cancelled_from_asyncio_and_its_waiter_told(queue: Queue, redis_url: str) -> None:
    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            job = await q.add("resize", {"w": 1}, delay=60)
            waiting = asyncio.create_task(job.wait(timeout=20))
            assert await job.cancel(reason="customer left", by="alice") == "cancelled"
            with pytest.raises(JobCancelled, match="cancelled by alice: customer left"):
                await waiting
            assert await q.cancel(job.id) is None  # nothing left to cancel
            assert (await q.counts())["cancelled"] == 1
            assert (await q.audit_log())[0]["action"] == "cancel: customer left"

    run(scenario())


def test_a_flow_parent_is_cancelled_from_asyncio_with_or_without_its_children(
    queue: Queue, redis_url: str
) -> None:
    async def scenario() -> None:
        async with AsyncQueue(queue.name, url=redis_url) as q:
            # Given two flows, each a parent with a waiting child
            kept, cascaded = [
                await q.add_flow(parent={"name": "parent"}, children=[{"name": "child"}])
                for _ in range(2)
            ]

            # When one parent is cancelled keeping its child, the other not
            assert await q.cancel(kept.job.id, keep_children=True) == "cancelled"
            assert await cascaded.job.cancel(reason="gone") == "cancelled"

            # Then the first child waits on, the second is cancelled
            states = [
                (await q.get_job(flow.children[0].job.id)).state  # type: ignore[union-attr]
                for flow in (kept, cascaded)
            ]
            assert states == ["waiting", "cancelled"]

    run(scenario())
