"""Deduplication windows and debounce (``add(..., dedupe=...)``): the rules
of a window, replacing a waiting or delayed job, the event and the counter,
what a stored key that is not ours does, validation, and a debounce on a
real worker. Against the real redis-server of the session."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sandboxq
from sandboxq import Dedupe, JobFailed, Queue
from sandboxq.aio import AsyncQueue
from sandboxq.events import decode_payload
from sandboxq.handlers import JobContext
from sandboxq.options import MAX_DEDUPE_ID_BYTES, JobOptions
from sandboxq.scripts import now_ms
from sandboxq.testing import run_until_empty
from tests.guide_examples import run_guide_examples
from tests.test_lua_scripts import fetch_ids
from tests.test_worker_metrics import free_port, samples, value
from tests.worker_harness import WorkerProcess, wait_for_job, wait_until


# -- helpers ------------------------------------------------------------------
def ok(ctx: JobContext) -> Any:
    return ctx.data


def boom(ctx: JobContext) -> Any:
    raise ValueError("boom")


def deduplicated_events(q: Queue) -> list[tuple[str, dict[str, Any]]]:
    """The ``deduplicated`` events in the queue's stream: (job id, payload)."""
    found = []
    for _entry_id, raw in q.client.xrange(q.keys.events):
        event, job_id, payload = decode_payload(raw)
        if event == "deduplicated":
            found.append((job_id, payload))
    return found


def deduplicated_count(q: Queue) -> int:
    return int(q.client.get(q.keys.deduplicated) or 0)


def wait_score_of(q: Queue, job_id: str) -> float | None:
    return q.client.zscore(q.keys.wait, job_id)


# -- a window without a ttl ---------------------------------------------------
def test_an_add_while_the_window_is_open_returns_the_job_that_holds_it(queue: Queue) -> None:
    # Given a job added with a dedupe id
    first = queue.add("index", {"doc": 42, "v": 1}, dedupe={"id": "doc-42"})

    # When the same dedupe id is added again, with other data and options
    again = queue.add("index", {"doc": 42, "v": 2}, dedupe={"id": "doc-42"}, priority=3)

    # Then the first job comes back, unchanged, and nothing else was written
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id
    assert (again.data, again.priority, again.dedupe_id) == ({"doc": 42, "v": 1}, 0, "doc-42")
    assert queue.counts()["waiting"] == 1
    # and the suppressed add has its event, and is counted
    assert deduplicated_events(queue) == [(first.id, {"dedupe_id": "doc-42", "replaced": 0})]
    assert deduplicated_count(queue) == 1


def test_other_dedupe_ids_and_plain_adds_are_not_held_back(queue: Queue) -> None:
    # Given a job holding the window of one id
    queue.add("index", 1, dedupe={"id": "doc-1"})

    # When another id, and a job with no dedupe, are added
    other = queue.add("index", 2, dedupe={"id": "doc-2"})
    plain = queue.add("index", 3)

    # Then both are new jobs
    assert (other.created, plain.created) == (True, True)
    assert queue.counts()["waiting"] == 3
    assert deduplicated_count(queue) == 0


def complete(q: Queue, job_id: str) -> None:
    assert run_until_empty(q, {"index": ok})["completed"] >= 1
    assert q.get_job(job_id).state == "completed"  # type: ignore[union-attr]


def fail(q: Queue, job_id: str) -> None:
    assert run_until_empty(q, {"index": boom})["failed"] == 1
    assert q.get_job(job_id).state == "failed"  # type: ignore[union-attr]


def cancel(q: Queue, job_id: str) -> None:
    assert q.cancel(job_id) == "cancelled"


def remove(q: Queue, job_id: str) -> None:
    assert q.remove(job_id)


def drain(q: Queue, job_id: str) -> None:
    assert q.drain() == 1


def clean(q: Queue, job_id: str) -> None:
    assert q.clean("waiting", keep=0) == 1


