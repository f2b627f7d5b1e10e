"""Handlers for the worker benchmarks (``bench_worker.py``).

The benchmark starts a real worker on this module from the repository root::

    python -m sandboxq worker benchmarks.bench_jobs --procs 2 --log-level WARNING

It holds no tests: ``bench_*.py`` files are collected by ``conftest.py``, and
pytest finds no ``test_*`` function here.

The queue name comes from ``$SANDBOXQ_BENCH_QUEUE``, so every worker a
benchmark starts serves a fresh queue of its own. The benchmark process
imports this module too, for :func:`spin`, so the ``multiprocessing.Pool``
baseline runs exactly the code the worker's children run.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sandboxq import JobContext, fast, handler

QUEUE = os.environ.get("SANDBOXQ_BENCH_QUEUE", "bench-worker")

#: Loop iterations of :func:`spin` that take about 25 ms on the 2-core
#: development VM (CPython 3.11; measured once, about 37 to 43 ns per
#: iteration). It is a constant on purpose: the worker and the Pool baseline
#: must do the same work. ``bench_worker.py`` measures one call again in
#: each run and prints it, since the time varies with the machine and its
#: load.
SPIN_ITERATIONS = 650_000


def spin(iterations: int = SPIN_ITERATIONS) -> int:
    """Pure-Python CPU work: a fixed loop of integer arithmetic. It holds the
    GIL the whole time and allocates nothing that lasts."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) % 1_000_003
    return x


def timed_spin() -> tuple[int, float, float]:
    """:func:`spin`, returning ``(pid, start, end)`` on the system-wide
    monotonic clock, so the benchmark can see how long each process sat idle
    between two calls."""
    start = time.monotonic()
    spin()
    return os.getpid(), start, time.monotonic()


def spin_task(_index: int) -> tuple[int, float, float]:
    """:func:`timed_spin` with the one argument ``Pool.imap_unordered`` passes."""
    return timed_spin()


@handler(QUEUE)
def noop(job: JobContext) -> Any:
    """Does nothing: what is left is the worker's own cost per job."""
    return None


@handler(QUEUE)
def cpu(job: JobContext) -> Any:
    """About 25 ms of pure-Python work (see :data:`SPIN_ITERATIONS`); the
    result is :func:`timed_spin`'s ``(pid, start, end)``."""
    return timed_spin()


@handler(QUEUE)
def stamp(job: JobContext) -> Any:
    """Returns when the handler began (``time.time()``, microseconds), for
    latencies finer than the whole milliseconds of ``started_at``."""
    return time.time()


@handler(QUEUE)
def implementation(job: JobContext) -> Any:
    """Which hot path the worker loaded ("native" or "pure"): children are
    forked from the parent, so this is the parent's choice too."""
    return fast.IMPLEMENTATION


#: More queues whose jobs ``noop`` handles, comma-separated
#: (``bench_topologies.py``: one worker serving queues on several shards).
MORE_QUEUES = [q for q in os.environ.get("SANDBOXQ_BENCH_QUEUES", "").split(",") if q]
for _queue in MORE_QUEUES:
    handler(_queue, name="noop")(noop)


def _nothing() -> None:
    return None


@handler(QUEUE)
def steps(job: JobContext) -> Any:
    """``job.data`` durable steps that do nothing; returns how long each
    took in the child (seconds): recording it is the whole cost."""
    took = []
    for n in range(int(job.data)):
        started = time.perf_counter()
        job.step(f"s{n}", _nothing)
        took.append(time.perf_counter() - started)
    return took
