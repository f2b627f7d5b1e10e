"""Bounds on every number the API stores, and backoff delays that are total.

A number beyond its bound is refused at the call (ValueError naming the
argument, the bound and the value) and nothing is written: stored, it would
stop every worker serving the queue (int64 arithmetic in the worker, doubles
in Lua). A backoff read back from Redis, whatever it holds, fails its job
cleanly instead of the worker.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxq import Backoff, Queue
from sandboxq.cli import parse_rate
from sandboxq.execution import FAILED, UNRECOVERABLE, Outcome, finish_entry
from sandboxq.options import (
    MAX_AGING_SECONDS,
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    MAX_RATE_LIMIT_JOBS,
    MAX_RETENTION_COUNT,
    MAX_SECONDS,
    MIN_BACKOFF_SECONDS,
)
from sandboxq.worker.parent import Worker


def stored_keys(q: Queue) -> set[bytes]:
    return set(q.client.keys(f"sq:{{{q.name}}}:*"))


def refused(q: Queue, call: Callable[[], Any], *named: str) -> None:
    """``call`` raises ValueError naming each of ``named``, and writes nothing."""
    before = stored_keys(q), q.client.hgetall(q.keys.meta)
    with pytest.raises(ValueError) as raised:
        call()
    for text in named:
        assert text in str(raised.value)
    assert (stored_keys(q), q.client.hgetall(q.keys.meta)) == before


# -- queue settings ---------------------------------------------------------------
@pytest.mark.parametrize("setter", ["set_rate_limit", "set_group_rate_limit"])
def test_a_rate_limit_takes_1_to_a_billion_jobs_in_1_ms_to_100_years(
    queue: Queue, setter: str
) -> None:
    set_limit = getattr(queue, setter)
    prefix = "rl" if setter == "set_rate_limit" else "grl"

    # The smallest and the largest limit are stored as given
    set_limit(1, 0.001)
    assert queue.client.hmget(queue.keys.meta, f"{prefix}_max", f"{prefix}_window_ms") == [
        b"1",
        b"1",
    ]
    set_limit(MAX_RATE_LIMIT_JOBS, MAX_SECONDS)
    assert queue.client.hmget(queue.keys.meta, f"{prefix}_max", f"{prefix}_window_ms") == [
        str(MAX_RATE_LIMIT_JOBS).encode(),
        str(int(MAX_SECONDS * 1000)).encode(),
    ]

    # One past either bound is refused, naming it, and changes nothing
    too_many = MAX_RATE_LIMIT_JOBS + 1
    refused(
        queue, lambda: set_limit(too_many, 1), "max_jobs", str(MAX_RATE_LIMIT_JOBS), str(too_many)
    )
    refused(queue, lambda: set_limit(10**30, 1), "max_jobs", str(10**30))
    refused(queue, lambda: set_limit(0, 1), "max_jobs", "0")
    refused(queue, lambda: set_limit(5, MAX_SECONDS + 1), "per_seconds", f"{MAX_SECONDS:.0f}")
    refused(queue, lambda: set_limit(5, 10**400), "per_seconds", f"{MAX_SECONDS:.0f}")
    refused(queue, lambda: set_limit(5, 0), "per_seconds")


@pytest.mark.parametrize("setter", ["set_concurrency", "set_group_concurrency"])
def test_a_concurrency_limit_takes_1_to_a_million(queue: Queue, setter: str) -> None:
    set_limit = getattr(queue, setter)
    field = "concurrency" if setter == "set_concurrency" else "gconcurrency"

    set_limit(1)
    assert queue.client.hget(queue.keys.meta, field) == b"1"
    set_limit(MAX_CONCURRENCY)
    assert queue.client.hget(queue.keys.meta, field) == str(MAX_CONCURRENCY).encode()

    too_many = MAX_CONCURRENCY + 1
    refused(queue, lambda: set_limit(too_many), "concurrency", str(MAX_CONCURRENCY), str(too_many))
    refused(queue, lambda: set_limit(0), "concurrency", "0")


def test_priority_aging_takes_1_ms_to_30_days_per_level(queue: Queue) -> None:
    queue.set_priority_aging(0.001)
    assert queue.client.hget(queue.keys.meta, "aging_ms") == b"1"
    queue.set_priority_aging(MAX_AGING_SECONDS)
    assert (
        queue.client.hget(queue.keys.meta, "aging_ms")
        == str(int(MAX_AGING_SECONDS * 1000)).encode()
    )

    too_long = MAX_AGING_SECONDS + 1
    refused(
        queue,
        lambda: queue.set_priority_aging(too_long),
        "seconds_per_level",
        f"{MAX_AGING_SECONDS:.0f}",
        str(too_long),
    )
    refused(queue, lambda: queue.set_priority_aging(0), "seconds_per_level")


def test_the_worker_rate_limit_has_the_same_bounds() -> None:
    handlers = {"x": lambda job: None}
    Worker(["q"], handlers, rate_limit=(MAX_RATE_LIMIT_JOBS, MAX_SECONDS))
    with pytest.raises(
        ValueError, match=f"max_jobs must be an int from 1 to {MAX_RATE_LIMIT_JOBS}"
    ):
        Worker(["q"], handlers, rate_limit=(MAX_RATE_LIMIT_JOBS + 1, 1.0))
    assert parse_rate(f"{MAX_RATE_LIMIT_JOBS}/s") == (MAX_RATE_LIMIT_JOBS, 1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="max_jobs"):
        parse_rate(f"{MAX_RATE_LIMIT_JOBS + 1}/s")
    with pytest.raises(argparse.ArgumentTypeError, match="per_seconds"):
        parse_rate("5/9999999999h")


# -- job options ------------------------------------------------------------------
@pytest.mark.parametrize("option", ["keep_completed", "keep_failed"])
def test_a_retention_count_takes_0_to_a_billion(queue: Queue, option: str) -> None:
    prefix = "kc" if option == "keep_completed" else "kf"
    smallest = queue.add("x", **{option: 0})
    largest = queue.add("x", **{option: {"count": MAX_RETENTION_COUNT, "age": MAX_SECONDS}})
    assert queue.client.hget(queue.keys.job(smallest.id), f"{prefix}_count") == b"0"
    assert (
        queue.client.hget(queue.keys.job(largest.id), f"{prefix}_count")
        == str(MAX_RETENTION_COUNT).encode()
    )

    too_many = MAX_RETENTION_COUNT + 1
    refused(queue, lambda: queue.add("x", **{option: too_many}), option, str(too_many))
    refused(queue, lambda: queue.add("x", **{option: -1}), option, "-1")
    refused(
        queue, lambda: queue.add("x", **{option: {"age": MAX_SECONDS + 1}}), f"{MAX_SECONDS:.0f}"
    )


def test_the_numbers_of_a_job_keep_their_bounds(queue: Queue) -> None:
    queue.add("x", attempts=MAX_ATTEMPTS, delay=MAX_SECONDS, timeout=MAX_SECONDS)
    refused(queue, lambda: queue.add("x", attempts=MAX_ATTEMPTS + 1), "attempts")
    refused(queue, lambda: queue.add("x", delay=10**400), "delay", f"{MAX_SECONDS:.0f}")
    refused(queue, lambda: queue.add("x", timeout=MAX_SECONDS * 2), "timeout")


# -- backoff ----------------------------------------------------------------------
@pytest.mark.parametrize("key", ["delay", "max"])
def test_a_backoff_delay_is_0_or_from_1_ms_to_100_years(queue: Queue, key: str) -> None:
    for accepted in (0, MIN_BACKOFF_SECONDS, MAX_SECONDS):
        Backoff.parse({"type": "exponential", key: accepted})
    queue.add("x", backoff={"type": "exponential", "delay": 0.001, "max": MAX_SECONDS})

    for too_short in (1e-300, 5e-324, 0.000999):
        spec = {"type": "exponential", key: too_short}
        refused(queue, lambda spec=spec: queue.add("x", backoff=spec), f"backoff {key}", "1 ms")
    for too_long in (MAX_SECONDS * 1.01, 10**400, math.inf, math.nan):
        spec = {"type": "exponential", key: too_long}
        refused(queue, lambda spec=spec: queue.add("x", backoff=spec), f"backoff {key}")


def test_a_backoff_jitter_that_is_no_number_is_a_value_error() -> None:
    for jitter in ("abc", 10**400, [1], math.nan, 1.5, -0.1):
        with pytest.raises(ValueError, match="jitter"):
            Backoff.parse({"delay": 1, "jitter": jitter})


#: Every backoff parse accepts.
accepted_delays = st.one_of(
    st.just(0.0),
    st.floats(min_value=MIN_BACKOFF_SECONDS, max_value=MAX_SECONDS),
    st.integers(min_value=1, max_value=int(MAX_SECONDS)),
)
backoffs = st.builds(
    lambda kind, delay, jitter, cap: Backoff.parse(
        {"type": kind, "delay": delay, "jitter": jitter, "max": cap}
    ),
    st.sampled_from(["fixed", "exponential"]),
    accepted_delays,
    st.floats(min_value=0.0, max_value=1.0),
    st.none() | accepted_delays,
)


@given(
    backoffs,
    st.one_of(
        st.integers(min_value=-5, max_value=MAX_ATTEMPTS + 5),
        st.integers(min_value=-(10**30), max_value=10**30),
    ),
    st.floats(min_value=0.0, max_value=1.0),
)
@settings(max_examples=500, deadline=None)
def test_delay_for_is_a_finite_delay_for_every_accepted_backoff(
    backoff: Backoff, failed_attempts: int, rand: float
) -> None:
    delay = backoff.delay_for(failed_attempts, rand)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= MAX_SECONDS
    if backoff.max_delay is not None:
        assert delay <= backoff.max_delay
    if backoff.kind == "exponential" and not backoff.jitter:
        assert backoff.delay_for(failed_attempts + 1, rand) >= delay  # never shrinks


@pytest.mark.parametrize("failed_attempts", [1, 2, 1000, 2000, 10**6, MAX_ATTEMPTS, 10**100])
def test_an_exponential_backoff_from_1_ms_reaches_its_cap_and_stays(failed_attempts: int) -> None:
    backoff = Backoff.exponential(MIN_BACKOFF_SECONDS)
    expected = min(MIN_BACKOFF_SECONDS * 2 ** min(failed_attempts - 1, 64), MAX_SECONDS)
    assert backoff.delay_for(failed_attempts, 0.0) == pytest.approx(expected)


def test_delay_for_takes_a_draw_outside_0_to_1_too() -> None:
    backoff = Backoff.exponential(1.0, jitter=1.0)
    for rand in (-1.0, 2.0, math.nan, math.inf):
        assert 0.0 <= backoff.delay_for(3, rand) <= 4.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
backoff_dicts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["fixed", "exponential"]) | json_values,
        "delay": json_values | accepted_delays | st.floats(),
        "jitter": json_values | st.floats(),
        "max": json_values | accepted_delays | st.floats(),
    },
)


@given(st.one_of(json_values, backoff_dicts))
@settings(max_examples=300, deadline=None)
def test_parse_refuses_any_other_value_with_a_type_or_value_error(spec: Any) -> None:
    try:
        backoff = Backoff.parse(spec)
    except (TypeError, ValueError):
        return
    assert 0.0 <= backoff.delay_for(10**9, 0.5) <= MAX_SECONDS


# -- a backoff read back from Redis ---------------------------------------------------
FAILED_RUN = Outcome(FAILED, "ValueError: boom", "Traceback ...")


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b"\xff\xfe",
        b"[" * 5000,
        b'{"type": "exponential", "delay": 1e-300}',
        b'{"type": "exponential", "delay": 1e300}',
        b'{"delay": 1e400}',
        b'{"delay": 123456789012345678901234567890}',
        b'{"delay": NaN}',
        b'{"delay": 1, "jitter": 1e999}',
        b'{"delay": 1, "jitter": "abc"}',
        b'{"type": ["exponential"]}',
        b'{"delay": {"x": 1}}',
        b"[]",
        b"true",
        b'"10"',
    ],
)
def test_a_stored_backoff_that_cannot_be_used_fails_its_job_saying_why(stored: bytes) -> None:
    entry = finish_entry("7", {"backoff": stored, "attempts_made": 1, "leases": "3"}, FAILED_RUN)
    assert entry[:2] == ["7", UNRECOVERABLE]
    assert "not retried: its stored backoff is invalid" in entry[2]
    assert entry[3:] == ["Traceback ...", 0, "3"]


@pytest.mark.parametrize("attempts_made", [None, "abc", b"1.5", 1.5, -5, 10**30, True])
def test_a_stored_attempt_count_of_any_kind_still_gives_a_retry_delay(attempts_made: Any) -> None:
    stored = orjson.dumps({"type": "exponential", "delay": 1.0, "max": 60.0})
    entry = finish_entry("7", {"backoff": stored, "attempts_made": attempts_made}, FAILED_RUN)
    assert entry[1] == FAILED
    assert 0 <= entry[4] <= 60_000


@given(st.binary(max_size=200) | json_values.map(lambda value: json.dumps(value).encode()))
@settings(max_examples=300, deadline=None)
def test_finish_entry_answers_for_any_stored_backoff(stored: bytes) -> None:
    entry = finish_entry("7", {"backoff": stored, "attempts_made": 3}, FAILED_RUN)
    assert entry[1] in (FAILED, UNRECOVERABLE)
    assert isinstance(entry[4], int) and 0 <= entry[4] <= MAX_SECONDS * 1000