@pytest.mark.parametrize("end", [complete, fail, cancel, remove, drain, clean])
def test_a_window_without_a_ttl_closes_when_its_job_ends_and_leaves_no_key(
    queue: Queue, end: Callable[[Queue, str], None]
) -> None:
    # Given a job holding a window with no ttl
    first = queue.add("index", 1, dedupe={"id": "doc-1"})
    assert queue.client.get(queue.keys.dedupe("doc-1")) == first.id.encode()

    # When the job completes, fails, is cancelled or is deleted
    end(queue, first.id)

    # Then its window's key is gone, and the next add makes a new job
    assert not queue.client.exists(queue.keys.dedupe("doc-1"))
    second = queue.add("index", 2, dedupe={"id": "doc-1"})
    assert second.created and second.id != first.id
    assert queue.client.get(queue.keys.dedupe("doc-1")) == second.id.encode()


def test_an_active_job_holds_its_window(queue: Queue) -> None:
    # Given a job holding a window, taken by a worker
    first = queue.add("index", 1, dedupe={"id": "doc-1"})
    assert fetch_ids(queue, now_ms()) == [first.id]

    # When the id is added again, even with replace
    again = queue.add("index", 2, dedupe={"id": "doc-1", "replace": True})

    # Then the running job comes back untouched
    assert (again.created, again.id, again.state, again.data) == (False, first.id, "active", 1)
    assert deduplicated_events(queue) == [(first.id, {"dedupe_id": "doc-1", "replaced": 0})]


def test_a_key_left_naming_a_finished_or_missing_job_is_no_window(queue: Queue) -> None:
    # Given a completed job, and windows with no ttl that name it and a job
    # that does not exist (as another tool, or an older version, left them)
    done = queue.add("index", 1)
    complete(queue, done.id)
    queue.client.set(queue.keys.dedupe("doc-1"), done.id)
    queue.client.set(queue.keys.dedupe("doc-2"), "no-such-job")

    # When both ids are added
    first = queue.add("index", 2, dedupe={"id": "doc-1"})
    second = queue.add("index", 3, dedupe={"id": "doc-2"})

    # Then each makes a new job, which now holds the window
    assert first.created and second.created
    assert queue.client.get(queue.keys.dedupe("doc-1")) == first.id.encode()
    assert queue.client.get(queue.keys.dedupe("doc-2")) == second.id.encode()


def test_a_custom_job_id_that_exists_comes_first(queue: Queue) -> None:
    # Given a job with a custom id, and another holding a dedupe window
    named = queue.add("index", 1, job_id="order-1")
    holder = queue.add("index", 2, dedupe={"id": "doc-1"})

    # When both are given, with the existing job id, then with a new one
    by_id = queue.add("index", 3, job_id="order-1", dedupe={"id": "doc-1"})
    by_window = queue.add("index", 4, job_id="order-2", dedupe={"id": "doc-1"})

    # Then the existing job id wins (no dedupe event for it), then the window
    assert (by_id.id, by_id.created) == (named.id, False)
    assert (by_window.id, by_window.created) == (holder.id, False)
    assert [job_id for job_id, _ in deduplicated_events(queue)] == [holder.id]
    assert queue.get_job("order-2") is None


# -- ttl and extend -----------------------------------------------------------
def test_a_window_with_a_ttl_outlasts_its_job_until_it_expires(queue: Queue) -> None:
    # Given a job that opened a window of a minute, and completed
    first = queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60})
    complete(queue, first.id)
    assert 0 < queue.client.pttl(queue.keys.dedupe("doc-1")) <= 60_000

    # When the id is added again
    again = queue.add("index", 2, dedupe={"id": "doc-1", "ttl": 60})

    # Then the window still holds: the completed job comes back
    assert (again.created, again.id, again.state) == (False, first.id, "completed")

    # When the window expires (its key's ttl ends)
    queue.client.pexpire(queue.keys.dedupe("doc-1"), 1)
    wait_until(lambda: not queue.client.exists(queue.keys.dedupe("doc-1")), 5, "expiry")

    # Then the next add makes a new job
    third = queue.add("index", 3, dedupe={"id": "doc-1", "ttl": 60})
    assert third.created and third.id != first.id


def test_a_window_with_a_ttl_survives_retention_removing_its_job(queue: Queue) -> None:
    # Given a job with a ttl window that retention deletes as it completes
    first = queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60}, keep_completed=False)
    run_until_empty(queue, {"index": ok})
    assert queue.get_job(first.id) is None

    # When the id is added again
    again = queue.add("index", 2, dedupe={"id": "doc-1", "ttl": 60})

    # Then the add is still held back (the throttle holds), naming the gone job
    assert (again.created, again.id) == (False, first.id)
    assert queue.counts()["waiting"] == 0


