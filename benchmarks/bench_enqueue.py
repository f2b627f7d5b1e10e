"""Enqueue throughput, end to end against a private redis-server: ``Queue.add``
one tiny job at a time, and ``Queue.add_bulk`` of 10,000 tiny jobs, with the
native hot path and with its pure-Python twin.

Each round gets a fresh, empty queue (the previous one is deleted in the
untimed setup), so rounds are comparable. The job specs are built outside the
timed region too. Only ``dump_json`` differs between the two implementations
on this path, so expect a ratio near 1: most of the time goes to option
validation, Job objects and the Redis round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from sandboxq import Queue

if TYPE_CHECKING:
    from conftest import Impl, QueueFactory

#: ``Queue.add`` calls per timed round (one round trip each).
ADDS_PER_ROUND = 100
#: Jobs per ``add_bulk`` call (ten script calls of 1,000).
BULK_JOBS = 10_000


def tiny_job(n: int) -> dict[str, Any]:
    return {"name": "tiny", "data": {"n": n}}


@pytest.mark.benchmark(group="enqueue: add")
def test_add(benchmark: Any, impl: Impl, queues: QueueFactory, record_rate: Any) -> None:
    specs = [tiny_job(n) for n in range(ADDS_PER_ROUND)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_one_by_one(queue: Queue) -> None:
        for spec in specs:
            queue.add(spec["name"], spec["data"])

    benchmark.pedantic(add_one_by_one, setup=setup, rounds=50, warmup_rounds=3)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == ADDS_PER_ROUND
    record_rate("add (1 job per call)", impl.name, ADDS_PER_ROUND, "jobs")


@pytest.mark.benchmark(group="enqueue: add_bulk 10k")
def test_add_bulk(benchmark: Any, impl: Impl, queues: QueueFactory, record_rate: Any) -> None:
    specs = [tiny_job(n) for n in range(BULK_JOBS)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_bulk(queue: Queue) -> None:
        queue.add_bulk(specs)

    benchmark.pedantic(add_bulk, setup=setup, rounds=15, warmup_rounds=2)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == BULK_JOBS
    record_rate("add_bulk (10,000 jobs)", impl.name, BULK_JOBS, "jobs")
