"""Each Lua transition, driven directly through ``sandboxq.scripts.Scripts``
with explicit timestamps, against the real redis-server of the session.

Time is whatever the test passes: ``NOW`` is an arbitrary millisecond clock.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

import sandboxq
from sandboxq import Queue, Retention, UnknownDependency
from sandboxq.fast import decode_fetched, decode_job_mapping
from sandboxq.options import (
    DEFAULT_KEEP_COMPLETED,
    MAX_AGING_SECONDS,
    MAX_CONCURRENCY,
    MAX_RATE_LIMIT_JOBS,
    MAX_SECONDS,
    ms,
)
from sandboxq.payload import with_json_decoded
from sandboxq.rows import Dependency, JobRow
from sandboxq.scripts import Scripts
from tests.conftest import fresh_queue

NOW = 1_000_000
LEASE = 30_000
TOKEN = "worker-a"
OTHER = "worker-b"


# -- helpers ------------------------------------------------------------------
def spec(
    job_id: str = "",
    *,
    priority: int = 0,
    delay_ms: int = 0,
    name: str = "work",
    data: Any = None,
    **fields: Any,
) -> JobRow:
    """One job as the add script takes it; ``fields``: more job-hash fields."""
    pairs: list[Any] = []
    for field, value in fields.items():
        pairs += [field, value]
    return JobRow(job_id, priority, delay_ms, name, orjson.dumps(data), pairs)


def add(q: Queue, *jobs: JobRow, now: int = NOW) -> list[str]:
    return [job_id for job_id, _created in q.scripts.add(q.keys, now, jobs or [spec()])]


def fetch(
    q: Queue, now: int, count: int = 100, token: str = TOKEN, lease_ms: int = LEASE
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    rows, next_due, _limited, _has_limits, problem = q.scripts.fetch(
        q.keys, now, count, token, lease_ms
    )
    assert problem == b""
    return [(i, with_json_decoded(f)) for i, f in decode_fetched(rows)], next_due


def fetch_ids(q: Queue, now: int, count: int = 100, token: str = TOKEN) -> list[str]:
    return [job_id for job_id, _fields in fetch(q, now, count, token)[0]]


def finish(q: Queue, now: int, *outcomes: list[Any], token: str = TOKEN) -> list[str]:
    return [s.decode() for s in q.scripts.finish(q.keys, now, token, outcomes)]


def outcome(
    job_id: str,
    kind: str,
    value: Any = None,
    traceback: str = "",
    delay_ms: int = 0,
    lease: int | str = "",
):
    if kind == "completed":
        value = orjson.dumps(value).decode()
    return [job_id, kind, value or "", traceback, delay_ms, lease]


def fields(q: Queue, job_id: str) -> dict[str, Any]:
    return with_json_decoded(decode_job_mapping(q.client.hgetall(q.keys.job(job_id))))


def members(q: Queue, key: str) -> list[tuple[str, float]]:
    return [(m.decode(), s) for m, s in q.client.zrange(key, 0, -1, withscores=True)]


def ids(q: Queue, key: str) -> list[str]:
    return [m.decode() for m in q.client.zrange(key, 0, -1)]


def score(q: Queue, key: str, job_id: str) -> float | None:
    return q.client.zscore(key, job_id)


def events(q: Queue, job_id: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """The queue's event stream as (event, other fields), optionally for one job."""
    out = []
    for _entry, raw in q.client.xrange(q.keys.events):
        entry = {k.decode(): v.decode() for k, v in raw.items()}
        event, jid = entry.pop("event"), entry.pop("job_id")
        if job_id is None or jid == job_id:
            out.append((event, entry))
    return out


def stream(q: Queue) -> list[tuple[str, str]]:
    """The queue's event stream as (event, job id), in order."""
    return [
        (raw[b"event"].decode(), raw[b"job_id"].decode())
        for _, raw in q.client.xrange(q.keys.events)
    ]


def event_names(q: Queue, job_id: str | None = None) -> list[str]:
    return [event for event, _ in events(q, job_id)]


def queue_keys(client: redis.Redis, q: Queue) -> set[bytes]:
    return set(client.keys(f"sq:{{{q.name}}}:*"))


def snapshot(q: Queue, job_id: str) -> dict[bytes, bytes]:
    return q.client.hgetall(q.keys.job(job_id))


# -- add ----------------------------------------------------------------------
def test_add_without_delay_writes_the_hash_and_puts_the_job_in_wait(queue: Queue) -> None:
    # Given an empty queue
    # When a job is added with no delay
    created = queue.scripts.add(queue.keys, NOW, [spec(priority=0, data={"n": 1}, attempts=3)])

    # Then it gets a generated id, sits in wait, and its hash holds the fields
    assert created == [("1", True)]
    assert ids(queue, queue.keys.wait) == ["1"]
    assert queue.client.zcard(queue.keys.delayed) == 0
    job = fields(queue, "1")
    assert job["state"] == "waiting"
    assert job["name"] == "work"
    assert job["data"] == {"n": 1}
    assert job["created_at"] == NOW / 1000
    assert job["attempts"] == 3
    # and the counts that start at 0 are not written: a missing count reads as 0
    assert "attempts_made" not in job and "stalls" not in job
    added = queue.get_job("1")
    assert (added.attempts_made, added.stalls) == (0, 0)
    # and a blocked worker is woken, and an event records it
    assert queue.client.zcard(queue.keys.marker) == 1
    assert events(queue) == [("added", {"state": "waiting"})]


def test_add_with_delay_puts_the_job_in_delayed_due_at_now_plus_delay(queue: Queue) -> None:
    # Given an empty queue
    # When a job is added with a delay of 5 s
    [job_id] = add(queue, spec(delay_ms=5_000))

    # Then it is delayed, due at NOW + 5000, and not waiting
    assert members(queue, queue.keys.delayed) == [(job_id, NOW + 5_000)]
    assert queue.client.zcard(queue.keys.wait) == 0
    assert fields(queue, job_id)["state"] == "delayed"
    assert events(queue) == [
        ("added", {"state": "delayed", "delay_ms": "5000"}),
        ("delayed", {"delay_ms": "5000"}),
    ]


def test_add_generates_increasing_ids(queue: Queue) -> None:
    # Given / When: three jobs added in three calls
    first = add(queue)
    second = add(queue)
    third = add(queue)

    # Then the generated ids count up from 1
    assert first + second + third == ["1", "2", "3"]


def test_adding_a_custom_id_twice_returns_created_false_and_changes_nothing(
    queue: Queue,
) -> None:
    # Given a job with a custom id
    assert queue.scripts.add(queue.keys, NOW, [spec("order-1", data="first")]) == [
        ("order-1", True)
    ]
    before_hash = snapshot(queue, "order-1")
    before_keys = {k: queue.client.type(k) for k in queue_keys(queue.client, queue)}
    before_seq = queue.client.get(queue.keys.seq)
    before_events = queue.client.xlen(queue.keys.events)

    # When the same id is added again, with other data, priority and a delay
    again = queue.scripts.add(
        queue.keys, NOW + 10, [spec("order-1", data="second", priority=-5, delay_ms=100)]
    )

    # Then it reports the existing job and nothing changed
    assert again == [("order-1", False)]
    assert snapshot(queue, "order-1") == before_hash
    assert fields(queue, "order-1")["data"] == "first"
    assert ids(queue, queue.keys.wait) == ["order-1"]
    assert queue.client.zcard(queue.keys.delayed) == 0
    assert queue.client.get(queue.keys.seq) == before_seq
    assert queue.client.xlen(queue.keys.events) == before_events
    assert {k: queue.client.type(k) for k in queue_keys(queue.client, queue)} == before_keys


def test_add_bulk_creates_every_job_in_one_call_in_order(queue: Queue) -> None:
    # Given an existing custom-id job
    add(queue, spec("dup"))

    # When a batch mixes generated ids, a delay, a new custom id and a duplicate
    created = queue.scripts.add(
        queue.keys,
        NOW,
        [
            spec(data=0),
            spec("dup", data="ignored"),
            spec(data=1, delay_ms=1_000),
            spec("fresh", data=2),
            spec(data=3),
        ],
    )

    # Then one result per job, in order, and each went where it should
    assert created == [("1", True), ("dup", False), ("2", True), ("fresh", True), ("3", True)]
    assert ids(queue, queue.keys.wait) == ["dup", "1", "fresh", "3"]
    assert members(queue, queue.keys.delayed) == [("2", NOW + 1_000)]
    assert [fields(queue, i)["data"] for i in ("1", "2", "fresh", "3")] == [0, 1, 2, 3]


# -- priority -----------------------------------------------------------------
def test_lower_priority_runs_first_fifo_within_a_priority_negative_before_zero(
    queue: Queue,
) -> None:
    # Given jobs added in this order with these priorities
    for label, priority in [("a", 5), ("b", 0), ("c", -3), ("d", 0), ("e", 5), ("f", -3)]:
        add(queue, spec(priority=priority, data=label))

    # When they are fetched one at a time
    order = [fields(queue, fetch_ids(queue, NOW, 1)[0])["data"] for _ in range(6)]

    # Then lowest priority first, and first-in first-out within a priority
    assert order == ["c", "f", "b", "d", "a", "e"]


def test_priority_outranks_age_however_many_jobs_came_between(queue: Queue) -> None:
    # Given an old job of priority 1, then millions of jobs' worth of sequence
    add(queue, spec(priority=1, data="old"))
    queue.client.set(queue.keys.seq, 50_000_000)

    # When a job of priority 0 is added
    add(queue, spec(priority=0, data="new"))

    # Then the new, more urgent job runs first
    leased, _ = fetch(queue, NOW, 10)
    assert [job["data"] for _id, job in leased] == ["new", "old"]


def test_extreme_priorities_keep_their_order_and_fifo(queue: Queue) -> None:
    # Given two jobs at each bound of the priority range and two at zero, the
    # second of each pair with an id that sorts first (so a rounded score,
    # tied and broken by id, would show)
    limit = 2**20 - 1
    for label, priority in (("max", limit), ("zero", 0), ("min", -limit)):
        add(queue, spec(f"{label}-z-first", priority=priority))
        add(queue, spec(f"{label}-a-second", priority=priority))

    # When all are fetched at once
    leased = fetch_ids(queue, NOW, 10)

    # Then the scores kept priority order and FIFO within each priority
    assert leased == [
        "min-z-first",
        "min-a-second",
        "zero-z-first",
        "zero-a-second",
        "max-z-first",
        "max-a-second",
    ]


# -- fetch --------------------------------------------------------------------
def test_fetch_leases_a_job_with_the_token_and_a_deadline(queue: Queue) -> None:
    # Given a waiting job
    [job_id] = add(queue, spec(data={"x": 1}))

    # When a worker fetches with a 30 s lease
    leased, next_due = fetch(queue, NOW + 7, 10, TOKEN, LEASE)

    # Then it gets the job's fields, and the lease is stored in Redis
    assert [(i, job["data"]) for i, job in leased] == [(job_id, {"x": 1})]
    assert leased[0][1]["state"] == "active"
    assert next_due == -1
    assert members(queue, queue.keys.active) == [(job_id, NOW + 7 + LEASE)]
    assert queue.client.zcard(queue.keys.wait) == 0
    job = fields(queue, job_id)
    assert job["token"] == TOKEN
    assert job["state"] == "active"
    assert job["started_at"] == (NOW + 7) / 1000
    assert event_names(queue, job_id) == ["added", "active"]