def test_a_window_ends_at_its_ttl_even_while_its_job_waits(queue: Queue) -> None:
    # Given a waiting job whose window has expired
    first = queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60})
    queue.client.pexpire(queue.keys.dedupe("doc-1"), 1)
    wait_until(lambda: not queue.client.exists(queue.keys.dedupe("doc-1")), 5, "expiry")

    # When the id is added again
    again = queue.add("index", 2, dedupe={"id": "doc-1", "ttl": 60})

    # Then it is a new job, and the window is its own
    assert again.created and again.id != first.id
    assert queue.counts()["waiting"] == 2
    assert queue.client.get(queue.keys.dedupe("doc-1")) == again.id.encode()


@pytest.mark.parametrize("extend", [True, False])
def test_extend_starts_the_ttl_again_at_each_deduplicated_add(queue: Queue, extend: bool) -> None:
    # Given a window of a minute that has a second left
    queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60})
    queue.client.pexpire(queue.keys.dedupe("doc-1"), 1_000)

    # When the id is added again, with extend or without
    queue.add("index", 2, dedupe={"id": "doc-1", "ttl": 60, "extend": extend})

    # Then with extend the window has a minute again; without, it ends as before
    left = queue.client.pttl(queue.keys.dedupe("doc-1"))
    assert (left > 1_000) == extend
    assert left <= 60_000


def test_a_finished_job_does_not_release_a_window_with_a_ttl(queue: Queue) -> None:
    # Given a job with a ttl window, which fails
    first = queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60})
    fail(queue, first.id)

    # Then the window's key stays, with its ttl
    assert queue.client.get(queue.keys.dedupe("doc-1")) == first.id.encode()
    assert queue.client.pttl(queue.keys.dedupe("doc-1")) > 0


# -- replace --------------------------------------------------------------------
def test_replace_gives_a_waiting_job_the_new_data_and_options(queue: Queue) -> None:
    # Given a waiting job in a group, with options of its own
    first = queue.add(
        "index",
        {"v": 1},
        dedupe={"id": "doc-1", "replace": True},
        priority=5,
        group="tenant-a",
        attempts=3,
        timeout=10,
        backoff=2,
    )

    # When the id is added again with replace, other data and other options
    again = queue.add("reindex", {"v": 2}, dedupe={"id": "doc-1", "replace": True}, priority=1)

    # Then the same job has the new name, data and options, and the old
    # options the new add does not set are gone
    assert (again.created, again.id) == (False, first.id)
    job = queue.get_job(first.id)
    assert job is not None
    assert (job.name, job.data, job.priority, job.state) == ("reindex", {"v": 2}, 1, "waiting")
    assert (job.attempts, job.timeout, job.created_at) == (1, None, first.created_at)
    assert "group" not in job.fields and "backoff" not in job.fields
    assert job.dedupe_id == "doc-1"
    # and it waits once, in the queue's own set now, not in its old group's
    assert wait_score_of(queue, first.id) is not None
    assert queue.client.zscore(queue.keys.of("gwait", "tenant-a"), first.id) is None
    assert queue.counts()["waiting"] == 1
    assert deduplicated_events(queue) == [(first.id, {"dedupe_id": "doc-1", "replaced": 1})]
    assert deduplicated_count(queue) == 1
    # and it runs once, with the new data
    ran: list[Any] = []
    run_until_empty(queue, {"reindex": lambda ctx: ran.append(ctx.data)})
    assert ran == [{"v": 2}]


def test_replace_moves_a_job_into_its_new_group_and_priority(queue: Queue) -> None:
    # Given a waiting job of priority 9 with no group, and a job of group g
    first = queue.add("index", "old", dedupe={"id": "doc-1", "replace": True}, priority=9)
    queue.add("index", "other", priority=2, group="g")

    # When it is replaced with group g and priority 1
    queue.add("index", "new", dedupe={"id": "doc-1", "replace": True}, priority=1, group="g")

    # Then it waits in its group's set only, at priority 1, and runs first
    assert wait_score_of(queue, first.id) is None
    score = queue.client.zscore(queue.keys.of("gwait", "g"), first.id)
    assert score is not None and score // 2**32 == 1
    assert queue.counts()["waiting"] == 2
    ran: list[Any] = []
    run_until_empty(queue, {"index": lambda ctx: ran.append(ctx.data)}, batch=1)
    assert ran == ["new", "other"]


