"""Redis's CPU per job and transition: the add, fetch and finish scripts
called directly (no worker), on a fresh queue of plain jobs (no options, no
groups, no limits), with the server's statistics read before and after each
phase.

A pass adds ``JOBS`` jobs, leases them all with the fetch script, then
completes them all with the finish script, as the worker would. It runs
three times (``PASSES``): one add per job with fetches and finishes of 2
(a worker that takes only as many jobs as it has free children) and of 16
(about what a prefetching ``--procs 2`` worker sends in a no-op drain), then
``add_bulk`` (1,000 per call) and batches of 50.

The figure per transition is INFO commandstats' time in EVALSHA over the jobs
(see ``RedisCpu`` in ``conftest.py``); the server's whole CPU time (INFO cpu,
which adds reading requests and writing replies) is printed beside the
total. Both are the server's own accounts, so the client's speed does not
enter them, but a busy machine still does. Nothing asserts on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from benchmarks.conftest import RedisCpu
from sandboxq import Queue, fast
from sandboxq.execution import COMPLETED, Outcome, finish_entry
from sandboxq.scripts import now_ms

#: Jobs per pass.
JOBS = 5_000
#: The worker's lease token and length; the lease never runs out here.
TOKEN = "bench-transitions"
LEASE_MS = 600_000
#: A no-op handler's result, as the worker sends it.
NOOP_RESULT = Outcome(COMPLETED, "null")

Phase = Callable[[Queue], Any]


def add_singly(queue: Queue) -> None:
    for _ in range(JOBS):
        queue.add("noop")


def add_in_bulk(queue: Queue) -> None:
    queue.add_bulk([{"name": "noop"}] * JOBS)


def lease_all(queue: Queue, batch: int) -> list[tuple[str, dict[str, Any]]]:
    """Fetch ``batch`` jobs per call, numbering the calls as the worker
    does, until none is left; returns the leased ``(id, fields)``."""
    leased: list[tuple[str, dict[str, Any]]] = []
    for request in range(1, JOBS + 2):
        rows, _next_check, _limited, _has_limits = queue.scripts.fetch(
            queue.keys, now_ms(), batch, TOKEN, LEASE_MS, request=request
        )
        if not rows:
            break
        leased += fast.decode_fetched(rows)
    return leased


def finish_all(queue: Queue, leased: list[tuple[str, dict[str, Any]]], batch: int) -> None:
    """Complete the leased jobs, ``batch`` per call of the finish script."""
    for start in range(0, len(leased), batch):
        chunk = leased[start : start + batch]
        entries = [finish_entry(job_id, fields, NOOP_RESULT) for job_id, fields in chunk]
        statuses = queue.scripts.finish(queue.keys, now_ms(), TOKEN, entries)
        assert statuses == [b"completed"] * len(entries), statuses


def measure(client: redis.Redis, queue: Queue, phase: Phase) -> tuple[Any, RedisCpu]:
    """Run ``phase`` on ``queue``: its result and what Redis spent on it."""
    before = RedisCpu.read(client)
    result = phase(queue)
    return result, RedisCpu.read(client).since(before)


def one_pass(client: redis.Redis, add: Phase, batch: int) -> dict[str, RedisCpu]:
    """Add, lease and complete ``JOBS`` plain jobs on a fresh queue; what
    Redis spent on each transition."""
    queue = Queue(f"bench-transitions-{batch}", connection=client)
    queue.obliterate(force=True)
    queue.scripts.load_all()  # no NOSCRIPT retry inside a measured phase
    spent: dict[str, RedisCpu] = {}
    _, spent["add"] = measure(client, queue, add)
    leased, spent["fetch"] = measure(client, queue, lambda q: lease_all(q, batch))
    assert len(leased) == JOBS
    _, spent["finish"] = measure(client, queue, lambda q: finish_all(q, leased, batch))
    counts = queue.counts()
    assert counts.pop("completed") == JOBS
    assert not any(counts.values()), counts
    queue.obliterate(force=True)
    return spent


def per_job(cpu: RedisCpu) -> float:
    """Microseconds of script time per job."""
    return cpu.script_usec / JOBS


def process_per_job(cpu: RedisCpu) -> float:
    """Microseconds of the server's CPU time per job."""
    return cpu.process_seconds * 1e6 / JOBS


def total(spent: dict[str, RedisCpu], of: Callable[[RedisCpu], float]) -> float:
    return sum(of(cpu) for cpu in spent.values())


#: The passes: (label, how jobs are added, jobs per fetch and finish call).
#: 2 per call is a worker that takes only as many jobs as it has free
#: children; 16 about what a prefetching worker sends in a no-op drain
#: (its "calls/job" in the drain's line); 50 with add_bulk, what batching
#: saves at most.
PASSES: tuple[tuple[str, Phase, int], ...] = (
    ("1 / 2 / 2", add_singly, 2),
    ("1 / 16 / 16", add_singly, 16),
    ("1,000 / 50 / 50", add_in_bulk, 50),
)
#: The pass goal 4 reads: single adds, and the batches the worker sends.
GOAL_PASS = "1 / 16 / 16"


@pytest.mark.benchmark(group="redis: CPU per transition")
def test_redis_cpu_per_transition(
    benchmark: Any, redis_client: redis.Redis, record_summary: Callable[[str, str], None]
) -> None:
    spent: dict[str, dict[str, RedisCpu]] = {}

    def run() -> None:
        for label, add, batch in PASSES:
            spent[label] = one_pass(redis_client, add, batch)

    benchmark.pedantic(run, rounds=1, iterations=1)
    for step in ("add", "fetch", "finish"):
        us = {label: per_job(by_step[step]) for label, by_step in spent.items()}
        benchmark.extra_info[f"{step}_us_per_job"] = {k: round(u, 2) for k, u in us.items()}
        record_summary(
            f"Redis CPU per job: {step}",
            ", ".join(f"{label} per call {u:.1f} us" for label, u in us.items())
            + f" (EVALSHA usec in INFO commandstats / {JOBS:,} plain jobs)",
        )
    record_totals(record_summary, spent)


def record_totals(
    record_summary: Callable[[str, str], None], spent: dict[str, dict[str, RedisCpu]]
) -> None:
    """Add + fetch + finish per job, in scripts and in all, and goal 4."""
    record_summary(
        "Redis CPU per job: add + fetch + finish",
        "; ".join(
            f"{label} per call {total(by_step, per_job):.1f} us in scripts, "
            f"{total(by_step, process_per_job):.1f} us in all (INFO cpu)"
            for label, by_step in spent.items()
        ),
    )
    record_summary(
        "goal 4 Redis CPU per plain job (add + fetch + finish)",
        f"{total(spent[GOAL_PASS], per_job):.1f} us, added singly, fetched and finished 16 "
        f"at a time ({total(spent['1 / 2 / 2'], per_job):.1f} us 2 at a time) (goal <= 25 us)",
    )