def test_prefetched_jobs_are_leased_but_start_when_finish_says_so(queue: Queue) -> None:
    # Given three waiting jobs
    add(queue, spec(), spec(), spec())

    # When a worker with one free child fetches all three (two prefetched)
    rows, _due, _limited, has_limits, _problem = queue.scripts.fetch(
        queue.keys, NOW, 3, TOKEN, LEASE, start_now=1
    )
    leased = decode_fetched(rows)

    # Then all three are leased, with their lease count in the reply, but
    # only the first started: the others have no started_at and no event
    assert [job_id for job_id, _ in leased] == ["1", "2", "3"]
    assert [job["leases"] for _, job in leased] == [1, 1, 1]
    assert ids(queue, queue.keys.active) == ["1", "2", "3"]
    assert [fields(queue, j).get("started_at") for j in ("1", "2", "3")] == [NOW / 1000, None, None]
    assert event_names(queue, "1") == ["added", "active"]
    assert event_names(queue, "2") == event_names(queue, "3") == ["added"]
    assert has_limits == 0

    # When the worker reports that a child took job 2 (and one not its own)
    statuses = queue.scripts.finish(
        queue.keys, NOW + 9, TOKEN, [outcome("1", "completed")], starts=[("2", NOW + 5), ("9", 1)]
    )

    # Then job 2 is marked started at that time, before job 1 completes
    assert [s.decode() for s in statuses] == ["completed"]
    assert fields(queue, "2")["started_at"] == (NOW + 5) / 1000
    assert fields(queue, "3").get("started_at") is None
    assert stream(queue)[-2:] == [
        ("active", "2"),
        ("completed", "1"),
    ]

    # When job 3 starts and ends before the next call, and job 2 fails
    statuses = queue.scripts.finish(
        queue.keys,
        NOW + 20,
        TOKEN,
        [outcome("3", "completed"), outcome("2", "unrecoverable", "no")],
        starts=[("3", NOW + 12)],
    )

    # Then job 3's start is recorded with its completion, in order
    assert [s.decode() for s in statuses] == ["completed", "failed"]
    assert fields(queue, "3")["started_at"] == (NOW + 12) / 1000
    assert stream(queue)[-3:] == [("active", "3"), ("completed", "3"), ("failed", "2")]


def test_fetch_says_whether_the_queue_has_limits(queue: Queue) -> None:
    add(queue, spec())
    assert queue.scripts.fetch(queue.keys, NOW, 0, TOKEN, LEASE)[3] == 0
    for limit in (
        lambda: queue.set_rate_limit(10, 1.0),
        lambda: queue.set_concurrency(2),
        lambda: queue.set_group_concurrency(1),
        lambda: queue.set_group_rate_limit(5, 1.0),
    ):
        queue.set_rate_limit(None)
        queue.set_concurrency(None)
        queue.set_group_concurrency(None)
        queue.set_group_rate_limit(None)
        limit()
        assert queue.scripts.fetch(queue.keys, NOW, 0, TOKEN, LEASE)[3] == 1


def test_fetch_hands_out_at_most_count_jobs(queue: Queue) -> None:
    # Given five waiting jobs
    add(queue, *[spec(data=n) for n in range(5)])

    # When a worker with two free slots fetches
    got = fetch_ids(queue, NOW, 2)

    # Then it gets the first two; three still wait
    assert got == ["1", "2"]
    assert ids(queue, queue.keys.wait) == ["3", "4", "5"]
    assert ids(queue, queue.keys.active) == ["1", "2"]


def test_fetch_with_count_zero_only_promotes(queue: Queue) -> None:
    # Given a waiting job and a due delayed job
    add(queue, spec(), spec(delay_ms=10))

    # When a fetch asks for no jobs after the delay
    leased, _ = fetch(queue, NOW + 10, 0)

    # Then nothing is leased, but the due job was promoted
    assert leased == []
    assert ids(queue, queue.keys.wait) == ["1", "2"]
    assert queue.client.zcard(queue.keys.active) == 0


def test_fetch_on_a_paused_queue_returns_nothing(queue: Queue) -> None:
    # Given a paused queue with a waiting job
    [job_id] = add(queue)
    assert queue.scripts.pause(queue.keys, True) is True

    # When a worker fetches
    leased, _ = fetch(queue, NOW)

    # Then it gets nothing and the job still waits
    assert leased == []
    assert ids(queue, queue.keys.wait) == [job_id]
    assert fields(queue, job_id)["state"] == "waiting"

    # and after resuming, the job is handed out
    assert queue.scripts.pause(queue.keys, False) is True
    assert fetch_ids(queue, NOW) == [job_id]


def test_fetch_promotes_due_delayed_jobs_and_reports_the_next_due_time(queue: Queue) -> None:
    # Given delayed jobs due at NOW+5000 and NOW+9000
    soon, later = add(queue, spec(delay_ms=5_000), spec(delay_ms=9_000))

    # When a worker fetches just before the first is due
    leased, next_due = fetch(queue, NOW + 4_999)

    # Then it gets nothing, and learns when the next one is due
    assert leased == []
    assert next_due == NOW + 5_000

    # When it fetches at the due time
    leased, next_due = fetch(queue, NOW + 5_000)

    # Then the due job was promoted and leased; the other is still delayed
    assert [i for i, _ in leased] == [soon]
    assert next_due == NOW + 9_000
    assert members(queue, queue.keys.delayed) == [(later, NOW + 9_000)]
    assert event_names(queue, soon) == ["added", "delayed", "waiting", "active"]
    assert events(queue, soon)[2] == ("waiting", {"from": "delayed"})


def test_fetch_passes_the_wake_up_on_while_work_remains(queue: Queue) -> None:
    # Given two waiting jobs and no marker (a worker consumed it)
    add(queue, spec(), spec())
    queue.client.delete(queue.keys.marker)

    # When a worker takes one of them
    fetch_ids(queue, NOW, 1)

    # Then the marker is set again for the next worker
    assert queue.client.zcard(queue.keys.marker) == 1

    # When the marker is consumed and the last job is taken
    queue.client.delete(queue.keys.marker)
    fetch_ids(queue, NOW, 1)

    # Then no marker is left: there is nothing to wake anyone for
    assert queue.client.exists(queue.keys.marker) == 0


# -- finish -------------------------------------------------------------------
def leased_job(q: Queue, *, now: int = NOW, token: str = TOKEN, **job_fields: Any) -> str:
    """Add one job and lease it to ``token`` at ``now``."""
    [job_id] = add(q, spec(**job_fields), now=now)
    assert fetch_ids(q, now, 1, token) == [job_id]
    return job_id


def test_completing_a_job_stores_the_result_and_moves_it_to_completed(queue: Queue) -> None:
    # Given a leased job
    job_id = leased_job(queue)

    # When it completes at NOW+2000
    statuses = finish(queue, NOW + 2_000, outcome(job_id, "completed", {"ok": [1, 2]}))

    # Then it is in completed, with result, finish time and one attempt made
    assert statuses == ["completed"]
    assert members(queue, queue.keys.completed) == [(job_id, NOW + 2_000)]
    assert queue.client.zcard(queue.keys.active) == 0
    job = fields(queue, job_id)
    assert job["state"] == "completed"
    assert job["result"] == {"ok": [1, 2]}
    assert job["finished_at"] == (NOW + 2_000) / 1000
    assert job.get("attempts_made", 0) == 1
    assert "token" not in job
    assert event_names(queue, job_id) == ["added", "active", "completed"]


def test_a_failed_attempt_with_attempts_left_is_retried_after_the_delay(queue: Queue) -> None:
    # Given a leased job allowed 3 attempts
    job_id = leased_job(queue, attempts=3)

    # When the attempt fails with a 2 s backoff
    statuses = finish(
        queue, NOW + 100, outcome(job_id, "failed", "ValueError: boom", "Traceback...", 2_000)
    )

    # Then it is delayed until NOW+100+2000 with the error kept and one attempt spent
    assert statuses == ["retrying"]
    assert members(queue, queue.keys.delayed) == [(job_id, NOW + 2_100)]
    assert queue.client.zcard(queue.keys.active) == 0
    assert queue.client.zcard(queue.keys.failed) == 0
    job = fields(queue, job_id)
    assert job["state"] == "delayed"
    assert (job["error"], job["traceback"]) == ("ValueError: boom", "Traceback...")
    assert job.get("attempts_made", 0) == 1
    assert "token" not in job
    assert events(queue, job_id)[-2:] == [
        ("retrying", {"delay_ms": "2000"}),
        ("delayed", {"delay_ms": "2000"}),
    ]


def test_a_failed_attempt_with_no_delay_goes_straight_back_to_wait(queue: Queue) -> None:
    # Given a leased job allowed 2 attempts, and another job waiting behind it
    job_id = leased_job(queue, attempts=2)
    [behind] = add(queue)

    # When the attempt fails with no backoff
    statuses = finish(queue, NOW + 100, outcome(job_id, "failed", "boom"))

    # Then it waits again (behind the job added meanwhile) and can be fetched
    assert statuses == ["retrying"]
    assert ids(queue, queue.keys.wait) == [behind, job_id]
    assert queue.client.zcard(queue.keys.delayed) == 0
    assert fields(queue, job_id)["state"] == "waiting"
    assert fetch_ids(queue, NOW + 200) == [behind, job_id]


def test_a_failed_last_attempt_fails_the_job_for_good(queue: Queue) -> None:
    # Given a job on its second and last attempt
    job_id = leased_job(queue, attempts=2)
    finish(queue, NOW + 1, outcome(job_id, "failed", "first"))
    assert fetch_ids(queue, NOW + 2) == [job_id]

    # When that attempt fails too
    statuses = finish(queue, NOW + 3, outcome(job_id, "failed", "second", "tb", 5_000))

    # Then the job is failed, with the last error, and not scheduled again
    assert statuses == ["failed"]
    assert members(queue, queue.keys.failed) == [(job_id, NOW + 3)]
    assert queue.client.zcard(queue.keys.delayed) == 0
    assert queue.client.zcard(queue.keys.wait) == 0
    job = fields(queue, job_id)
    assert (job["state"], job["error"], job["traceback"]) == ("failed", "second", "tb")
    assert job.get("attempts_made", 0) == 2
    assert job["finished_at"] == (NOW + 3) / 1000
    assert events(queue, job_id)[-1] == ("failed", {"error": "second"})


def test_an_unrecoverable_error_fails_at_once_despite_attempts_left(queue: Queue) -> None:
    # Given a leased job allowed 5 attempts
    job_id = leased_job(queue, attempts=5)

    # When the handler says it cannot succeed
    statuses = finish(queue, NOW + 1, outcome(job_id, "unrecoverable", "Unrecoverable: bad"))

    # Then it fails now, after one attempt
    assert statuses == ["failed"]
    assert ids(queue, queue.keys.failed) == [job_id]
    job = fields(queue, job_id)
    assert (job["state"], job["error"], job.get("attempts_made", 0)) == (
        "failed",
        "Unrecoverable: bad",
        1,
    )


