"""``sandboxq.testing.EagerQueue`` and ``AsyncEagerQueue``: jobs run at once,
in this process, with no Redis at all; validation and outcomes as a real
queue gives them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxq import JobFailed, Retry, Unrecoverable, handler
from sandboxq.testing import AsyncEagerJob, AsyncEagerQueue, EagerQueue
from tests.worker_harness import wait_until

# An address where nothing listens: eager mode must never connect.
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", NO_REDIS)


def test_a_job_runs_when_added_and_comes_back_finished() -> None:
    def resize(job: Any) -> dict[str, int]:
        job.update_progress(50)
        job.log("resizing")
        return {"width": job.data["width"] // 2}

    q = EagerQueue("images", {"resize": resize})
    job = q.add("resize", {"width": 640})

    assert (job.state, job.result, job.progress) == ("completed", {"width": 320}, 50)
    assert job.wait() == {"width": 320}
    assert job.logs() == ["resizing"]
    assert job.created is True
    assert q.get_job(job.id) is job
    assert q.counts()["completed"] == 1


def test_failed_attempts_are_retried_at_once_until_attempts_run_out() -> None:
    runs: list[int] = []

    def flaky(job: Any) -> str:
        runs.append(job.attempts_made)
        if job.attempts_made < 2:
            raise RuntimeError("not yet")
        return "done"

    def broken(job: Any) -> None:
        raise ValueError("bad input")

    q = EagerQueue("q", {"flaky": flaky, "broken": broken})
    assert q.add("flaky", attempts=3, backoff=600).wait() == "done"
    assert runs == [0, 1, 2]

    failed = q.add("broken", attempts=2)
    assert (failed.state, failed.attempts_made) == ("failed", 2)
    assert failed.error == "ValueError: bad input"
    assert "ValueError" in (failed.traceback or "")
    with pytest.raises(JobFailed, match="bad input"):
        failed.wait()


def test_retry_asks_unrecoverable_and_unknown_names_end_as_a_worker_ends_them() -> None:
    asked: list[int] = []

    def again(job: Any) -> str:
        asked.append(job.retries)
        if job.retries < 2:
            raise Retry(delay=60)
        return "ok"

    def give_up(job: Any) -> None:
        raise Unrecoverable("card declined")

    q = EagerQueue("q", {"again": again, "give_up": give_up})
    assert q.add("again").result == "ok"
    assert asked == [0, 1, 2]
    declined = q.add("give_up", attempts=5)
    assert (declined.state, declined.attempts_made) == ("failed", 1)
    unknown = q.add("typo")
    assert unknown.error == "no handler for job 'typo' in queue 'q'"


def test_input_is_checked_as_a_real_queue_checks_it() -> None:
    q = EagerQueue("q", {"x": lambda job: None}, defaults={"attempts": 2})
    with pytest.raises(TypeError, match="not JSON-serializable"):
        q.add("x", {"when": object()})
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        q.add("x", attempts=0)
    assert q.add("x").attempts == 2
    first = q.add("x", job_id="only-once")
    again = q.add("x", job_id="only-once")
    assert (first.created, again.created, len(q.jobs)) == (True, False, 2)


def test_handlers_registered_for_the_queue_are_found() -> None:
    @handler("eager-registered")
    def shout(job: Any) -> str:
        return str(job.data).upper()

    assert EagerQueue("eager-registered").add("shout", "hi").result == "HI"


def test_calls_that_need_redis_say_so() -> None:
    q = EagerQueue("q", {})
    with pytest.raises(RuntimeError, match="no Redis: in eager mode only add"):
        q.pause()


# -- AsyncEagerQueue: the same, for asyncio code -----------------------------------------
def test_an_async_eager_queue_runs_jobs_at_add_with_the_same_outcomes() -> None:
    def resize(job: Any) -> dict[str, int]:
        job.update_progress(50)
        job.log("resizing")
        return {"width": job.data["width"] // 2}

    def flaky(job: Any) -> str:
        if job.attempts_made < 1:
            raise RuntimeError("not yet")
        return "done"

    def give_up(job: Any) -> None:
        raise Unrecoverable("card declined")

    async def scenario() -> None:
        async with AsyncEagerQueue(
            "images", {"resize": resize, "flaky": flaky, "give_up": give_up}
        ) as q:
            # When jobs are added
            job = await q.add("resize", {"width": 640})
            retried = await q.add("flaky", attempts=2, backoff=600)
            declined = await q.add("give_up", attempts=5)
            [bulk] = await q.add_bulk([{"name": "resize", "data": {"width": 10}}])

            # Then each comes back finished, as EagerQueue returns them
            assert isinstance(job, AsyncEagerJob)
            assert (job.state, job.result, job.progress) == ("completed", {"width": 320}, 50)
            assert await job.wait() == {"width": 320}
            assert await job.refresh() is job
            assert await job.logs() == ["resizing"]
            assert (retried.result, retried.attempts_made) == ("done", 2)
            assert (declined.state, declined.attempts_made) == ("failed", 1)
            with pytest.raises(JobFailed, match="card declined"):
                await declined.wait()
            assert bulk.result == {"width": 5}
            assert await q.get_job(job.id) is job
            assert (await q.counts())["completed"] == 3
            assert (await q.add("typo")).error == "no handler for job 'typo' in queue 'images'"

    asyncio.run(scenario())


def test_an_async_handler_is_awaited_on_the_callers_event_loop() -> None:
    # Given an async handler that uses what the caller's loop owns (a queue bound to it)
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[str] = asyncio.Queue()  # bound to this loop

        async def deliver(job: Any) -> bool:
            await events.put(job.data["to"])
            return asyncio.get_running_loop() is loop

        q = AsyncEagerQueue("mail", {"deliver": deliver})
        # When a job is added from async code
        job = await q.add("deliver", {"to": "ada@example.com"})
        # Then its handler ran on this loop, to the end, before add returned
        return [job.result, events.get_nowait()]

    assert asyncio.run(scenario()) == [True, "ada@example.com"]


def test_an_async_eager_queue_checks_input_and_refuses_calls_that_need_redis() -> None:
    async def scenario() -> None:
        q = AsyncEagerQueue("q", {"x": lambda job: None}, defaults={"attempts": 2})
        with pytest.raises(TypeError, match="not JSON-serializable"):
            await q.add("x", {"when": object()})
        assert (await q.add("x")).attempts == 2
        first, again = [await q.add("x", job_id="only-once") for _ in range(2)]
        assert (first.created, again.created, len(q.jobs)) == (True, False, 2)
        with pytest.raises(RuntimeError, match="AsyncEagerQueue 'q' has no Redis"):
            await q.pause()
        with pytest.raises(RuntimeError, match="has no Redis"):
            _ = q.client

    asyncio.run(scenario())


def test_a_dedupe_window_with_a_ttl_holds_back_adds_until_it_ends() -> None:
    # Given an eager job that opened a window of 50 ms
    ran: list[Any] = []
    q = EagerQueue("eager-dedupe", {"work": lambda job: ran.append(job.data)})
    first = q.add("work", 1, dedupe={"id": "d", "ttl": 0.05})

    # When the id is added again until an add is not held back
    adds = []

    def add_again() -> bool:
        adds.append(q.add("work", len(adds) + 2, dedupe={"id": "d", "ttl": 0.05}))
        return bool(adds[-1].created)

    wait_until(add_again, 10, "the window to end")

    # Then every add within the window returned the first job, unrun, and
    # the one after it ran
    *held, fresh = adds
    assert all((job.created, job.id) == (False, first.id) for job in held)
    assert fresh.id != first.id
    assert ran == [1, fresh.data]


def test_a_dedupe_window_without_a_ttl_holds_nothing_back_in_eager_mode() -> None:
    # Given an eager job added with a dedupe id and no ttl (it has finished)
    q = EagerQueue("eager-dedupe", {"work": lambda job: job.data})
    first = q.add("work", 1, dedupe={"id": "d"})

    # When the id is added again, then it is a new job
    again = q.add("work", 2, dedupe={"id": "d", "replace": True})
    assert again.created and again.id != first.id and again.result == 2