def test_replace_under_priority_aging_scores_the_job_as_new(queue: Queue) -> None:
    # Given priority aging, and a waiting job
    queue.set_priority_aging(60)
    first = queue.add("index", 1, dedupe={"id": "doc-1", "replace": True}, priority=4)
    before = now_ms()

    # When it is replaced with priority 2
    queue.add("index", 2, dedupe={"id": "doc-1", "replace": True}, priority=2)
    after = now_ms()

    # Then its score is that of a job of priority 2 that started waiting now
    score = wait_score_of(queue, first.id)
    assert score is not None
    assert 2 * 60_000 + before <= score <= 2 * 60_000 + after


def test_replace_starts_a_delayed_jobs_delay_again(queue: Queue) -> None:
    # Given a job delayed by a minute
    first = queue.add("index", 1, dedupe={"id": "doc-1", "replace": True}, delay=60)

    # When it is replaced with a delay of two minutes
    before = now_ms()
    queue.add("index", 2, dedupe={"id": "doc-1", "replace": True}, delay=120)
    after = now_ms()

    # Then it is due two minutes from the replacing add, with the new data
    due = queue.client.zscore(queue.keys.delayed, first.id)
    assert due is not None and before + 120_000 <= due <= after + 120_000
    job = queue.get_job(first.id)
    assert (job.state, job.data) == ("delayed", 2)  # type: ignore[union-attr]
    assert queue.counts()["delayed"] == 1

    # When it is replaced with no delay
    queue.add("index", 3, dedupe={"id": "doc-1", "replace": True})

    # Then it waits, and is no longer delayed
    assert queue.client.zscore(queue.keys.delayed, first.id) is None
    assert wait_score_of(queue, first.id) is not None
    assert queue.get_job(first.id).state == "waiting"  # type: ignore[union-attr]


def test_replace_of_a_finished_job_within_a_ttl_window_only_deduplicates(queue: Queue) -> None:
    # Given a completed job whose ttl window is open
    first = queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60, "replace": True})
    complete(queue, first.id)

    # When the id is added again with replace
    again = queue.add("index", 2, dedupe={"id": "doc-1", "ttl": 60, "replace": True})

    # Then the completed job comes back as it was
    assert (again.created, again.state, again.data) == (False, "completed", 1)
    assert deduplicated_events(queue) == [(first.id, {"dedupe_id": "doc-1", "replaced": 0})]


# -- batches and the asyncio API -----------------------------------------------
def test_a_batch_deduplicates_within_itself(queue: Queue) -> None:
    # When one batch holds the same dedupe id twice, the second with replace
    first, second, other = queue.add_bulk(
        [
            {"name": "index", "data": 1, "dedupe": {"id": "doc-1"}},
            {"name": "index", "data": 2, "dedupe": {"id": "doc-1", "replace": True}},
            {"name": "index", "data": 3, "dedupe": Dedupe("doc-2")},
        ]
    )

    # Then the second deduplicates against the first, and replaced its data
    assert (first.created, second.created, other.created) == (True, False, True)
    assert second.id == first.id and second.data == 2
    assert queue.counts()["waiting"] == 2


def test_the_asyncio_queue_deduplicates_the_same_way(queue: Queue, redis_url: str) -> None:
    async def scenario() -> tuple[Any, Any]:
        aq = AsyncQueue(queue.name, url=redis_url)
        try:
            first = await aq.add("index", 1, dedupe={"id": "doc-1"})
            again = await aq.add("index", 2, dedupe={"id": "doc-1", "replace": True})
            return first, again
        finally:
            await aq.close()

    # When the same dedupe id is added twice through AsyncQueue
    first, again = asyncio.run(scenario())

    # Then the second add replaced the first job's data
    assert (first.created, again.created, again.id, again.data) == (True, False, first.id, 2)