def test_a_retry_outcome_reschedules_without_spending_an_attempt(queue: Queue) -> None:
    # Given a leased job with a single attempt
    job_id = leased_job(queue, attempts=1)

    # When the handler asks to run again in 1 s
    statuses = finish(queue, NOW + 10, outcome(job_id, "retry", "later", delay_ms=1_000))

    # Then it is delayed and its one attempt is still unspent
    assert statuses == ["retrying"]
    assert members(queue, queue.keys.delayed) == [(job_id, NOW + 1_010)]
    assert fields(queue, job_id).get("attempts_made", 0) == 0

    # and when it runs again and fails, that first real attempt fails it
    assert fetch_ids(queue, NOW + 1_010) == [job_id]
    assert finish(queue, NOW + 1_020, outcome(job_id, "failed", "boom")) == ["failed"]
    assert fields(queue, job_id).get("attempts_made", 0) == 1


@pytest.mark.parametrize("manual_retry_only", ["0", "1"])
def test_an_unstarted_job_waits_again_at_its_place_with_nothing_spent(
    queue: Queue, manual_retry_only: str
) -> None:
    # Given a job that already had a run and a retry, then two more waiting behind it
    job_id = leased_job(queue, attempts=3, manual_retry_only=manual_retry_only)
    spoil(queue, job_id, "attempts_made", b"1")
    spoil(queue, job_id, "retries", b"2")
    behind = add(queue, spec(), spec())

    # When its worker says it never started it (say, no handler there)
    statuses = finish(queue, NOW + 5, outcome(job_id, "unstarted", "", delay_ms=0, lease=1))

    # Then it waits again ahead of those behind it, no attempt or retry counted
    assert statuses == ["unstarted"]
    assert ids(queue, queue.keys.wait) == [job_id, *behind]
    job = fields(queue, job_id)
    assert (job["state"], job.get("attempts_made", 0), job["retries"]) == ("waiting", 1, 2)
    assert "token" not in job and "started_at" not in job
    assert events(queue, job_id)[-1] == ("waiting", {"from": "unstarted"})
    assert queue.client.zcard(queue.keys.active) == 0
    # And the same finish sent again is recognized
    again = finish(queue, NOW + 6, outcome(job_id, "unstarted", "", lease=1))
    assert again == ["settled:unstarted"]


def test_an_unstarted_job_with_a_delay_waits_in_delayed(queue: Queue) -> None:
    # Given a leased manual_retry_only job
    job_id = leased_job(queue, manual_retry_only="1")

    # When its worker puts it back unstarted for 5 s
    assert finish(queue, NOW + 1, outcome(job_id, "unstarted", delay_ms=5000)) == ["unstarted"]

    # Then it is delayed until then, nothing spent
    assert members(queue, queue.keys.delayed) == [(job_id, NOW + 5001)]
    job = fields(queue, job_id)
    assert (job["state"], job.get("attempts_made", 0)) == ("delayed", 0)
    assert events(queue, job_id)[-1] == ("delayed", {"delay_ms": "5000"})


def test_an_unstarted_job_with_a_cancel_request_is_cancelled(queue: Queue) -> None:
    # Given a leased job a person asked to cancel
    job_id = leased_job(queue)
    assert queue.scripts.cancel(queue.keys, job_id, "bob", "done", now=NOW + 1) == "cancelling"

    # When its worker puts it back unstarted
    statuses = finish(queue, NOW + 2, outcome(job_id, "unstarted", delay_ms=1000))

    # Then it is cancelled instead, and it never ran
    assert statuses == ["cancelled"]
    job = fields(queue, job_id)
    assert (job["state"], job.get("attempts_made", 0)) == ("cancelled", 0)
    assert job["error"] == "cancelled by bob: done (never started)"
    assert queue.client.zcard(queue.keys.delayed) == 0


def test_finish_settles_a_batch_with_one_status_per_job(queue: Queue) -> None:
    # Given three leased jobs
    add(queue, spec(attempts=1), spec(attempts=2), spec(attempts=1))
    a, b, c = fetch_ids(queue, NOW, 3)

    # When they are settled in one call
    statuses = finish(
        queue,
        NOW + 1,
        outcome(a, "completed", 1),
        outcome(b, "failed", "x"),
        outcome(c, "failed", "y"),
    )

    # Then each got its own status, in order
    assert statuses == ["completed", "retrying", "failed"]
    assert (ids(queue, queue.keys.completed), ids(queue, queue.keys.wait)) == ([a], [b])
    assert ids(queue, queue.keys.failed) == [c]


def test_finish_with_a_wrong_token_is_lost_and_changes_nothing(queue: Queue) -> None:
    # Given a job leased to worker A
    job_id = leased_job(queue, token=TOKEN)
    before = snapshot(queue, job_id)
    before_events = queue.client.xlen(queue.keys.events)

    # When worker B tries to complete it
    statuses = finish(queue, NOW + 1, outcome(job_id, "completed", 1), token=OTHER)

    # Then the job is reported lost and is still A's active job
    assert statuses == ["lost"]
    assert snapshot(queue, job_id) == before
    assert members(queue, queue.keys.active) == [(job_id, NOW + LEASE)]
    assert queue.client.zcard(queue.keys.completed) == 0
    assert queue.client.xlen(queue.keys.events) == before_events


def test_finish_of_a_job_that_is_not_leased_is_lost_and_changes_nothing(queue: Queue) -> None:
    # Given a job that is only waiting (nobody leased it)
    [job_id] = add(queue)
    before = snapshot(queue, job_id)

    # When a worker reports it failed
    statuses = finish(queue, NOW + 1, outcome(job_id, "failed", "boom"))

    # Then it is lost and still waits untouched
    assert statuses == ["lost"]
    assert snapshot(queue, job_id) == before
    assert ids(queue, queue.keys.wait) == [job_id]
    assert queue.client.zcard(queue.keys.failed) == 0


def test_finish_after_the_lease_was_recovered_is_lost(queue: Queue) -> None:
    # Given a job whose lease expired and was recovered
    job_id = leased_job(queue)
    queue.scripts.recover_stalled(queue.keys, NOW + LEASE + 1, max_stalls=5)
    before = snapshot(queue, job_id)

    # When the original worker finally completes it
    statuses = finish(queue, NOW + LEASE + 2, outcome(job_id, "completed", 1))

    # Then the late result is dropped
    assert statuses == ["lost"]
    assert snapshot(queue, job_id) == before
    assert ids(queue, queue.keys.wait) == [job_id]


def test_a_finish_sent_twice_is_recognized_and_changes_nothing_more(queue: Queue) -> None:
    # Given a job leased once (lease number 1) and completed with that number
    job_id = leased_job(queue)
    assert fields(queue, job_id)["leases"] == 1
    assert finish(queue, NOW + 1, outcome(job_id, "completed", 7, lease=1)) == ["completed"]
    before = snapshot(queue, job_id)

    # When the same finish arrives again (its first reply was lost)
    statuses = finish(queue, NOW + 2, outcome(job_id, "completed", 7, lease=1))

    # Then it is reported as settled already, with how, and nothing changes
    assert statuses == ["settled:completed"]
    assert snapshot(queue, job_id) == before


def test_a_repeated_finish_of_a_retried_job_still_says_settled(queue: Queue) -> None:
    # Given a failed attempt that sent the job back to wait, then another
    # worker leased it again (lease number 2)
    job_id = add(queue, spec(attempts=3))[0]
    fetch(queue, NOW, 1)
    assert finish(queue, NOW + 1, outcome(job_id, "failed", "boom", lease=1)) == ["retrying"]
    assert fetch(queue, NOW + 2, 1, token=OTHER)[0][0][0] == job_id

    # When the first worker's finish arrives again
    statuses = finish(queue, NOW + 3, outcome(job_id, "failed", "boom", lease=1))

    # Then it says how that lease was settled, and the new lease is untouched
    assert statuses == ["settled:retrying"]
    assert fields(queue, job_id)["token"] == OTHER
    assert fields(queue, job_id).get("attempts_made", 0) == 1


# -- renew --------------------------------------------------------------------
def test_renew_moves_the_deadline(queue: Queue) -> None:
    # Given a job leased at NOW for 30 s
    job_id = leased_job(queue)

    # When the worker renews at NOW+10000 for another 30 s
    lost = queue.scripts.renew(queue.keys, NOW + 10_000, TOKEN, LEASE, [job_id])

    # Then the deadline is NOW+40000 and nothing is lost
    assert lost == []
    assert score(queue, queue.keys.active, job_id) == NOW + 10_000 + LEASE


def test_renew_returns_the_ids_this_token_no_longer_holds(queue: Queue) -> None:
    # Given a recovered job, a job of worker A, a job of worker B, and an unknown id
    # (leased in time order: start times never go backwards within a queue)
    recovered = leased_job(queue, now=NOW - LEASE - 10)
    mine = leased_job(queue, token=TOKEN)
    theirs = leased_job(queue, token=OTHER, now=NOW + 5)
    assert queue.scripts.recover_stalled(queue.keys, NOW, max_stalls=5) == ([recovered], [], [])

    # When worker A renews all of them
    lost = queue.scripts.renew(
        queue.keys, NOW + 1_000, TOKEN, LEASE, [mine, theirs, recovered, "nope"]
    )

    # Then only its own live lease is extended; the rest come back as lost
    assert lost == [theirs, recovered, "nope"]
    assert score(queue, queue.keys.active, mine) == NOW + 1_000 + LEASE
    assert score(queue, queue.keys.active, theirs) == NOW + 5 + LEASE
    assert score(queue, queue.keys.active, recovered) is None


# -- recover_stalled ----------------------------------------------------------
def test_an_expired_lease_goes_back_to_wait_at_its_original_place(queue: Queue) -> None:
    # Given three jobs; the first is leased for 1 s and its worker died
    first, second, third = add(queue, spec(), spec(), spec())
    assert fetch_ids(queue, NOW, 1) == [first]

    # When stalled jobs are recovered after the deadline
    requeued, failed, _cancelled = queue.scripts.recover_stalled(
        queue.keys, NOW + LEASE + 1, max_stalls=1
    )

    # Then the job is first in line again, with one stall counted
    assert (requeued, failed) == ([first], [])
    assert ids(queue, queue.keys.wait) == [first, second, third]
    assert queue.client.zcard(queue.keys.active) == 0
    job = fields(queue, first)
    assert (job["state"], job.get("stalls", 0), job.get("attempts_made", 0)) == ("waiting", 1, 0)
    assert "token" not in job
    assert events(queue, first)[-2:] == [
        ("stalled", {"stalls": "1"}),
        ("waiting", {"from": "stalled"}),
    ]


def test_a_job_that_stalls_more_than_max_stalls_fails(queue: Queue) -> None:
    # Given a job that already stalled once (max_stalls = 1)
    job_id = leased_job(queue)
    queue.scripts.recover_stalled(queue.keys, NOW + LEASE + 1, max_stalls=1)
    assert fetch_ids(queue, NOW + LEASE + 2) == [job_id]

    # When it stalls a second time
    later = NOW + 2 * LEASE + 10
    requeued, failed, _cancelled = queue.scripts.recover_stalled(queue.keys, later, max_stalls=1)

    # Then it fails with the reason, instead of looping forever
    assert (requeued, failed) == ([], [job_id])
    assert members(queue, queue.keys.failed) == [(job_id, later)]
    assert queue.client.zcard(queue.keys.wait) == 0
    job = fields(queue, job_id)
    assert (job["state"], job["error"], job.get("stalls", 0)) == ("failed", "stalled 2 times", 2)
    assert job["finished_at"] == later / 1000
    assert events(queue, job_id)[-1] == ("failed", {"error": "stalled 2 times"})


