"""Enqueue throughput, end to end against a private redis-server: ``Queue.add``
one tiny job at a time, and ``Queue.add_bulk`` of 10,000 tiny jobs.

Each round gets a fresh, empty queue (the previous one is deleted in the
untimed setup), so rounds are comparable. The job specs are built outside the
timed region too. Enqueueing does not touch the native extension (orjson
serializes the payload, the rest is option validation, Job objects and the
Redis round trip), so these run once, not as native and pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from sandboxq import Queue

if TYPE_CHECKING:
    from conftest import QueueFactory

#: ``Queue.add`` calls per timed round (one round trip each).
ADDS_PER_ROUND = 100
#: Jobs per ``add_bulk`` call (ten script calls of 1,000).
BULK_JOBS = 10_000


def tiny_job(n: int) -> dict[str, Any]:
    return {"name": "tiny", "data": {"n": n}}


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
