"""Enqueue throughput, end to end against a private redis-server: ``Queue.add``
one tiny job at a time, and ``Queue.add_bulk`` of 10,000 tiny jobs, against
a bare ``EVALSHA`` of a script that does nothing (the floor under an add).

Each round gets a fresh, empty queue (the previous one is deleted in the
untimed setup), so rounds are comparable. The job specs are built outside the
timed region too. Enqueueing does not touch the native extension (orjson
serializes the payload, the rest is option validation, Job objects and the
Redis round trip), so these run once, not as native and pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import redis

from sandboxq import Queue

if TYPE_CHECKING:
    from conftest import QueueFactory

#: ``Queue.add`` calls per timed round (one round trip each).
ADDS_PER_ROUND = 100
#: Jobs per ``add_bulk`` call (ten script calls of 1,000).
BULK_JOBS = 10_000


def tiny_job(n: int) -> dict[str, Any]:
    return {"name": "tiny", "data": {"n": n}}


#: Median seconds per call (per job for add_bulk) of each test, for the
#: comparisons with a bare EVALSHA.
_PER_CALL: dict[str, float] = {}


def record_jobs_per_second(benchmark: Any, record_summary: Any, label: str, jobs: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["jobs_per_s"] = round(jobs / median, 1)
    record_summary(label, f"{jobs / median:,.0f} jobs/s (median round)")


@pytest.mark.benchmark(group="enqueue: add")
def test_add(benchmark: Any, queues: QueueFactory, record_summary: Any) -> None:
    specs = [tiny_job(n) for n in range(ADDS_PER_ROUND)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_one_by_one(queue: Queue) -> None:
        for spec in specs:
            queue.add(spec["name"], spec["data"])

    benchmark.pedantic(add_one_by_one, setup=setup, rounds=50, warmup_rounds=3)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == ADDS_PER_ROUND
    record_jobs_per_second(
        benchmark, record_summary, "enqueue: add (1 job per call)", ADDS_PER_ROUND
    )
    record_per_call(benchmark, record_summary, "add", ADDS_PER_ROUND)


@pytest.mark.benchmark(group="enqueue: add_bulk 10k")
def test_add_bulk(benchmark: Any, queues: QueueFactory, record_summary: Any) -> None:
    specs = [tiny_job(n) for n in range(BULK_JOBS)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_bulk(queue: Queue) -> None:
        queue.add_bulk(specs)

    benchmark.pedantic(add_bulk, setup=setup, rounds=15, warmup_rounds=2)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == BULK_JOBS
    record_jobs_per_second(benchmark, record_summary, "enqueue: add_bulk (10,000 jobs)", BULK_JOBS)
    record_per_call(benchmark, record_summary, "add_bulk", BULK_JOBS)


@pytest.mark.benchmark(group="enqueue: bare EVALSHA")
def test_evalsha(benchmark: Any, redis_client: redis.Redis, record_summary: Any) -> None:
    """The floor under ``Queue.add``: one round trip running a script that
    does nothing, on the same client and in the same rounds as ``test_add``."""
    sha = redis_client.script_load("return 1")

    def call_many() -> None:
        for _ in range(ADDS_PER_ROUND):
            redis_client.evalsha(sha, 0)

    benchmark.pedantic(call_many, rounds=50, warmup_rounds=3)
    assert redis_client.evalsha(sha, 0) == 1
    record_per_call(benchmark, record_summary, "evalsha", ADDS_PER_ROUND)


def record_per_call(benchmark: Any, record_summary: Any, name: str, per_round: int) -> None:
    """Keep the median time per call (or job) of ``name``; print goal 5 once
    the figures it compares are in."""
    if benchmark.stats is None:  # --benchmark-disable: nothing measured
        return
    _PER_CALL[name] = benchmark.stats.stats.median / per_round
    bare = _PER_CALL.get("evalsha")
    if bare is None:
        return
    if (add := _PER_CALL.get("add")) is not None:
        record_summary(
            "enqueue: single add / bare EVALSHA (time per call)",
            f"{add / bare:.2f}x: add {add * 1e6:.0f} us, EVALSHA of 'return 1' "
            f"{bare * 1e6:.0f} us (medians; goal <= 1.25x)",
        )
        record_summary("goal 5 single add / bare EVALSHA", f"{add / bare:.2f}x (goal <= 1.25x)")
    if (bulk := _PER_CALL.get("add_bulk")) is not None:
        record_summary(
            "goal 5 add_bulk per job",
            f"{bulk * 1e6:.1f} us = {bulk / bare:.2f} bare EVALSHA calls "
            "(goal: no slower than before; compare with a run of the old code)",
        )