def test_unexpired_leases_are_left_alone(queue: Queue) -> None:
    # Given a job leased until NOW+LEASE
    job_id = leased_job(queue)
    before = snapshot(queue, job_id)

    # When recovery runs before and exactly at the deadline
    early = queue.scripts.recover_stalled(queue.keys, NOW + LEASE - 1, max_stalls=0)
    at_deadline = queue.scripts.recover_stalled(queue.keys, NOW + LEASE, max_stalls=0)

    # Then nothing moves
    assert early == at_deadline == ([], [], [])
    assert members(queue, queue.keys.active) == [(job_id, NOW + LEASE)]
    assert snapshot(queue, job_id) == before


def test_recovery_is_bounded_by_its_limit(queue: Queue) -> None:
    # Given three expired leases
    add(queue, spec(), spec(), spec())
    fetch_ids(queue, NOW, 3)

    # When recovery runs with a limit of two, then again
    first = queue.scripts.recover_stalled(queue.keys, NOW + LEASE + 1, max_stalls=3, limit=2)
    second = queue.scripts.recover_stalled(queue.keys, NOW + LEASE + 1, max_stalls=3, limit=2)

    # Then two, then the last one, are requeued
    assert (len(first[0]), len(second[0])) == (2, 1)
    assert queue.client.zcard(queue.keys.wait) == 3


# -- release ------------------------------------------------------------------
def test_release_gives_jobs_back_at_their_place_without_counting_a_stall(
    queue: Queue,
) -> None:
    # Given two jobs leased to a worker that is shutting down, and one waiting
    first, second, third = add(queue, spec(), spec(), spec())
    assert fetch_ids(queue, NOW, 2) == [first, second]

    # When it releases them
    released = queue.scripts.hand_back(queue.keys, TOKEN, [first], [second])

    # Then they wait again in their original order, with no stall or attempt counted
    assert released == [first, second]
    assert ids(queue, queue.keys.wait) == [first, second, third]
    assert queue.client.zcard(queue.keys.active) == 0
    job = fields(queue, first)
    assert (job["state"], job.get("stalls", 0), job.get("attempts_made", 0)) == ("waiting", 0, 0)
    assert "token" not in job and "started_at" not in job
    assert events(queue, first)[-1] == ("waiting", {"from": "released"})


def test_release_ignores_jobs_of_another_token(queue: Queue) -> None:
    # Given a job leased to worker B
    job_id = leased_job(queue, token=OTHER)

    # When worker A tries to release it
    released = queue.scripts.hand_back(queue.keys, TOKEN, [job_id], [])

    # Then nothing happens
    assert released == []
    assert ids(queue, queue.keys.active) == [job_id]
    assert fields(queue, job_id)["token"] == OTHER


def test_release_tells_jobs_that_never_ran_from_jobs_that_may_have_run(queue: Queue) -> None:
    # Given four leased manual_retry_only jobs and a plain one
    never_ran, may_have_run, plain, *cancelled = add(
        queue,
        spec(manual_retry_only="1"),
        spec(manual_retry_only="1"),
        spec(),
        spec(manual_retry_only="1"),
        spec(manual_retry_only="1"),
    )
    fetch_ids(queue, NOW)
    # ... two of which a person asked to cancel
    for job_id in cancelled:
        assert queue.scripts.cancel(queue.keys, job_id, "alice", now=NOW + 1) == "cancelling"

    # When the worker releases them: one of each kind never ran, and one of
    # each may have run (a forced shutdown)
    released = queue.scripts.hand_back(
        queue.keys,
        TOKEN,
        [never_ran, cancelled[0]],
        [may_have_run, plain, cancelled[1]],
        now=NOW + 2,
    )

    # Then the one that never ran waits again at its place with nothing spent,
    # manual_retry_only or not
    assert released == [never_ran, plain]
    assert ids(queue, queue.keys.wait) == [never_ran, plain]
    job = fields(queue, never_ran)
    assert (job["state"], job.get("attempts_made", 0), job.get("stalls", 0)) == ("waiting", 0, 0)
    assert events(queue, never_ran)[-1] == ("waiting", {"from": "released"})
    # ... the manual_retry_only one that may have run fails, as before
    job = fields(queue, may_have_run)
    assert (job["state"], job.get("attempts_made", 0)) == ("failed", 1)
    assert job["error"] == "interrupted by a forced shutdown (not retried: manual_retry_only)"
    # ... and a pending cancel cancels either kind, saying whether it ran
    assert ids(queue, queue.keys.cancelled) == cancelled
    assert fields(queue, cancelled[0])["error"] == "cancelled by alice (never started)"
    assert fields(queue, cancelled[1])["error"] == "cancelled by alice (its worker let go of it)"
    assert queue.client.zcard(queue.keys.active) == 0


# -- reclaim (a lost fetch reply) ---------------------------------------------------
def test_reclaim_hands_back_the_jobs_a_lost_fetch_leased_without_a_stall(
    queue: Queue,
) -> None:
    # Given a job this worker runs, two a fetch leased to it whose reply it
    # never got (one may only be retried by a person), and one of worker B
    running, lost, manual, theirs, waiting = add(
        queue, spec(), spec(), spec(manual_retry_only="1"), spec(), spec()
    )
    assert fetch_ids(queue, NOW, 1) == [running]
    assert fetch_ids(queue, NOW + 1, 2) == [lost, manual]
    assert fetch_ids(queue, NOW + 2, 1, token=OTHER) == [theirs]

    # When it reclaims, knowing only of the job it runs
    returned = queue.scripts.reclaim(queue.keys, NOW + 3, TOKEN, 2, [running])

    # Then the two it never got wait again at their places, with no attempt
    # or stall counted (the manual one too: it never ran); the rest stay
    assert returned == [lost, manual]
    assert ids(queue, queue.keys.wait) == [lost, manual, waiting]
    assert sorted(ids(queue, queue.keys.active)) == sorted([running, theirs])
    for job_id in (lost, manual):
        job = fields(queue, job_id)
        assert (job["state"], job.get("stalls", 0), job.get("attempts_made", 0)) == (
            "waiting",
            0,
            0,
        )
        assert "token" not in job
        assert events(queue, job_id)[-1] == ("waiting", {"from": "unstarted"})


def test_a_fetch_given_up_on_leases_nothing_when_it_arrives_late(queue: Queue) -> None:
    # Given a worker that gave up on its fetch request 7 (reclaimed)
    [job_id] = add(queue)
    assert queue.scripts.reclaim(queue.keys, NOW, TOKEN, 7, []) == []

    # When that fetch, or an earlier one, reaches Redis only now
    for request in (7, 3):
        rows, _due, _limited, _has_limits, _problem = queue.scripts.fetch(
            queue.keys, NOW + 1, 1, TOKEN, LEASE, request=request
        )
        # Then it leases nothing
        assert rows == []
    assert ids(queue, queue.keys.wait) == [job_id]

    # While another worker's request of the same number does
    rows, *_ = queue.scripts.fetch(queue.keys, NOW + 2, 1, OTHER, LEASE, request=7)
    assert [found for found, _fields in decode_fetched(rows)] == [job_id]
    assert ids(queue, queue.keys.active) == [job_id]


def test_reclaim_forgets_the_marks_of_workers_gone_for_a_day(queue: Queue) -> None:
    # Given a mark left by a worker that gave up a request two days ago
    queue.scripts.reclaim(queue.keys, NOW, OTHER, 4, [])
    day = 86_400_000

    # When another worker reclaims now
    queue.scripts.reclaim(queue.keys, NOW + 2 * day, TOKEN, 1, [])

    # Then only the fresh mark is kept
    marks = queue.client.hgetall(queue.keys.given_up)
    assert marks == {TOKEN.encode(): f"1 {NOW + 2 * day}".encode()}


# -- retention ----------------------------------------------------------------
def run_to_completion(q: Queue, job_id: str, now: int, kind: str = "completed") -> None:
    """Lease ``job_id`` (the only waiting job) and settle it at ``now``."""
    assert fetch_ids(q, now, 1) == [job_id]
    value = 1 if kind == "completed" else "boom"
    assert finish(q, now, outcome(job_id, kind, value)) == [
        "completed" if kind == "completed" else "failed"
    ]


def test_queue_add_writes_the_retention_fields_in_milliseconds(queue: Queue) -> None:
    # When jobs are added with retention options
    job = queue.add("x", keep_completed={"count": 2, "age": 10}, keep_failed=Retention(0, 1.5))

    # Then the hash carries them as the scripts read them
    raw = snapshot(queue, job.id)
    assert (raw[b"kc_count"], raw[b"kc_age"]) == (b"2", b"10000")
    assert (raw[b"kf_count"], raw[b"kf_age"]) == (b"0", b"1500")


def test_keep_completed_count_keeps_only_the_newest_jobs(queue: Queue) -> None:
    # Given three jobs that each keep at most 2 completed jobs, one with logs
    jobs = [queue.add("x", keep_completed=2).id for _ in range(3)]
    assert fetch_ids(queue, NOW, 1) == [jobs[0]]
    queue.scripts.report(queue.keys, TOKEN, [(jobs[0], "log", "line")])
    assert finish(queue, NOW, outcome(jobs[0], "completed", 1)) == ["completed"]

    # When the others complete later
    run_to_completion(queue, jobs[1], NOW + 1)
    run_to_completion(queue, jobs[2], NOW + 2)

    # Then only the newest two remain; the oldest one's hash and logs are gone
    assert ids(queue, queue.keys.completed) == [jobs[1], jobs[2]]
    assert queue.client.exists(queue.keys.job(jobs[0]), queue.keys.logs(jobs[0])) == 0
    assert queue.client.exists(queue.keys.job(jobs[1])) == 1


def test_a_finish_batch_keeps_what_finishing_one_by_one_keeps(queue: Queue) -> None:
    # Given two completed jobs kept "at most 2", and five more leased: three
    # kept "at most 2" (a run that finish.lua trims once), then one kept
    # "at most 1", then one kept always
    old = [queue.add("x", keep_completed=2).id for _ in range(2)]
    for job_id in old:
        run_to_completion(queue, job_id, NOW)
    run = [queue.add("x", keep_completed=2).id for _ in range(3)]
    single = queue.add("x", keep_completed=1).id
    always = queue.add("x", keep_completed=True).id
    assert fetch_ids(queue, NOW + 1, 5) == [*run, single, always]

    # When all five finish in one call
    entries = [outcome(job_id, "completed", 1) for job_id in [*run, single, always]]
    assert finish(queue, NOW + 1, *entries) == ["completed"] * 5

    # Then each job's retention held as it would have one job at a time: the
    # run kept the newest two of its set, the next job the newest one, and
    # the job kept always entered after that trim, so it stays too
    assert ids(queue, queue.keys.completed) == [single, always]
    gone = [*old, *run]
    assert queue.client.exists(*(queue.keys.job(job_id) for job_id in gone)) == 0