# -- what is stored ------------------------------------------------------------
def test_a_dedupe_key_that_holds_no_string_is_refused_before_anything_is_written(
    queue: Queue,
) -> None:
    # Given a dedupe key another tool made a list
    queue.client.rpush(queue.keys.dedupe("doc-2"), "x")

    # When a batch whose second job uses that id is added
    with pytest.raises(Exception, match=r"the dedupe key sq:\{.*\}:dedupe:doc-2 holds no job id"):
        queue.add_bulk(
            [
                {"name": "index", "data": 1, "dedupe": {"id": "doc-1"}},
                {"name": "index", "data": 2, "dedupe": {"id": "doc-2"}},
            ]
        )

    # Then nothing of the batch was written
    assert sum(queue.counts().values()) == 0
    assert not queue.client.exists(queue.keys.dedupe("doc-1"))


def test_a_counter_that_holds_no_integer_starts_again(queue: Queue) -> None:
    # Given a counter of deduplicated adds that is not a number
    queue.client.set(queue.keys.deduplicated, "lots")
    queue.add("index", 1, dedupe={"id": "doc-1"})

    # When an add is deduplicated
    again = queue.add("index", 2, dedupe={"id": "doc-1"})

    # Then the add works and the counter starts again
    assert not again.created
    assert deduplicated_count(queue) == 1


def test_obliterate_removes_windows_and_the_counter(queue: Queue) -> None:
    # Given windows with and without a ttl, and a deduplicated add
    queue.add("index", 1, dedupe={"id": "doc-1", "ttl": 60})
    queue.add("index", 2, dedupe={"id": "doc-2"})
    queue.add("index", 3, dedupe={"id": "doc-2"})

    # When the queue is obliterated
    queue.obliterate()

    # Then no key of it is left
    assert queue.client.keys(f"{queue.keys.prefix}*") == []