def test_keep_completed_age_drops_jobs_finished_too_long_ago(queue: Queue) -> None:
    # Given jobs that keep completed jobs for 10 s
    a, b, c = (queue.add("x", keep_completed={"age": 10}).id for _ in range(3))
    run_to_completion(queue, a, NOW)

    # When another completes 20 s later
    run_to_completion(queue, b, NOW + 20_000)

    # Then the first is removed
    assert ids(queue, queue.keys.completed) == [b]
    assert queue.client.exists(queue.keys.job(a)) == 0

    # and one finishing 5 s after that keeps the second (younger than 10 s)
    run_to_completion(queue, c, NOW + 25_000)
    assert ids(queue, queue.keys.completed) == [b, c]


def test_keep_failed_count_and_age_trim_the_failed_set(queue: Queue) -> None:
    # Given jobs that keep at most 2 failed jobs, none older than 60 s
    jobs = [queue.add("x", keep_failed={"count": 2, "age": 60}).id for _ in range(4)]

    # When three fail in a row, then one fails 2 minutes later
    run_to_completion(queue, jobs[0], NOW, "failed")
    run_to_completion(queue, jobs[1], NOW + 1, "failed")
    run_to_completion(queue, jobs[2], NOW + 2, "failed")
    after_count = ids(queue, queue.keys.failed)
    run_to_completion(queue, jobs[3], NOW + 120_000, "failed")

    # Then the count kept the newest two, and the age then dropped those too
    assert after_count == [jobs[1], jobs[2]]
    assert ids(queue, queue.keys.failed) == [jobs[3]]
    assert [queue.client.exists(queue.keys.job(j)) for j in jobs] == [0, 0, 0, 1]


def test_retention_count_zero_removes_the_job_as_it_finishes(queue: Queue) -> None:
    # Given a job that keeps no completed jobs, and one that keeps no failed ones
    done = queue.add("x", keep_completed=Retention(count=0)).id
    broken = queue.add("x", keep_failed=Retention(count=0)).id

    # When they finish
    run_to_completion(queue, done, NOW)
    run_to_completion(queue, broken, NOW + 1, "failed")

    # Then neither set nor hash is left, but the events were still recorded
    assert queue.client.zcard(queue.keys.completed) == 0
    assert queue.client.zcard(queue.keys.failed) == 0
    assert queue.client.exists(queue.keys.job(done), queue.keys.job(broken)) == 0
    assert event_names(queue, done)[-1] == "completed"
    assert event_names(queue, broken)[-1] == "failed"


def test_by_default_completed_jobs_are_kept_a_day_and_failed_ones_forever(
    queue: Queue,
) -> None:
    # Given jobs with no retention options, two that complete and two that fail
    done_a, done_b = queue.add("x").id, queue.add("x").id
    broken_a, broken_b = queue.add("x").id, queue.add("x").id
    day = int(DEFAULT_KEEP_COMPLETED.age * 1000)

    # When the second of each finishes a day and a millisecond after the first
    run_to_completion(queue, done_a, NOW)
    run_to_completion(queue, done_b, NOW + day + 1)
    run_to_completion(queue, broken_a, NOW, "failed")
    run_to_completion(queue, broken_b, NOW + 10**9, "failed")

    # Then the first completed job is gone, and both failed jobs stay
    assert ids(queue, queue.keys.completed) == [done_b]
    assert ids(queue, queue.keys.failed) == [broken_a, broken_b]


def test_keep_completed_true_keeps_every_completed_job(queue: Queue) -> None:
    # Given jobs asking to be kept
    a, b = queue.add("x", keep_completed=True).id, queue.add("x", keep_completed=True).id

    # When they complete far apart in time
    run_to_completion(queue, a, NOW)
    run_to_completion(queue, b, NOW + 10**9)

    # Then both are kept
    assert ids(queue, queue.keys.completed) == [a, b]


# -- clean --------------------------------------------------------------------
def completed_at(q: Queue, *times: int) -> list[str]:
    """Complete one new job at each of ``times``; returns their ids."""
    job_ids = []
    for t in times:
        [job_id] = add(q, now=t)
        run_to_completion(q, job_id, t)
        job_ids.append(job_id)
    return job_ids


def test_clean_by_age_removes_jobs_finished_before_the_cutoff(queue: Queue) -> None:
    # Given jobs completed at NOW, NOW+1000 and NOW+2000
    a, b, c = completed_at(queue, NOW, NOW + 1_000, NOW + 2_000)

    # When jobs older than 1 s are cleaned at NOW+2500
    removed = queue.scripts.clean(queue.keys, "completed", NOW + 2_500, max_age_ms=1_000)

    # Then the two older ones are gone, hashes included
    assert removed == 2
    assert ids(queue, queue.keys.completed) == [c]
    assert queue.client.exists(queue.keys.job(a), queue.keys.job(b)) == 0
    assert events(queue)[-1] == ("cleaned", {"count": "2"})


def test_clean_by_count_keeps_the_newest(queue: Queue) -> None:
    # Given three completed jobs
    a, b, c = completed_at(queue, NOW, NOW + 1, NOW + 2)

    # When all but the newest one are cleaned
    removed = queue.scripts.clean(queue.keys, "completed", NOW + 3, max_count=1)

    # Then only the newest is left
    assert removed == 2
    assert ids(queue, queue.keys.completed) == [c]
    assert queue.client.exists(queue.keys.job(a), queue.keys.job(b)) == 0


def test_clean_works_in_steps_of_limit(queue: Queue) -> None:
    # Given three failed jobs
    for t in (NOW, NOW + 1, NOW + 2):
        [job_id] = add(queue, now=t)
        run_to_completion(queue, job_id, t, "failed")

    # When cleaned with a limit of two per call
    first = queue.scripts.clean(queue.keys, "failed", NOW + 10, max_age_ms=0, limit=2)
    second = queue.scripts.clean(queue.keys, "failed", NOW + 10, max_age_ms=0, limit=2)
    third = queue.scripts.clean(queue.keys, "failed", NOW + 10, max_age_ms=0, limit=2)

    # Then two, one, then nothing
    assert (first, second, third) == (2, 1, 0)
    assert queue.client.zcard(queue.keys.failed) == 0


# -- drain --------------------------------------------------------------------
def test_drain_removes_jobs_that_have_not_started(queue: Queue) -> None:
    # Given an active job, two waiting jobs and a delayed one
    running = leased_job(queue)
    w1, w2, later = add(queue, spec(), spec(), spec(delay_ms=60_000))

    # When the queue is drained without the delayed jobs
    removed = queue.scripts.drain(queue.keys, include_delayed=False)

    # Then the waiting jobs are gone, hashes included; the others stay
    assert removed == 2
    assert queue.client.zcard(queue.keys.wait) == 0
    assert queue.client.exists(queue.keys.job(w1), queue.keys.job(w2)) == 0
    assert ids(queue, queue.keys.delayed) == [later]
    assert events(queue)[-1] == ("drained", {"count": "2"})

    # When drained again including delayed jobs
    assert queue.scripts.drain(queue.keys, include_delayed=True) == 1

    # Then the delayed job is gone and the running job is untouched
    assert queue.client.exists(queue.keys.job(later)) == 0
    assert ids(queue, queue.keys.active) == [running]
    assert fields(queue, running)["state"] == "active"


def test_drain_works_in_steps_of_limit(queue: Queue) -> None:
    # Given two waiting and two delayed jobs
    add(queue, spec(), spec(), spec(delay_ms=1), spec(delay_ms=1))

    # When drained two at a time
    steps = [queue.scripts.drain(queue.keys, True, limit=2) for _ in range(3)]

    # Then it takes two full steps and a final empty one
    assert steps == [2, 2, 0]
    assert queue.client.zcard(queue.keys.delayed) == 0


# -- obliterate ---------------------------------------------------------------
def populate_every_state(q: Queue) -> str:
    """One job in each state, plus logs, progress, pause flag and events.
    Returns the active job's id."""
    done = leased_job(q)
    q.scripts.report(q.keys, TOKEN, [(done, "log", "hello"), (done, "progress", "50")])
    finish(q, NOW, outcome(done, "completed", 1))
    broken = leased_job(q)
    finish(q, NOW, outcome(broken, "failed", "boom"))
    active = leased_job(q)
    q.scripts.report(q.keys, TOKEN, [(active, "log", "running")])
    add(q, spec(), spec(delay_ms=1_000))
    q.scripts.pause(q.keys, True)
    return active


def test_obliterate_refuses_while_jobs_are_active(client: redis.Redis, queue: Queue) -> None:
    # Given a queue with an active job
    populate_every_state(queue)
    before = {k: client.dump(k) for k in queue_keys(client, queue)}

    # When it is obliterated without force
    result = queue.scripts.obliterate(queue.keys, force=False)

    # Then it refuses and deletes nothing
    assert result == -1
    assert {k: client.dump(k) for k in queue_keys(client, queue)} == before


def test_obliterate_with_force_leaves_no_key_behind(client: redis.Redis, queue: Queue) -> None:
    # Given a queue with jobs in every state
    populate_every_state(queue)
    assert len(queue_keys(client, queue)) > 10

    # When it is obliterated with force, in steps of two jobs
    steps = []
    while (removed := queue.scripts.obliterate(queue.keys, force=True, limit=2)) != 0:
        steps.append(removed)

    # Then every job was deleted, step by step, and no key of the queue is left
    assert steps == [2, 2, 1]
    assert queue_keys(client, queue) == set()


def test_obliterate_without_active_jobs_needs_no_force(client: redis.Redis, queue: Queue) -> None:
    # Given a queue whose jobs are all finished or waiting
    add(queue, spec(), spec(delay_ms=5))
    run_to_completion(queue, "1", NOW)

    # When it is obliterated without force
    while queue.scripts.obliterate(queue.keys, force=False) > 0:
        pass

    # Then nothing of it is left
    assert queue_keys(client, queue) == set()


# -- pause / resume -----------------------------------------------------------
def test_pause_and_resume_report_whether_they_changed_anything(queue: Queue) -> None:
    # Given a running queue
    # When it is paused twice
    first, second = queue.scripts.pause(queue.keys, True), queue.scripts.pause(queue.keys, True)

    # Then only the first pause changed the state
    assert (first, second) == (True, False)
    assert queue.client.hget(queue.keys.meta, "paused") == b"1"

    # When it is resumed twice
    queue.client.delete(queue.keys.marker)
    first, second = queue.scripts.pause(queue.keys, False), queue.scripts.pause(queue.keys, False)

    # Then only the first resume changed it, and it woke the workers
    assert (first, second) == (True, False)
    assert queue.client.hexists(queue.keys.meta, "paused") == 0
    assert queue.client.zcard(queue.keys.marker) == 1
    assert event_names(queue) == ["paused", "resumed"]


# -- promote ------------------------------------------------------------------
def test_promote_one_job_runs_it_now_ahead_of_its_delay(queue: Queue) -> None:
    # Given a job delayed for a minute and a waiting job
    [later, waiting] = add(queue, spec(delay_ms=60_000), spec())

    # When the delayed job is promoted by id
    promoted = queue.scripts.promote(queue.keys, NOW, later)

    # Then it waits now, behind the job that was already waiting
    assert promoted == 1
    assert queue.client.zcard(queue.keys.delayed) == 0
    assert ids(queue, queue.keys.wait) == [waiting, later]
    assert fields(queue, later)["state"] == "waiting"
    assert events(queue, later)[-1] == ("waiting", {"from": "promoted"})