# -- validation ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("doc-1", TypeError, "dedupe must be a dict"),
        ({}, ValueError, "dedupe needs an 'id'"),
        ({"id": ""}, ValueError, "dedupe id must not be empty"),
        ({"id": None}, TypeError, "dedupe id must be a str"),
        ({"id": True}, TypeError, "dedupe id must be a str"),
        ({"id": "a{b}"}, ValueError, "must not contain"),
        ({"id": "x" * (MAX_DEDUPE_ID_BYTES + 1)}, ValueError, "at most 1024 bytes"),
        ({"id": "d", "window": 5}, ValueError, "unknown keys 'window'"),
        ({"id": "d", "ttl": 0}, ValueError, "dedupe ttl must be at least"),
        ({"id": "d", "ttl": -1}, ValueError, "dedupe ttl must be >= 0"),
        ({"id": "d", "ttl": math.nan}, ValueError, "dedupe ttl must be a number"),
        ({"id": "d", "ttl": math.inf}, ValueError, "dedupe ttl must be a finite"),
        ({"id": "d", "ttl": "5"}, TypeError, "dedupe ttl must be a number"),
        ({"id": "d", "extend": True}, ValueError, "extend restarts the ttl: it needs a ttl"),
        ({"id": "d", "ttl": 5, "extend": 1}, TypeError, "dedupe extend must be True or False"),
        ({"id": "d", "replace": "yes"}, TypeError, "dedupe replace must be True or False"),
    ],
)
def test_a_bad_dedupe_is_refused_before_anything_is_written(
    queue: Queue, spec: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        queue.add("index", 1, dedupe=spec)
    with pytest.raises(error, match=message):
        queue.add_bulk([{"name": "index"}, {"name": "index", "dedupe": spec}])
    assert sum(queue.counts().values()) == 0


def test_a_dedupe_parses_from_a_dict_or_itself() -> None:
    parsed = Dedupe.parse({"id": 42, "ttl": 5, "extend": True})
    assert parsed == Dedupe("42", 5.0, True, False)
    assert Dedupe.parse(parsed) == parsed
    with pytest.raises(ValueError, match="needs a ttl"):
        Dedupe.parse(Dedupe("d", extend=True))


def test_flow_nodes_and_schedules_take_no_dedupe(queue: Queue) -> None:
    with pytest.raises(TypeError, match="flow nodes take no dedupe"):
        queue.add_flow({"name": "p"}, [{"name": "c", "dedupe": {"id": "d"}}])
    with pytest.raises(TypeError, match="dedupe"):
        queue.schedule("tick", every=60, name="index", dedupe={"id": "d"})
    assert sum(queue.counts().values()) == 0


# -- on a real worker -----------------------------------------------------------
def test_a_debounce_collapses_many_adds_into_one_run_with_the_last_data(
    queue: Queue, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # Given a worker serving the queue, with its metrics on
    port = free_port()
    start_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", procs=2)
    runs = tmp_path / "runs"

    # When 50 adds of one dedupe id come over 2 s, each with replace and a
    # delay longer than the whole burst (a trailing-edge debounce)
    added = []
    for n in range(50):
        added.append(
            queue.add(
                "record_data",
                {"runs": str(runs), "n": n},
                dedupe={"id": "doc-42", "replace": True},
                delay=3.0,
            )
        )
        time.sleep(2.0 / 50)  # the burst's pace, not a wait for anything

    # Then all were one job, which ran once, with the last data
    assert [job.created for job in added] == [True] + [False] * 49
    assert {job.id for job in added} == {added[0].id}
    wait_for_job(queue, added[0].id, ("completed",), timeout=30)
    lines = runs.read_text().splitlines()
    assert len(lines) == 1
    job_id, data = lines[0].split(" ", 1)
    assert (job_id, json.loads(data)["n"]) == (added[0].id, 49)
    assert queue.counts()["completed"] == 1 and sum(queue.counts().values()) == 1
    # and its window closed with it; the worker counts the 49 adds held back
    assert not queue.client.exists(queue.keys.dedupe("doc-42"))
    assert value(samples(port), "sandboxq_jobs_deduplicated_total", queue=queue.name) == 49


def test_a_job_that_fails_on_a_worker_releases_its_window(
    queue: Queue, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # Given a worker, and a job holding a window that will fail
    start_worker(procs=1)
    job = queue.add("raise_error", 1, dedupe={"id": "doc-1"})

    # When it fails for good
    with pytest.raises(JobFailed):
        job.wait(timeout=30)

    # Then its window is closed: the next add is a new job
    again = queue.add("ok", 2, dedupe={"id": "doc-1"})
    assert again.created and again.id != job.id


@pytest.mark.parametrize("junk", [b"\xff", b"1e3", b"", b"-"])
def test_junk_in_the_held_jobs_fields_spares_a_replace(queue: Queue, junk: bytes) -> None:
    # Given a waiting job holding a window, whose creation time and dedupe id
    # fields hold junk
    first = queue.add("index", 1, dedupe={"id": "doc-1", "replace": True})
    queue.client.hset(queue.keys.job(first.id), mapping={"created_at": junk, "dedupe_id": junk})

    # When the id is added again with replace
    before = now_ms()
    again = queue.add("index", 2, dedupe={"id": "doc-1", "replace": True})

    # Then the job is replaced, with a creation time it can use
    assert (again.created, again.id, again.data, again.dedupe_id) == (False, first.id, 2, "doc-1")
    assert again.created_at is not None and again.created_at * 1000 >= before


def test_a_replace_clears_every_field_options_may_set() -> None:
    # Given every field some job's options write
    every = JobOptions.build(
        group="g",
        manual_retry_only=True,
        backoff=1,
        timeout=1,
        keep_completed={"count": 1, "age": 1},
        keep_failed={"count": 1, "age": 1},
        dedupe={"id": "d"},
    ).hash_fields()
    written = set(every[::2])

    # Then the HDEL of a replacing add (add_jobs.lua) names exactly those
    source = (Path(sandboxq.__file__).parent / "lua" / "include" / "add_jobs.lua").read_text()
    hdel = re.search(r"'HDEL', job_key, ([^)]*)\)", source)
    assert hdel is not None
    assert set(re.findall(r"'([a-z_]+)'", hdel.group(1))) == written


# -- the guide ------------------------------------------------------------------
def test_the_guides_examples_run(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    # Given the guide's examples, on a queue of their own on the test Redis
    # When each runs in turn, then none fails (each checks what it shows)
    run_guide_examples("dedupe.md", 'Queue("search")', 'Queue("{name}")', monkeypatch, redis_url)