def test_promote_of_a_job_that_is_not_delayed_does_nothing(queue: Queue) -> None:
    # Given a waiting job
    [job_id] = add(queue)

    # When it is promoted, and so is an unknown id
    # Then neither call moves anything
    assert queue.scripts.promote(queue.keys, NOW, job_id) == 0
    assert queue.scripts.promote(queue.keys, NOW, "missing") == 0
    assert ids(queue, queue.keys.wait) == [job_id]


def test_promote_all_moves_every_due_job_and_keeps_priorities(queue: Queue) -> None:
    # Given delayed jobs due at +1 s (priority 3), +2 s (priority -1) and +9 s
    a, b, c = add(
        queue,
        spec(delay_ms=1_000, priority=3),
        spec(delay_ms=2_000, priority=-1),
        spec(delay_ms=9_000),
    )

    # When the due jobs are promoted at +2 s
    promoted = queue.scripts.promote(queue.keys, NOW + 2_000)

    # Then the two due ones wait, in priority order; the third is still delayed
    assert promoted == 2
    assert ids(queue, queue.keys.wait) == [b, a]
    assert ids(queue, queue.keys.delayed) == [c]


def test_promote_all_is_bounded_by_its_limit(queue: Queue) -> None:
    # Given three due delayed jobs
    add(queue, spec(delay_ms=1), spec(delay_ms=2), spec(delay_ms=3))

    # When promoted with a limit of two
    promoted = queue.scripts.promote(queue.keys, NOW + 10, limit=2)

    # Then the two earliest moved
    assert promoted == 2
    assert ids(queue, queue.keys.wait) == ["1", "2"]
    assert ids(queue, queue.keys.delayed) == ["3"]


# -- report -------------------------------------------------------------------
def test_report_records_progress_and_logs_for_the_lease_holder_only(queue: Queue) -> None:
    # Given a job leased to worker A
    job_id = leased_job(queue)

    # When A and a stale worker B both report on it
    mine = queue.scripts.report(
        queue.keys,
        TOKEN,
        [(job_id, "progress", '{"pct": 40}'), (job_id, "log", "one"), (job_id, "log", "two")],
    )
    theirs = queue.scripts.report(
        queue.keys, OTHER, [(job_id, "progress", "99"), (job_id, "log", "stale")]
    )

    # Then only A's reports are recorded
    assert (mine, theirs) == (3, 0)
    assert fields(queue, job_id)["progress"] == {"pct": 40}
    assert queue.client.lrange(queue.keys.logs(job_id), 0, -1) == [b"one", b"two"]
    assert events(queue, job_id)[-1] == ("progress", {"progress": '{"pct": 40}'})


def test_report_keeps_only_the_newest_log_lines(queue: Queue) -> None:
    # Given a leased job
    job_id = leased_job(queue)

    # When it logs five lines with room for three
    queue.scripts.report(
        queue.keys, TOKEN, [(job_id, "log", str(n)) for n in range(5)], keep_logs=3
    )

    # Then the three newest are kept
    assert queue.client.lrange(queue.keys.logs(job_id), 0, -1) == [b"2", b"3", b"4"]


# -- remove and retry ---------------------------------------------------------
def test_remove_deletes_a_job_that_is_not_running(queue: Queue) -> None:
    # Given an active job, and a waiting job with logs left from an earlier run
    running = leased_job(queue)
    [waiting] = add(queue)
    queue.client.rpush(queue.keys.logs(waiting), "old")

    # When each is removed, and an unknown id too
    results = [queue.scripts.remove(queue.keys, i) for i in (waiting, running, "missing")]

    # Then the waiting job is gone, the active one refused, the unknown one absent
    assert results == [1, -1, 0]
    assert queue.client.exists(queue.keys.job(waiting), queue.keys.logs(waiting)) == 0
    assert queue.client.zcard(queue.keys.wait) == 0
    assert ids(queue, queue.keys.active) == [running]
    assert events(queue, waiting)[-1] == ("removed", {"by": ""})


def test_retry_sends_a_failed_job_back_with_a_fresh_budget(queue: Queue) -> None:
    # Given a job that failed its only attempt, and a job waiting meanwhile
    job_id = leased_job(queue, attempts=1)
    finish(queue, NOW + 1, outcome(job_id, "failed", "boom"))
    [waiting] = add(queue)

    # When it is retried
    moved = queue.scripts.retry(queue.keys, job_id)

    # Then it waits (at the back), with no attempts made and the last error kept
    assert moved == [job_id]
    assert ids(queue, queue.keys.wait) == [waiting, job_id]
    assert queue.client.zcard(queue.keys.failed) == 0
    job = fields(queue, job_id)
    assert (job["state"], job.get("attempts_made", 0), job["error"]) == ("waiting", 0, "boom")
    assert "finished_at" not in job and "started_at" not in job
    # and retrying a job that is not failed does nothing
    assert queue.scripts.retry(queue.keys, waiting) == []


# -- events and keys ----------------------------------------------------------
def test_the_event_stream_records_each_transition_of_a_job(queue: Queue) -> None:
    # Given a job with two attempts
    [job_id] = add(queue, spec(attempts=2))

    # When it fails once with a backoff, is promoted by fetch, then completes
    fetch_ids(queue, NOW)
    finish(queue, NOW + 1, outcome(job_id, "failed", "boom", delay_ms=500))
    fetch_ids(queue, NOW + 501)
    finish(queue, NOW + 502, outcome(job_id, "completed", "ok"))

    # Then the stream lists every step in order
    assert events(queue, job_id) == [
        ("added", {"state": "waiting"}),
        ("active", {}),
        ("retrying", {"delay_ms": "500"}),
        ("delayed", {"delay_ms": "500"}),
        ("waiting", {"from": "delayed"}),
        ("active", {}),
        ("completed", {"result": '"ok"'}),
    ]


def test_the_event_stream_is_capped(queue: Queue) -> None:
    # Given scripts that keep about 10 events
    scripts = Scripts(queue.client, events_maxlen=10)

    # When 500 jobs are added one by one
    for _ in range(500):
        scripts.add(queue.keys, NOW, [spec()])

    # Then the stream was trimmed (approximately, as MAXLEN ~ does)
    assert queue.client.xlen(queue.keys.events) < 500


def test_every_key_the_scripts_touch_is_under_the_queue_hash_tag(
    client: redis.Redis, queue: Queue
) -> None:
    # Given the keys of the whole database before
    before = set(client.keys("*"))

    # When every script runs over a queue's lifetime
    populate_every_state(queue)
    queue.scripts.renew(queue.keys, NOW, TOKEN, LEASE, ["3"])
    queue.scripts.pause(queue.keys, False)
    add(queue, spec("custom", delay_ms=5))
    queue.scripts.promote(queue.keys, NOW, "custom")
    queue.scripts.promote(queue.keys, NOW + 10)
    queue.scripts.recover_stalled(queue.keys, NOW + 10 * LEASE, max_stalls=0)
    queue.scripts.retry(queue.keys)
    add(queue)
    fetch_ids(queue, NOW + 20 * LEASE)
    queue.scripts.hand_back(queue.keys, TOKEN, ["custom", "1", "2"], ["3", "4", "5"])
    queue.scripts.remove(queue.keys, "4")
    created = set(client.keys("*")) - before
    queue.scripts.clean(queue.keys, "failed", NOW, max_count=0)
    queue.scripts.drain(queue.keys, True)

    # Then every key created is the queue's, and all hash to one cluster slot
    assert created
    prefix = f"sq:{{{queue.name}}}:".encode()
    assert all(key.startswith(prefix) for key in created), created
    assert {key_slot(key) for key in created} == {key_slot(prefix)}


@pytest.mark.parametrize("name", ["a", "images", "with:colon", "ünï"])
def test_every_named_key_of_a_queue_shares_the_hash_tag(name: str) -> None:
    # Given the keys of a queue
    from sandboxq.keys import QueueKeys

    keys = QueueKeys.for_queue(name)

    # When every key name is listed
    names = [getattr(keys, f) for f in keys.__dataclass_fields__ if f not in ("name", "prefix")]
    names += [keys.job("1"), keys.logs("1"), keys.deps("1"), keys.ignored("1")]

    # Then all hash to the slot of the tag: the name, or its group before a colon
    assert keys.hash_tag == name.split(":")[0]
    assert {key_slot(n.encode()) for n in names} == {key_slot(f"{{{keys.hash_tag}}}".encode())}


def test_queues_of_one_group_share_a_slot_but_not_keys() -> None:
    from sandboxq.keys import QueueKeys

    group, member = QueueKeys.for_queue("media"), QueueKeys.for_queue("media:thumbs")
    assert key_slot(group.wait.encode()) == key_slot(member.wait.encode())
    assert member.wait == "sq:{media}/thumbs:wait"
    assert group.wait != member.wait


# -- fault barriers: no stored value makes a script raise ----------------------------
# Another tool, an old version or a person's HSET can leave anything in a job's
# hash or a queue's settings. A script that raised on it would abort its whole
# call (every job of a finish or fetch batch) after some of its writes, and the
# worker would send the same batch again for ever.

#: What a stored number may turn out to hold.
JUNK = [
    b"abc",
    b"\xff\xfe\x00",
    b"",
    b"nan",
    b"inf",
    b"-inf",
    b"-1",
    b"1.5",
    b"1e300",
    b"9" * 400,
    b"0x10",
]


def junk_id(value: Any) -> str:
    """A short test id for a junk value."""
    text = repr(value)
    return text if len(text) <= 16 else text[:12] + "..."


#: The job-hash fields a script reads (numbers, then the others).
JOB_FIELDS = [
    "attempts",
    "attempts_made",
    "leases",
    "priority",
    "seq",
    "waiting_since",
    "timeout",
    "retries",
    "stalls",
    "kc_count",
    "kc_age",
    "kf_count",
    "kf_age",
    "step_count",
    "group",
    "parent_prefix",
    "parent_id",
    "ref",
    "manual_retry_only",
    "pending",
    "name",
    "data",
    "dedupe_id",
    "created_at",
    "awaited_as",
    "on_dependency_failure",
    "result",
    "error",
]

#: Every outcome finish.lua takes.
FINISH_OUTCOMES = [
    "completed",
    "failed",
    "unrecoverable",
    "retry",
    "ratelimited",
    "cancelled",
    "unstarted",
]

#: Every status finish.lua may answer for a job it held.
SETTLED_STATUSES = {
    "completed",
    "failed",
    "retrying",
    "rate-limited",
    "cancelled",
    "unstarted",
}


def raw_fetch(
    q: Queue, now: int, count: int = 100, token: str = TOKEN
) -> dict[str, dict[bytes, bytes]]:
    """fetch.lua's leased jobs as stored, undecoded: {id: {field: value}}."""
    rows, _due, _limited, _has_limits, problem = q.scripts.fetch(q.keys, now, count, token, LEASE)
    assert problem == b""
    return {
        rows[i].decode(): dict(zip(rows[i + 1][::2], rows[i + 1][1::2], strict=True))
        for i in range(0, len(rows), 2)
    }


def lease_of(leased: dict[str, dict[bytes, bytes]], job_id: str) -> str:
    return leased[job_id][b"leases"].decode()


def spoil(q: Queue, job_id: str, field: str, value: bytes) -> None:
    q.client.hset(q.keys.job(job_id), field, value)


def visit_every_script(q: Queue, job_ids: list[str], now: int) -> None:
    """Run every script that reads a job by id over ``job_ids`` (wherever
    they are), in the order a job's life goes; any script error raises."""
    # A job that awaits them all, told by each script that ends one
    dependencies = [Dependency(q.keys.prefix, q.name, job_id) for job_id in job_ids]
    with contextlib.suppress(UnknownDependency):  # (a key that holds no job is refused)
        q.scripts.add_dependent(q.keys, now, "run", dependencies, JobRow("", 0, 0, "d", b"1"))
    leased = raw_fetch(q, now)  # those back in line
    held = list(leased)
    q.scripts.renew(q.keys, now, TOKEN, LEASE, job_ids)
    q.scripts.report(q.keys, TOKEN, [(j, "progress", "1") for j in job_ids])
    q.scripts.report(q.keys, TOKEN, [(j, "log", "line") for j in job_ids])
    q.scripts.step(q.keys, TOKEN, [(j, "k", "1") for j in job_ids], 1000)
    q.scripts.hand_back(q.keys, TOKEN, held[::2], held[1::2], now=now + 1)
    raw_fetch(q, now + 2)
    q.scripts.reclaim(q.keys, now + 3, TOKEN, 1, held[:1])
    raw_fetch(q, now + 4)
    q.scripts.recover_stalled(q.keys, now + 2 * LEASE, max_stalls=1)
    q.scripts.promote(q.keys, now + 2 * LEASE + 1, job_ids[0])
    q.scripts.promote(q.keys, now + 10**9)
    q.scripts.configure(q.keys, {"aging_ms": 1000})
    q.scripts.configure(q.keys, {"aging_ms": None})
    q.scripts.retry(q.keys, now=now + 10**9)
    q.scripts.retry(q.keys, job_ids[-1], now=now + 10**9)
    for job_id in job_ids[: len(job_ids) // 2]:
        q.scripts.cancel(q.keys, job_id, now=now + 10**9)
    for job_id in job_ids[len(job_ids) // 2 :]:
        q.scripts.remove(q.keys, job_id, now=now + 10**9)
    q.scripts.clean(q.keys, "failed", now + 10**9, max_count=0)
    q.scripts.clean(q.keys, "completed", now + 10**9, max_count=0)
    q.scripts.drain(q.keys, True, now=now + 10**9)


@pytest.mark.parametrize("junk", JUNK, ids=junk_id)
@pytest.mark.parametrize("field", JOB_FIELDS)
def test_junk_in_a_job_field_fails_no_fetch_or_finish_and_spares_the_batch(
    queue: Queue, field: str, junk: bytes
) -> None:
    # Given a sound job first and last in line, and between them one job per
    # outcome whose field holds junk
    first, *spoilt, last = add(queue, *[spec(attempts=2) for _ in range(len(FINISH_OUTCOMES) + 2)])
    for job_id in spoilt:
        spoil(queue, job_id, field, junk)

    # When a worker leases them in one fetch and settles them in one finish
    leased = raw_fetch(queue, NOW)
    statuses = finish(
        queue,
        NOW + 1,
        outcome(first, "completed", 1, lease=lease_of(leased, first)),
        *[
            outcome(job_id, kind, "boom", lease=lease_of(leased, job_id))
            for job_id, kind in zip(spoilt, FINISH_OUTCOMES, strict=True)
        ],
        outcome(last, "failed", "boom", lease=lease_of(leased, last)),
    )

    # Then every job was leased and settled, the sound ones as ever
    assert set(leased) == {first, *spoilt, last}
    assert set(statuses) <= SETTLED_STATUSES
    assert (statuses[0], statuses[-1]) == ("completed", "retrying")
    assert fields(queue, first)["result"] == 1
    assert (fields(queue, last)["attempts_made"], fields(queue, last)["state"]) == (1, "waiting")
    # And a finish sent again is recognized for each
    again = finish(
        queue,
        NOW + 2,
        outcome(first, "completed", 1, lease=lease_of(leased, first)),
        *[
            outcome(job_id, kind, "boom", lease=lease_of(leased, job_id))
            for job_id, kind in zip(spoilt, FINISH_OUTCOMES, strict=True)
        ],
    )
    assert all(s.startswith("settled:") or s == "lost" for s in again)


@pytest.mark.parametrize("field", JOB_FIELDS)
def test_junk_in_a_job_field_fails_no_other_script(queue: Queue, field: str) -> None:
    # Given one job per kind of junk in the field, and a sound job; half of
    # the junk ones settled so they wait again, half failed for good
    *spoilt, sound = add(queue, *[spec(attempts=2) for _ in range(len(JUNK) + 1)])
    for job_id, junk in zip(spoilt, JUNK, strict=True):
        spoil(queue, job_id, field, junk)
    raw_fetch(queue, NOW)
    kinds = ["retry", "unstarted", "ratelimited", "unrecoverable"]
    statuses = finish(
        queue,
        NOW + 1,
        *[outcome(job_id, kinds[i % len(kinds)], "boom") for i, job_id in enumerate(spoilt)],
        outcome(sound, "completed", 1),
    )
    assert statuses[-1] == "completed"

    # When every other script meets them, then none raises
    visit_every_script(queue, spoilt, NOW + 10)


@given(
    st.dictionaries(
        st.sampled_from(JOB_FIELDS),
        st.one_of(st.sampled_from(JUNK), st.binary(max_size=40), st.from_regex(r"-?\d{1,30}")),
        min_size=1,
    ),
    st.lists(st.sampled_from(FINISH_OUTCOMES), min_size=1, max_size=4),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_junk_in_job_fields_spares_every_other_job(
    redis_url: str, junk: dict[str, Any], kinds: list[str]
) -> None:
    for queue in fresh_queue(redis_url):
        # Given sound jobs around jobs with random junk in random fields
        first, *spoilt, last = add(queue, *[spec(attempts=2) for _ in range(len(kinds) + 2)])
        for job_id in spoilt:
            for field, value in junk.items():
                spoil(queue, job_id, field, value.encode() if isinstance(value, str) else value)

        # When they are leased and settled in one batch each, then meet every script
        leased = raw_fetch(queue, NOW)
        statuses = finish(
            queue,
            NOW + 1,
            outcome(first, "completed", 1),
            *[outcome(j, k, "boom") for j, k in zip(spoilt, kinds, strict=True)],
            outcome(last, "failed", "boom"),
        )
        visit_every_script(queue, spoilt, NOW + 10)

        # Then the sound jobs were leased and settled as ever
        assert {first, last} <= set(leased)
        assert (statuses[0], statuses[-1]) == ("completed", "retrying")


def test_every_job_field_read_by_a_script_is_in_the_junk_tests() -> None:
    # The fields the scripts read from a job's hash (HMGET/HGET), all covered
    sources = "\n".join(
        path.read_text() for path in (Path(sandboxq.__file__).parent / "lua").rglob("*.lua")
    )
    job_key = r"(?:job_key|pkey|[a-z_]+ \.\. 'job:' \.\. [a-z_]+)"
    reads = re.findall(rf"'(?:HMGET|HGET|HEXISTS|HINCRBY)', {job_key}, ([^)]*)\)", sources)
    reads += re.findall(rf"hincr\({job_key}, ('[a-z_]+')", sources)
    reads += re.findall(r"link_fields = \{([^}]*)\}", sources)
    reads += re.findall(r"name == ('[a-z_]+')", sources)  # fetch.lua's pass over HGETALL
    read = {field for call in reads for field in re.findall(r"'([a-z_]+)'", call)}
    assert {"attempts", "leases", "stalls", "parent_id"} <= read  # the patterns still match
    # Fields only ever written, or compared as flags set by scripts themselves
    own = {"token", "state", "settled", "cancel_requested_at", "cancelled_by", "cancel_reason"}
    own |= {"started_at", "fail_parent", "ignore_failure"}
    assert read - own <= set(JOB_FIELDS), read - own - set(JOB_FIELDS)


# -- a job key that holds no hash -------------------------------------------------
def overwrite_with_a_string(q: Queue, job_id: str) -> None:
    q.client.delete(q.keys.job(job_id))
    q.client.set(q.keys.job(job_id), b"\xffnot a hash")


def test_fetch_sets_a_job_whose_key_holds_no_hash_aside_in_failed(queue: Queue) -> None:
    # Given three waiting jobs, the middle one's key overwritten by a string
    first, broken, last = add(queue, spec(), spec(), spec())
    overwrite_with_a_string(queue, broken)

    # When a worker fetches them in one batch
    leased = raw_fetch(queue, NOW)

    # Then the sound ones are leased, the broken one is out of line and failed
    assert list(leased) == [first, last]
    assert ids(queue, queue.keys.failed) == [broken]
    assert ids(queue, queue.keys.wait) == []
    assert events(queue, broken)[-1] == (
        "failed",
        {"error": "corrupt record: its key holds no hash"},
    )


def test_a_grouped_job_whose_key_holds_no_hash_takes_no_slot_of_its_group(
    queue: Queue,
) -> None:
    # Given a group with a concurrency limit, whose first job's key is a list
    queue.set_group_concurrency(1)
    broken, sound = add(queue, spec(group="g"), spec(group="g"))
    queue.client.delete(queue.keys.job(broken))
    queue.client.rpush(queue.keys.job(broken), b"x")

    # When a worker fetches twice
    first = raw_fetch(queue, NOW)
    second = raw_fetch(queue, NOW + 1)

    # Then the broken one is set aside and the sound one still gets the slot
    assert (list(first), list(second)) in (([], [sound]), ([sound], []))
    assert ids(queue, queue.keys.failed) == [broken]
    assert queue.client.hget(queue.keys.group_active, "g") == b"1"


def test_a_delayed_job_whose_key_holds_no_hash_is_set_aside_when_due(queue: Queue) -> None:
    # Given two delayed jobs, one overwritten by a string
    broken, sound = add(queue, spec(delay_ms=5), spec(delay_ms=5))
    overwrite_with_a_string(queue, broken)

    # When they are due, through fetch and through promote
    leased = raw_fetch(queue, NOW + 10)
    [named] = add(queue, spec(delay_ms=5), now=NOW + 10)
    overwrite_with_a_string(queue, named)
    promoted = queue.scripts.promote(queue.keys, NOW + 11, named)

    # Then the sound one runs and the broken ones wait in failed
    assert list(leased) == [sound]
    assert promoted == 0
    assert ids(queue, queue.keys.failed) == [broken, named]
    assert queue.client.zcard(queue.keys.delayed) == 0


def test_a_leased_job_whose_key_turns_into_a_string_fails_no_script(queue: Queue) -> None:
    # Given two leased jobs, and one of their keys then overwritten
    broken, sound = add(queue, spec(), spec())
    raw_fetch(queue, NOW)
    overwrite_with_a_string(queue, broken)

    # When the worker renews, reports, steps, settles and releases them
    lost = queue.scripts.renew(queue.keys, NOW + 1, TOKEN, LEASE, [broken, sound])
    recorded = queue.scripts.report(queue.keys, TOKEN, [(broken, "log", "x"), (sound, "log", "y")])
    stepped = queue.scripts.step(queue.keys, TOKEN, [(broken, "k", "1"), (sound, "k", "1")], 10)
    statuses = finish(queue, NOW + 2, outcome(broken, "completed", 1), outcome(sound, "retry"))
    released = queue.scripts.hand_back(queue.keys, TOKEN, [broken], [broken], now=NOW + 3)
    handed = queue.scripts.reclaim(queue.keys, NOW + 4, TOKEN, 1, [])

    # Then the broken one is lost to it and the sound one goes on as ever
    assert lost == [broken]
    assert recorded == 1
    assert stepped == ["lost", "recorded"]
    assert statuses == ["lost", "retrying"]
    assert (released, handed) == ([], [])
    # And once its lease lapses, recovery files it under failed
    requeued, failed, cancelled = queue.scripts.recover_stalled(
        queue.keys, NOW + 2 * LEASE, max_stalls=1
    )
    assert (requeued, failed, cancelled) == ([], [broken], [])
    assert ids(queue, queue.keys.failed) == [broken]
    assert queue.client.zcard(queue.keys.active) == 0


def test_a_failed_id_whose_key_holds_no_hash_is_not_retried_and_can_be_removed(
    queue: Queue,
) -> None:
    # Given a failed job whose key was overwritten, and a sound failed job
    broken, sound = add(queue, spec(), spec())
    raw_fetch(queue, NOW)
    finish(queue, NOW + 1, outcome(broken, "unrecoverable", "x"), outcome(sound, "unrecoverable"))
    overwrite_with_a_string(queue, broken)

    # When a person retries every failed job, cancels and retries the broken one
    moved = queue.scripts.retry(queue.keys, now=NOW + 2)
    cancelled = queue.scripts.cancel(queue.keys, broken, now=NOW + 3)
    again = queue.scripts.retry(queue.keys, broken, now=NOW + 4)

    # Then only the sound one runs again, and the broken one stays failed
    assert (moved, cancelled, again) == ([sound], "corrupt", [])
    assert ids(queue, queue.keys.failed) == [broken]

    # When they remove it, it is gone for good
    assert queue.scripts.remove(queue.keys, broken, now=NOW + 5) == 1
    assert queue.client.exists(queue.keys.job(broken)) == 0
    assert ids(queue, queue.keys.failed) == []


def test_retrying_every_failed_job_looks_past_broken_ones(queue: Queue) -> None:
    # Given three failed jobs, the oldest overwritten
    job_ids = add(queue, spec(), spec(), spec())
    raw_fetch(queue, NOW)
    finish(queue, NOW + 1, *[outcome(j, "unrecoverable") for j in job_ids])
    overwrite_with_a_string(queue, job_ids[0])

    # When every failed job is retried, two per call
    moved = queue.scripts.retry(queue.keys, limit=2, now=NOW + 2)

    # Then the sound ones are found behind it, and it stays failed
    assert moved == job_ids[1:]
    assert ids(queue, queue.keys.failed) == job_ids[:1]


# -- a queue setting that cannot be used ------------------------------------------------
META_FIELDS = [
    "rl_until",
    "concurrency",
    "rl_max",
    "rl_window_ms",
    "gconcurrency",
    "grl_max",
    "grl_window_ms",
    "aging_ms",
]


def fetch_reply(q: Queue, now: int = NOW, count: int = 10) -> tuple[list[str], str]:
    rows, _due, _limited, _has_limits, problem = q.scripts.fetch(q.keys, now, count, TOKEN, LEASE)
    return [rows[i].decode() for i in range(0, len(rows), 2)], problem.decode()


@pytest.mark.parametrize(
    ("field", "junk"),
    [
        (field, junk)
        for field in META_FIELDS
        for junk in JUNK
        # Usable: 16, and a time with a fraction of a millisecond
        if junk != b"0x10" and (field, junk) != ("rl_until", b"1.5")
    ],
    ids=junk_id,
)
def test_a_setting_that_is_no_usable_number_makes_fetch_lease_nothing_and_say_so(
    queue: Queue, field: str, junk: bytes
) -> None:
    # Given a waiting job and a due delayed one, and junk in one setting (with
    # a usable rate limit beside a window, so the window is what is read)
    add(queue, spec(), spec(delay_ms=5))
    if field.endswith("window_ms"):
        queue.client.hset(queue.keys.meta, field.replace("window_ms", "max"), 5)
    queue.client.hset(queue.keys.meta, field, junk)

    # When a worker fetches
    leased, problem = fetch_reply(queue, NOW + 10)

    # Then nothing is leased or promoted, and the problem names the setting
    assert leased == []
    assert problem.startswith(f"setting '{field}' = '")
    assert problem.isascii() and len(problem) < 200
    assert queue.client.zcard(queue.keys.delayed) == 1


def test_a_setting_problem_shows_the_value_cut_and_escaped(queue: Queue) -> None:
    queue.client.hset(queue.keys.meta, "rl_max", b"ab\xff" + b"x" * 100)
    _leased, problem = fetch_reply(queue)
    assert problem == "setting 'rl_max' = 'ab\\xff" + "x" * 47 + "...' is not a number"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"rl_max": "abc", "rl_window_ms": 1000}, "setting 'rl_max' = 'abc' is not a number"),
        (
            {"rl_max": 10**9 + 1, "rl_window_ms": 1000},
            "setting 'rl_max' = '1000000001' is out of range (0 to 1000000000)",
        ),
        (
            {"concurrency": 10**6 + 1},
            "setting 'concurrency' = '1000001' is out of range (0 to 1000000)",
        ),
        (
            {"gconcurrency": -1},
            "setting 'gconcurrency' = '-1' is out of range (0 to 1000000)",
        ),
        (
            {"grl_max": "2.5", "grl_window_ms": 10},
            "setting 'grl_max' = '2.5' is not a whole number",
        ),
        (
            {"rl_max": 5, "rl_window_ms": 0},
            "setting 'rl_window_ms' = '0' must be at least 1 when rl_max is set",
        ),
        ({"grl_max": 5}, "setting 'grl_window_ms' = '' must be at least 1 when grl_max is set"),
        (
            {"rl_window_ms": 3153600000001, "rl_max": 1},
            "setting 'rl_window_ms' = '3153600000001' is out of range (0 to 3153600000000)",
        ),
        (
            {"aging_ms": 2592000001},
            "setting 'aging_ms' = '2592000001' is out of range (0 to 2592000000)",
        ),
        ({"rl_until": "inf"}, "setting 'rl_until' = 'inf' is not a whole number"),
    ],
)
def test_fetch_names_a_setting_the_worker_cannot_use(
    queue: Queue, settings: dict[str, Any], problem: str
) -> None:
    add(queue)
    queue.client.hset(queue.keys.meta, mapping=settings)
    assert fetch_reply(queue) == ([], problem)


def test_the_largest_settings_are_usable(queue: Queue) -> None:
    # Given every setting at its bound
    [job_id] = add(queue, spec(group="g"))
    queue.set_rate_limit(MAX_RATE_LIMIT_JOBS, MAX_SECONDS)
    queue.set_group_rate_limit(MAX_RATE_LIMIT_JOBS, MAX_SECONDS)
    queue.set_concurrency(MAX_CONCURRENCY)
    queue.set_group_concurrency(MAX_CONCURRENCY)
    queue.set_priority_aging(MAX_AGING_SECONDS)

    # Then fetch uses them
    assert fetch_reply(queue) == ([job_id], "")


def test_fetch_repeats_the_bounds_of_options() -> None:
    source = (Path(sandboxq.__file__).parent / "lua" / "fetch.lua").read_text()
    declared = dict(re.findall(r"local (MAX_[A-Z_]+) = (\d+)", source))
    assert declared == {
        "MAX_RATE_LIMIT_JOBS": str(MAX_RATE_LIMIT_JOBS),
        "MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "MAX_WINDOW_MS": str(ms(MAX_SECONDS)),
        "MAX_AGING_MS": str(ms(MAX_AGING_SECONDS)),
    }


@pytest.mark.parametrize("junk", JUNK, ids=junk_id)
def test_junk_in_the_queue_bookkeeping_fails_no_script(queue: Queue, junk: bytes) -> None:
    # Given junk in the counters and marks the scripts keep for a queue
    grouped, plain = add(queue, spec(group="g"), spec())
    client = queue.client
    for key in (queue.keys.seq, queue.keys.gcount, queue.keys.group_rr):
        client.set(key, junk)
    client.hset(queue.keys.group_active, "g", junk)
    client.hset(queue.keys.meta, mapping={"clock": junk, "turn": junk})
    if not junk[:1].isdigit():  # else it reads as a true mark: "requests up to N given up"
        client.hset(queue.keys.given_up, TOKEN, junk)
    client.zadd(queue.keys.delayed, {"ghost": float("inf")})

    # When jobs are leased (with a request number), settled, added and recovered
    rows, due, _limited, _has_limits, problem = queue.scripts.fetch(
        queue.keys, NOW, 10, TOKEN, LEASE, request=1
    )
    statuses = finish(queue, NOW + 1, outcome(grouped, "unstarted"), outcome(plain, "retry"))
    add(queue, spec(group="g"), spec(), now=NOW + 2)
    queue.scripts.recover_stalled(queue.keys, NOW + 3, max_stalls=1)

    # Then the jobs went through, and the wake-up time ignores the infinite score
    assert (len(rows) // 2, problem, statuses) == (2, b"", ["unstarted", "retrying"])
    assert due == -1


def test_an_id_counter_that_holds_no_integer_stops_add_with_a_clear_error(queue: Queue) -> None:
    queue.client.set(queue.keys.id_counter, b"abc")
    with pytest.raises(redis.ResponseError, match=r"job id counter .* holds no integer"):
        add(queue)
    assert queue.client.zcard(queue.keys.wait) == 0


def test_junk_in_a_flow_link_or_results_fails_no_script(queue: Queue) -> None:
    # Given a flow parent whose count of children pending is junk and whose
    # children's results key is a string, and a child whose link is junk
    flow = queue.add_flow({"name": "parent"}, [{"name": "child"}] * 3)
    parent = flow.job.id
    children = [child.job.id for child in flow.children]
    spoil(queue, parent, "pending", b"abc")
    queue.client.set(queue.keys.prefix + "deps:" + parent, b"x")
    spoil(queue, children[2], "parent_id", b"\xff")

    # When the children finish in one batch and the parent is fetched
    raw_fetch(queue, NOW)
    statuses = finish(queue, NOW + 1, *[outcome(c, "completed", 1) for c in children])
    leased = raw_fetch(queue, NOW + 2)

    # Then the children completed and the parent was let go; its children's
    # results are no JSON, so its worker fails it saying so
    assert statuses == ["completed"] * 3
    assert leased[parent][b"children"].startswith(b"corrupt")


@pytest.mark.parametrize("junk", [" 7 ", "0x10", "1e1", "+3", "2.0"])
def test_a_retention_count_not_written_as_sandboxq_writes_integers_bounds_nothing(
    queue: Queue, junk: str
) -> None:
    # Given three completed jobs, and a fourth whose keep_completed count is a
    # value Lua's tonumber would read as a small number (the worker's decoder
    # calls it corrupt)
    done = add(queue, spec(), spec(), spec())
    fetch_ids(queue, NOW)
    finish(queue, NOW, *(outcome(job_id, "completed", "1") for job_id in done))
    [last] = add(queue, spec())
    queue.client.hset(queue.keys.job(last), "kc_count", junk)

    # When it completes (fetched as it is: its record is corrupt to the worker)
    queue.scripts.fetch(queue.keys, NOW, 1, TOKEN, LEASE)
    assert finish(queue, NOW, outcome(last, "completed", "1")) == ["completed"]

    # Then no finished job is trimmed for it
    assert queue.client.zcard(queue.keys.completed) == 4
